//! peapod-t5-rec: placeholder, filled by its issue.
