//! peapod-pmf: placeholder, filled by its issue.
