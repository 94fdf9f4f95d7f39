//! peapod-beam: placeholder, filled by its issue.
