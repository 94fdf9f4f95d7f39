//! PeaPOD composed from the peapod-* crates.
