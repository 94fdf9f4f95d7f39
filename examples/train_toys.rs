//! Trains PeaPOD on the toys dataset with the paper's settings (SPEC §6), then optionally
//! evaluates the best checkpoint. `cargo run --release --example train_toys --features cuda -- --help`

mod common;

fn main() -> std::process::ExitCode {
    common::train_main("toys")
}
