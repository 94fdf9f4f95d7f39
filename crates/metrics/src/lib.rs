//! peapod-metrics: placeholder, filled by its issue.
