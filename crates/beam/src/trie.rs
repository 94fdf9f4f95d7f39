use crate::BeamError;

/// Node index of the empty prefix (the state right after the decoder start token).
pub(crate) const ROOT: u32 = 0;

/// The allowed output sequences (e.g. the tokenisations of all real item ids, or of one user's
/// candidate list), stored as a prefix tree so the search can ask "which tokens may follow this
/// prefix?" in O(log fan-out) time per step and beam.
///
/// Every stored sequence ends with EOS, so a beam can only finish on a complete allowed
/// sequence. Children are stored sorted by token in flat arrays (CSR layout): the search walks
/// a node's children without touching the full vocabulary row.
#[derive(Debug, Clone)]
pub struct PrefixTrie {
    eos_token_id: u32,
    /// `child_start[n]..child_start[n + 1]` indexes the children of node `n`.
    child_start: Vec<u32>,
    child_token: Vec<u32>,
    child_node: Vec<u32>,
    num_sequences: usize,
    max_token: u32,
}

impl PrefixTrie {
    /// Builds the trie from allowed output sequences (generated tokens only, without the decoder
    /// start token). A sequence that does not end with `eos_token_id` gets it appended, so both
    /// raw tokenisations and tokenisations with `</s>` are accepted. Identical sequences are
    /// stored once.
    ///
    /// Errors: an empty sequence, or EOS anywhere but at the end.
    pub fn new<I, S>(sequences: I, eos_token_id: u32) -> Result<Self, BeamError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u32]>,
    {
        // Build with per-node sorted child lists, then flatten: construction happens once per
        // constraint set, lookups happen every step.
        let mut children: Vec<Vec<(u32, u32)>> = vec![Vec::new()];
        let mut num_sequences = 0;
        let mut max_token = eos_token_id;
        for (index, seq) in sequences.into_iter().enumerate() {
            let seq = seq.as_ref();
            let body = match seq.split_last() {
                None => {
                    return Err(BeamError::InvalidSequence {
                        index,
                        reason: "empty sequence",
                    })
                }
                Some((&last, body)) if last == eos_token_id => body,
                Some(_) => seq,
            };
            if body.is_empty() {
                return Err(BeamError::InvalidSequence {
                    index,
                    reason: "sequence is EOS alone",
                });
            }
            if body.contains(&eos_token_id) {
                return Err(BeamError::InvalidSequence {
                    index,
                    reason: "EOS before the end of the sequence",
                });
            }
            let mut node = ROOT as usize;
            let mut is_new = false;
            for &tok in body.iter().chain(std::iter::once(&eos_token_id)) {
                max_token = max_token.max(tok);
                let next_id = children.len() as u32;
                let list = &mut children[node];
                node = match list.binary_search_by_key(&tok, |&(t, _)| t) {
                    Ok(i) => list[i].1 as usize,
                    Err(i) => {
                        list.insert(i, (tok, next_id));
                        children.push(Vec::new());
                        is_new = true;
                        next_id as usize
                    }
                };
            }
            if is_new {
                num_sequences += 1;
            }
        }
        let mut child_start = Vec::with_capacity(children.len() + 1);
        let total: usize = children.iter().map(Vec::len).sum();
        let mut child_token = Vec::with_capacity(total);
        let mut child_node = Vec::with_capacity(total);
        child_start.push(0);
        for list in &children {
            for &(t, n) in list {
                child_token.push(t);
                child_node.push(n);
            }
            child_start.push(child_token.len() as u32);
        }
        Ok(Self {
            eos_token_id,
            child_start,
            child_token,
            child_node,
            num_sequences,
            max_token,
        })
    }

    /// Number of distinct allowed sequences.
    pub fn len(&self) -> usize {
        self.num_sequences
    }

    /// True when no sequence is allowed.
    pub fn is_empty(&self) -> bool {
        self.num_sequences == 0
    }

    /// The EOS token every sequence ends with.
    pub fn eos_token_id(&self) -> u32 {
        self.eos_token_id
    }

    /// Largest token id stored (EOS included).
    pub fn max_token(&self) -> u32 {
        self.max_token
    }

    /// The tokens allowed after `prefix` (generated tokens, without the decoder start token),
    /// sorted ascending; empty when `prefix` is not a prefix of any allowed sequence or is
    /// already complete.
    pub fn allowed(&self, prefix: &[u32]) -> &[u32] {
        let mut node = ROOT;
        for &tok in prefix {
            match self.child(node, tok) {
                Some(n) => node = n,
                None => return &[],
            }
        }
        self.children(node).0
    }

    /// True when `sequence` (with or without its final EOS) is one of the allowed sequences.
    pub fn contains(&self, sequence: &[u32]) -> bool {
        let body = match sequence.split_last() {
            Some((&last, body)) if last == self.eos_token_id => body,
            _ => sequence,
        };
        let mut node = ROOT;
        for &tok in body.iter().chain(std::iter::once(&self.eos_token_id)) {
            match self.child(node, tok) {
                Some(n) => node = n,
                None => return false,
            }
        }
        true
    }

    #[inline]
    pub(crate) fn children(&self, node: u32) -> (&[u32], &[u32]) {
        let (a, b) = (
            self.child_start[node as usize] as usize,
            self.child_start[node as usize + 1] as usize,
        );
        (&self.child_token[a..b], &self.child_node[a..b])
    }

    #[inline]
    pub(crate) fn child(&self, node: u32, token: u32) -> Option<u32> {
        let (tokens, nodes) = self.children(node);
        tokens.binary_search(&token).ok().map(|i| nodes[i])
    }
}
