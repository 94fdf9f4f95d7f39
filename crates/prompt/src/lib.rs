//! peapod-prompt: placeholder, filled by its issue.
