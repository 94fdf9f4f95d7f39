//! Ranked item lists from Python: a 2-D integer numpy array (read without a copy per
//! element) or any sequence of sequences of item ids (rows may differ in length). Id 0 marks
//! a generated sequence that names no item: it holds its rank and never hits, as in the
//! reference scripts (`peapod_metrics::NOT_AN_ITEM`).

use numpy::{Element, PyReadonlyArray2};
use peapod_metrics::NOT_AN_ITEM;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::errors::invalid;

/// One ranked list per row, best first.
pub(crate) fn ranked_lists(rankings: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u32>>> {
    if let Some(lists) = numpy_rows::<i64>(rankings)? {
        return Ok(lists);
    }
    if let Some(lists) = numpy_rows::<i32>(rankings)? {
        return Ok(lists);
    }
    if let Some(lists) = numpy_rows::<u32>(rankings)? {
        return Ok(lists);
    }
    if let Some(lists) = numpy_rows::<u64>(rankings)? {
        return Ok(lists);
    }
    let rows: Vec<Vec<i64>> = rankings.extract().map_err(|_| {
        PyTypeError::new_err(
            "rankings must be a 2-D integer numpy array or a sequence of sequences of item ids",
        )
    })?;
    rows.iter()
        .enumerate()
        .map(|(r, row)| {
            row.iter()
                .enumerate()
                .map(|(k, &id)| item_id(i128::from(id), r, k))
                .collect()
        })
        .collect()
}

fn numpy_rows<T: Element + Copy + Into<i128>>(
    rankings: &Bound<'_, PyAny>,
) -> PyResult<Option<Vec<Vec<u32>>>> {
    let Ok(array) = rankings.extract::<PyReadonlyArray2<'_, T>>() else {
        return Ok(None);
    };
    let view = array.as_array();
    let lists = view
        .outer_iter()
        .enumerate()
        .map(|(r, row)| {
            row.iter()
                .enumerate()
                .map(|(k, &id)| item_id(id.into(), r, k))
                .collect::<PyResult<Vec<u32>>>()
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(Some(lists))
}

fn item_id(id: i128, row: usize, rank: usize) -> PyResult<u32> {
    match u32::try_from(id) {
        Ok(0) => Ok(NOT_AN_ITEM),
        Ok(item) if item != NOT_AN_ITEM => Ok(item),
        _ => Err(invalid(format!(
            "rankings[{row}][{rank}] is {id}, not an item id (items are 1, 2, …; 0 marks a \
             generated sequence that is no item; give rows of different lengths as a list of \
             lists rather than padding)"
        ))),
    }
}

/// The lists as Python sees them: `NOT_AN_ITEM` as 0.
pub(crate) fn to_python(lists: Vec<Vec<u32>>) -> Vec<Vec<u32>> {
    lists
        .into_iter()
        .map(|l| {
            l.into_iter()
                .map(|i| if i == NOT_AN_ITEM { 0 } else { i })
                .collect()
        })
        .collect()
}
