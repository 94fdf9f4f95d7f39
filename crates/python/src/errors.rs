//! Rust errors as Python exceptions, with the Rust error's message (file, line, what was
//! wrong): a missing file is a `FileNotFoundError`, a malformed one a `peapod.DataError`, a
//! request outside what the data or the protocol allows a `ValueError`.

use peapod::PeapodError as RustError;
use peapod_datasets::DatasetError;
use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

create_exception!(
    peapod,
    PeapodError,
    PyRuntimeError,
    "A failure inside PeaPOD's Rust core that is neither bad input nor bad data."
);
create_exception!(
    peapod,
    DataError,
    PyValueError,
    "A data or checkpoint file that is malformed or inconsistent with the rest of the data; \
     the message names the file (and line) and what was wrong."
);

/// The Python exception for any error of the Rust crates.
pub(crate) fn to_py(error: impl Into<RustError>) -> PyErr {
    let error = error.into();
    let message = error.to_string();
    let io_kind = match &error {
        RustError::Io { source, .. } | RustError::Dataset(DatasetError::Io { source, .. }) => {
            Some(source.kind())
        }
        _ => None,
    };
    match (io_kind, &error) {
        (Some(std::io::ErrorKind::NotFound), _) => PyFileNotFoundError::new_err(message),
        (Some(_), _) => PyOSError::new_err(message),
        (
            None,
            RustError::Dataset(
                DatasetError::Line { .. }
                | DatasetError::Json { .. }
                | DatasetError::Inconsistent { .. }
                | DatasetError::Tokenizer(_),
            )
            | RustError::Checkpoint { .. },
        ) => DataError::new_err(message),
        (
            None,
            RustError::Dataset(DatasetError::InvalidRequest(_))
            | RustError::Config(_)
            | RustError::Metrics(_),
        ) => PyValueError::new_err(message),
        _ => PeapodError::new_err(message),
    }
}

/// A `ValueError` with `message`.
pub(crate) fn invalid(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}
