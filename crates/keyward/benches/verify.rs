//! Criterion benchmarks of the in-process verify path (placeholder, filled in next).

fn main() {}
