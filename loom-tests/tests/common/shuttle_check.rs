//! The shuttle harness shared by shuttle_queue.rs and shuttle_async.rs.

use std::time::Instant;

/// Iterations per scheduler per model: `SHUTTLE_ITERATIONS`, default 5000.
fn iterations() -> usize {
    std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000)
}

/// Runs `f` under shuttle's random scheduler and under PCT (depth 3), printing
/// the iteration counts and time taken.
pub fn check(name: &str, f: impl Fn() + Send + Sync + 'static) {
    let n = iterations();
    let f = std::sync::Arc::new(f);
    let start = Instant::now();
    let g = f.clone();
    shuttle::check_random(move || g(), n);
    let random = start.elapsed();
    let start = Instant::now();
    shuttle::check_pct(move || f(), n, 3);
    println!(
        "shuttle model {name}: random {n} iterations {random:.2?}, pct(depth 3) {n} iterations {:.2?}",
        start.elapsed()
    );
}
