use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
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
/// as numbers or digit strings). All three lists must be there (an empty list is fine); any
/// other key, and any record with an empty explanation, is an error naming it.
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

    /// These explanations with their items renumbered by `permutation`.
    pub fn reindexed(&self, permutation: &crate::ItemPermutation) -> Explanations {
        let map = |records: &[ExplanationRecord]| -> Vec<ExplanationRecord> {
            records
                .iter()
                .map(|r| ExplanationRecord {
                    item: permutation.new_id(r.item),
                    ..r.clone()
                })
                .collect()
        };
        Explanations {
            train: map(&self.train),
            val: map(&self.val),
            test: map(&self.test),
        }
    }

    pub fn split(&self, split: Split) -> &[ExplanationRecord] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.val,
            Split::Test => &self.test,
        }
    }
}

/// An id as the file wrote it: a positive integer (or its digits), or what it was instead,
/// kept so that the error can name the record.
enum RawId {
    Valid(u64),
    Invalid(String),
}

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawId, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = RawId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive integer id")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawId, E> {
                Ok(RawId::Valid(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawId, E> {
                Ok(u64::try_from(v).map_or_else(|_| RawId::Invalid(v.to_string()), RawId::Valid))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawId, E> {
                Ok(RawId::Invalid(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawId, E> {
                Ok(v.parse::<u64>()
                    .map_or_else(|_| RawId::Invalid(format!("{v:?}")), RawId::Valid))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawId, E> {
                Ok(RawId::Invalid(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawId, E> {
                Ok(RawId::Invalid("null".into()))
            }
        }
        d.deserialize_any(IdVisitor)
    }
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
    match raw {
        RawId::Valid(v) if v >= 1 && v <= u64::from(max) => Ok(v as u32),
        RawId::Valid(v) => Err(E::custom(format!(
            "explanation record {}[{}]: {what} {v} out of range 1..={max}",
            at.0, at.1
        ))),
        RawId::Invalid(v) => Err(E::custom(format!(
            "explanation record {}[{}]: {what} {v} is not a positive integer id",
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
        let mut seen = [false; 3];
        while let Some(key) = map.next_key::<String>()? {
            let (slot, list, split) = match key.as_str() {
                "train" => (0, &mut out.train, "train"),
                "val" => (1, &mut out.val, "val"),
                "test" => (2, &mut out.test, "test"),
                other => {
                    return Err(de::Error::custom(format!(
                        "unknown key {other:?}: an explanation file holds \"train\", \"val\" \
                         and \"test\" lists"
                    )))
                }
            };
            if seen[slot] {
                return Err(de::Error::custom(format!(
                    "the {split:?} list appears twice"
                )));
            }
            seen[slot] = true;
            *list = map.next_value_seed(ListSeed(self, split))?;
        }
        if let Some(missing) = ["train", "val", "test"]
            .iter()
            .zip(seen)
            .find_map(|(name, seen)| (!seen).then_some(name))
        {
            return Err(de::Error::custom(format!(
                "no {missing:?} list: an explanation file holds \"train\", \"val\" and \"test\" \
                 lists (an empty list is fine)"
            )));
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
        if raw.explanation.trim().is_empty() {
            return Err(de::Error::custom(format!(
                "explanation record {}[{}]: empty explanation",
                self.1 .0, self.1 .1
            )));
        }
        Ok(ExplanationRecord {
            user: check_id(raw.user, "user", self.0.users, &self.1)?,
            item: check_id(raw.item, "item", self.0.items, &self.1)?,
            explanation: raw.explanation,
            feature: raw.feature,
        })
    }
}
