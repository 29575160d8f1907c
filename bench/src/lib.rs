//! Shared helpers for hyphae's benchmarks. The benchmarks themselves are in `benches/`.
