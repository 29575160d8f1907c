//! Placeholder until the control-plane benchmarks land.
fn main() {}
