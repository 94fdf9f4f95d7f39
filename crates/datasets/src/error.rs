use std::path::PathBuf;

/// Everything that can go wrong while reading PeaPOD data or building inputs from it.
///
/// Errors about a file name the file and, where the input is line oriented or JSON, the line,
/// so that a bad dataset can be fixed without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line-oriented file (sequences, negatives) holds something that is not valid data.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        message: String,
    },
    /// A JSON file is malformed or holds a value outside what the dataset allows.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Json {
        path: PathBuf,
        /// 1-based line number (0 when serde_json could not tell).
        line: usize,
        column: usize,
        message: String,
    },
    /// A file is well formed but inconsistent with the rest of the dataset.
    #[error("{}: {message}", path.display())]
    Inconsistent { path: PathBuf, message: String },
    /// The tokenizer could not be loaded or failed on a string.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A caller asked for something the data cannot give (an unknown template, an empty batch…).
    #[error("{0}")]
    InvalidRequest(String),
}

impl DatasetError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DatasetError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn line(path: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        DatasetError::Line {
            path: path.into(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, err: &serde_json::Error) -> Self {
        // serde_json appends " at line L column C" to its message; we print the position as a
        // file:line:column prefix instead, so strip it to avoid saying it twice.
        let text = err.to_string();
        let message = match text.rfind(" at line ") {
            Some(pos) if err.line() > 0 => text[..pos].to_string(),
            _ => text,
        };
        DatasetError::Json {
            path: path.into(),
            line: err.line(),
            column: err.column(),
            message,
        }
    }

    pub(crate) fn inconsistent(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DatasetError::Inconsistent {
            path: path.into(),
            message: message.into(),
        }
    }
}
