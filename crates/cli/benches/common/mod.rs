//! What the whole-process benchmarks share: summaries over repeated runs
//! and the settings a run can be told to change.

#![allow(dead_code)]

/// The median of `v` (0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// (median, min, max) of per-round figures, for a result and its spread.
pub fn median_spread(v: Vec<f64>) -> (f64, f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(v), lo, hi)
}

/// `DRIVESEC_BENCH_NETWORK_THREADS`: drivesecd's `[runtime]
/// network_threads` for this run, when set (docs/benchmarks.md).
pub fn network_threads() -> Option<usize> {
    std::env::var("DRIVESEC_BENCH_NETWORK_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
}
