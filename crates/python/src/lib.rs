//! The Python module `peapod` (its native part, `peapod._native`): P5's exact protocol — the
//! datasets, their splits, test negatives and indexings — its ranking and text metrics, and
//! the evaluation of any model's ranked lists beside the popularity, ID-order, MF and SASRec
//! baselines, and trained PeaPOD models that recommend. Every function calls the Rust crates
//! the Rust examples use; nothing is ported.
//!
//! Built by maturin (`crates/python/pyproject.toml`); `crates/python/test.sh` builds it in a
//! throw-away virtual environment and runs its pytest suite. Python's side of the API, with
//! types, is `python/peapod/_native.pyi`.

mod datasets;
mod errors;
mod evaluate;
mod metrics;
mod rankings;
mod recommender;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("PeapodError", py.get_type::<errors::PeapodError>())?;
    m.add("DataError", py.get_type::<errors::DataError>())?;
    m.add_class::<datasets::Dataset>()?;
    m.add_class::<recommender::Recommender>()?;
    m.add_function(wrap_pyfunction!(evaluate::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::hit_ratio_at, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::ndcg_at, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::rank_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::bleu, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::rouge, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::text_report, m)?)?;
    Ok(())
}
