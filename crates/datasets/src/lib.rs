//! peapod-datasets: placeholder, filled by its issue.
