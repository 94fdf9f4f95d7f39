//! Reading the id files every dataset format shares.

use std::path::Path;

use crate::DatasetError;

pub(crate) fn read_to_string(path: &Path) -> Result<String, DatasetError> {
    std::fs::read_to_string(path).map_err(|e| DatasetError::io(path, e))
}

/// Parses a positive integer id, naming what it was meant to be when it is not one.
pub(crate) fn parse_id(token: &str, what: &str) -> Result<u32, String> {
    match token.parse::<u32>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(format!("{what} {token:?} is not a positive integer id")),
    }
}

/// Lines of `user item item …`; returns `(user, items, line number)`.
pub(crate) fn parse_id_lines(
    path: &Path,
    text: &str,
) -> Result<Vec<(u32, Vec<u32>, usize)>, DatasetError> {
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let line_no = idx + 1;
        let mut tokens = line.split_whitespace();
        let user = match tokens.next() {
            Some(tok) => parse_id(tok, "user").map_err(|m| DatasetError::line(path, line_no, m))?,
            None => return Err(DatasetError::line(path, line_no, "empty line")),
        };
        let items = tokens
            .enumerate()
            .map(|(pos, tok)| parse_id(tok, &format!("item (position {})", pos + 1)))
            .collect::<Result<Vec<u32>, String>>()
            .map_err(|m| DatasetError::line(path, line_no, m))?;
        out.push((user, items, line_no));
    }
    Ok(out)
}
