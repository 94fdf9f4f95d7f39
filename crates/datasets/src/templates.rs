use std::path::Path;

use serde::Deserialize;

use crate::files::read_to_string;
use crate::{DatasetError, Task};

/// The discrete prompt templates of the P5 protocol (`templates.json`), per task.
///
/// Each template has two `{}` slots: the user id, then the item list joined by `" item_"`. The
/// last template of each task is the plain one (`user_{} item_{}`) used for validation and test.
#[derive(Debug, Clone)]
pub struct Templates {
    /// Indexed by [`Task::id`]; each template pre-split around its two slots.
    by_task: [Vec<[String; 3]>; 3],
}

#[derive(Deserialize)]
struct RawTemplates {
    sequential: Vec<String>,
    topn: Vec<String>,
    explanation: Vec<String>,
}

impl Templates {
    /// Loads `templates.json` (`{"sequential": [...], "topn": [...], "explanation": [...]}`).
    pub fn load(path: impl AsRef<Path>) -> Result<Templates, DatasetError> {
        let path = path.as_ref();
        let text = read_to_string(path)?;
        let raw: RawTemplates =
            serde_json::from_str(&text).map_err(|e| DatasetError::json(path, &e))?;
        let split = |task: &str, list: Vec<String>| -> Result<Vec<[String; 3]>, DatasetError> {
            if list.is_empty() {
                return Err(DatasetError::inconsistent(
                    path,
                    format!("no {task} templates"),
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, t)| {
                    let parts: Vec<&str> = t.split("{}").collect();
                    match parts.as_slice() {
                        [a, b, c] => Ok([a.to_string(), b.to_string(), c.to_string()]),
                        _ => Err(DatasetError::inconsistent(
                            path,
                            format!(
                                "{task} template {i} has {} slots, expected 2 (user, items): {t:?}",
                                parts.len() - 1
                            ),
                        )),
                    }
                })
                .collect()
        };
        Ok(Templates {
            by_task: [
                split("explanation", raw.explanation)?,
                split("sequential", raw.sequential)?,
                split("topn", raw.topn)?,
            ],
        })
    }

    /// Number of templates of a task.
    pub fn count(&self, task: Task) -> usize {
        self.by_task[task.id() as usize].len()
    }

    /// Index of the plain template used for validation and test (the last one).
    pub fn eval_index(&self, task: Task) -> usize {
        self.count(task) - 1
    }

    /// Fills template `index` of `task` with the user id and the items joined by `" item_"`.
    ///
    /// ```
    /// # use peapod_datasets::{Task, Templates};
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/templates.json");
    /// let templates = Templates::load(path).unwrap();
    /// let plain = templates.eval_index(Task::Sequential);
    /// let text = templates.render(Task::Sequential, plain, 15, &[3, 17, 9]).unwrap();
    /// assert_eq!(text, "user_15 item_3 item_17 item_9");
    /// ```
    pub fn render(
        &self,
        task: Task,
        index: usize,
        user: u32,
        items: &[u32],
    ) -> Result<String, DatasetError> {
        let parts = self.by_task[task.id() as usize].get(index).ok_or_else(|| {
            DatasetError::InvalidRequest(format!(
                "{} has {} templates, no index {index}",
                task.name(),
                self.count(task)
            ))
        })?;
        let mut out = String::with_capacity(
            parts[0].len() + parts[1].len() + parts[2].len() + 8 * items.len() + 8,
        );
        out.push_str(&parts[0]);
        out.push_str(&user.to_string());
        out.push_str(&parts[1]);
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(" item_");
            }
            out.push_str(&item.to_string());
        }
        out.push_str(&parts[2]);
        Ok(out)
    }
}
