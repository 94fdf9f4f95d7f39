//! Trains PeaPOD on the beauty dataset with the paper's settings (SPEC §6), then optionally
//! evaluates the best checkpoint. `cargo run --release --example train_beauty --features cuda -- --help`

mod common;

fn main() -> std::process::ExitCode {
    common::train_main("beauty")
}
