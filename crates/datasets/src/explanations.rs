use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::files::read_to_string;
use crate::{Dataset, DatasetError, Split};

/// One review sentence extracted by Sentires: the explanation `user` gave for `item`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplanationRecord {
    pub user: u32,
    pub item: u32,
    pub explanation: String,
    pub feature: String,
}

/// The explanation task's data in the P5/POD layout: `{"train": [...], "val": [...],
/// "test": [...]}` of `{user, item, explanation, feature}` records (ids as in `datamaps.json`,
/// as numbers or digit strings). A missing list is read as empty.
#[derive(Debug, Clone, Default)]
pub struct Explanations {
    pub train: Vec<ExplanationRecord>,
    pub val: Vec<ExplanationRecord>,
    pub test: Vec<ExplanationRecord>,
}

impl Explanations {
    /// Loads an explanation file, checking every record's user and item against `dataset`.
    /// A bad record is reported with its list and index, and the line where it ends (serde_json
    /// reports the position just after the record, sometimes the start of the next line).
    ///
    /// ```
    /// # use peapod_datasets::{Dataset, Explanations};
    /// # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/toys");
    /// let toys = Dataset::load(dir).unwrap();
    /// let exp = Explanations::load(format!("{dir}/explanation_excerpt.json"), &toys).unwrap();
    /// assert_eq!((exp.train.len(), exp.val.len(), exp.test.len()), (22, 0, 15));
    /// ```
    pub fn load(path: impl AsRef<Path>, dataset: &Dataset) -> Result<Explanations, DatasetError> {
        let path = path.as_ref();
        let text = read_to_string(path)?;
        Explanations::parse(&text, dataset).map_err(|e| DatasetError::json(path, &e))
    }

    fn parse(text: &str, dataset: &Dataset) -> Result<Explanations, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let seed = FileSeed {
            users: dataset.num_users() as u32,
            items: dataset.num_items() as u32,
        };
        let out = seed.deserialize(&mut de)?;
        de.end()?;
        Ok(out)
    }

    pub fn split(&self, split: Split) -> &[ExplanationRecord] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.val,
            Split::Test => &self.test,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawId {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
struct RawRecord {
    user: RawId,
    item: RawId,
    explanation: String,
    #[serde(default)]
    feature: String,
}

#[derive(Clone, Copy)]
struct FileSeed {
    users: u32,
    items: u32,
}

fn check_id<E: de::Error>(raw: RawId, what: &str, max: u32, at: &Position) -> Result<u32, E> {
    let value = match raw {
        RawId::Number(n) => Some(n),
        RawId::Text(s) => s.parse::<u64>().ok(),
    };
    match value {
        Some(v) if v >= 1 && v <= u64::from(max) => Ok(v as u32),
        Some(v) => Err(E::custom(format!(
            "explanation record {}[{}]: {what} {v} out of range 1..={max}",
            at.0, at.1
        ))),
        None => Err(E::custom(format!(
            "explanation record {}[{}]: {what} is not a positive integer id",
            at.0, at.1
        ))),
    }
}

// Validating inside deserialisation (rather than after) lets serde_json attach the line and
// column where the bad record ends to the error.
impl<'de> DeserializeSeed<'de> for FileSeed {
    type Value = Explanations;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Explanations, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FileSeed {
    type Value = Explanations;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with \"train\", \"val\" and \"test\" lists")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Explanations, A::Error> {
        let mut out = Explanations::default();
        while let Some(key) = map.next_key::<String>()? {
            let list = match key.as_str() {
                "train" => &mut out.train,
                "val" => &mut out.val,
                "test" => &mut out.test,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let split = match key.as_str() {
                "train" => "train",
                "val" => "val",
                _ => "test",
            };
            *list = map.next_value_seed(ListSeed(self, split))?;
        }
        Ok(out)
    }
}

struct ListSeed(FileSeed, &'static str);

/// Which list and index a record sits at, for error messages.
struct Position(&'static str, usize);

impl<'de> DeserializeSeed<'de> for ListSeed {
    type Value = Vec<ExplanationRecord>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed {
    type Value = Vec<ExplanationRecord>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of {user, item, explanation, feature} records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(record) =
            seq.next_element_seed(RecordSeed(self.0, Position(self.1, out.len())))?
        {
            out.push(record);
        }
        Ok(out)
    }
}

struct RecordSeed(FileSeed, Position);

impl<'de> DeserializeSeed<'de> for RecordSeed {
    type Value = ExplanationRecord;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let raw = RawRecord::deserialize(d)?;
        Ok(ExplanationRecord {
            user: check_id(raw.user, "user", self.0.users, &self.1)?,
            item: check_id(raw.item, "item", self.0.items, &self.1)?,
            explanation: raw.explanation,
            feature: raw.feature,
        })
    }
}
