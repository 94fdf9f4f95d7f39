use std::path::Path;

use crate::DatasetError;

/// T5's padding id (also the decoder start id).
pub const PAD_ID: u32 = 0;
/// T5's end-of-sequence id.
pub const EOS_ID: u32 = 1;
/// Size of T5's SentencePiece vocabulary (with the extra ids).
pub const VOCAB_SIZE: usize = 32_128;
/// Explanation targets are cut to this many tokens before the eos (SPEC §2).
pub const MAX_EXPLANATION_TOKENS: usize = 20;
/// Rows of the whole-word embedding table (SPEC §3): whole-word ids lie in `0..512`.
pub const WHOLE_WORD_VOCAB: usize = 512;

/// An encoded model input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedInput {
    /// Token ids, ending with eos.
    pub ids: Vec<u32>,
    /// Per token: k for the pieces of the k-th `user_N` / `item_N` mention, else 0.
    pub whole_word_ids: Vec<u32>,
}

/// The T5 tokenizer of the protocol (`tokenizers` on `t5-tokenizer.json`) with PeaPOD's
/// whole-word ids and item-id targets.
///
/// ```
/// use peapod_datasets::RecTokenizer;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/tokenizer/t5-tokenizer.json");
/// let tok = RecTokenizer::from_file(path).unwrap();
/// let enc = tok.encode_input("user_15 item_3 item_17").unwrap();
/// // ▁user _ 15 ▁item _ 3 ▁item _ 17 </s>
/// assert_eq!(enc.whole_word_ids, vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 0]);
/// let target = tok.item_target_ids(1234).unwrap(); // ▁12 34 </s>
/// assert_eq!(tok.decode_item(&target), Some(1234));
/// ```
#[derive(Clone)]
pub struct RecTokenizer {
    inner: tokenizers::Tokenizer,
}

impl RecTokenizer {
    pub fn from_file(path: impl AsRef<Path>) -> Result<RecTokenizer, DatasetError> {
        let path = path.as_ref();
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| DatasetError::Tokenizer(format!("{}: {e}", path.display())))?;
        // Padding and truncation are ours to decide per batch; never let the file impose them.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| DatasetError::Tokenizer(e.to_string()))?;
        Ok(RecTokenizer { inner })
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids with eos, without whole-word ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DatasetError> {
        Ok(self.encoding(text)?.get_ids().to_vec())
    }

    /// Token ids (with eos) and whole-word ids of a prompt.
    pub fn encode_input(&self, text: &str) -> Result<EncodedInput, DatasetError> {
        let enc = self.encoding(text)?;
        let whole_word_ids = whole_word_ids(text, enc.get_offsets(), enc.get_special_tokens_mask());
        if let Some(&max) = whole_word_ids.iter().max() {
            if max as usize >= WHOLE_WORD_VOCAB {
                return Err(DatasetError::InvalidRequest(format!(
                    "prompt has {max} id mentions; the whole-word table holds {}",
                    WHOLE_WORD_VOCAB - 1
                )));
            }
        }
        Ok(EncodedInput {
            ids: enc.get_ids().to_vec(),
            whole_word_ids,
        })
    }

    /// Target ids as POD's data code builds them (`utils.py`, which PeaPOD's follows): the
    /// text's tokens, then eos, cut to `max_tokens` — a long explanation keeps `max_tokens`
    /// pieces and no eos. BLEU/ROUGE references are decoded from these targets.
    pub fn encode_target(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>, DatasetError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| DatasetError::Tokenizer(e.to_string()))?;
        let mut out = enc.get_ids().to_vec();
        out.push(EOS_ID);
        out.truncate(max_tokens);
        Ok(out)
    }

    /// Target ids of an item: its id as digits, then eos.
    pub fn item_target_ids(&self, item: u32) -> Result<Vec<u32>, DatasetError> {
        self.encode_target(&item.to_string(), usize::MAX)
    }

    /// Text of ids, special tokens (pad, eos) skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DatasetError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| DatasetError::Tokenizer(e.to_string()))
    }

    /// The item a generated sequence names, if it decodes to a positive integer. Whether the
    /// item exists is the caller's check ([`crate::Dataset::contains_item`]).
    pub fn decode_item(&self, ids: &[u32]) -> Option<u32> {
        parse_item(&self.decode(ids).ok()?)
    }

    fn encoding(&self, text: &str) -> Result<tokenizers::Encoding, DatasetError> {
        self.inner
            .encode(text, true)
            .map_err(|e| DatasetError::Tokenizer(e.to_string()))
    }
}

/// An item id written as digits (`"1234"`), surrounding whitespace allowed; None otherwise.
pub fn parse_item(text: &str) -> Option<u32> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<u32>().ok().filter(|&i| i > 0)
}

/// Byte spans of the `user_N` / `item_N` mentions of a text, in order.
pub fn id_mentions(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let rest = &bytes[i..];
        if at_word_start && (rest.starts_with(b"user_") || rest.starts_with(b"item_")) {
            let digits = rest[5..].iter().take_while(|b| b.is_ascii_digit()).count();
            if digits > 0 {
                out.push((i, i + 5 + digits));
                i += 5 + digits;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// Whole-word ids (SPEC §3): a piece overlapping the k-th id mention gets k, others 0.
///
/// Going by character spans rather than by piece shapes keeps a piece that glues the last
/// digits to punctuation (`user_12.` → `▁user _ 12.`) inside its mention.
fn whole_word_ids(text: &str, offsets: &[(usize, usize)], special: &[u32]) -> Vec<u32> {
    let mentions = id_mentions(text);
    let mut out = vec![0u32; offsets.len()];
    let mut m = 0;
    for (pos, &(start, end)) in offsets.iter().enumerate() {
        if special.get(pos) == Some(&1) || start >= end {
            continue;
        }
        while m < mentions.len() && mentions[m].1 <= start {
            m += 1;
        }
        if m < mentions.len() && mentions[m].0 < end {
            out[pos] = m as u32 + 1;
        }
    }
    out
}
