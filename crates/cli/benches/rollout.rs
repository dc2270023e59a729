//! A rollout across 50 lab devices (release drivesecd, soft keystores):
//! the total time of `fleet rollout` (canary, doubling waves, 8 at once)
//! against the sum of single-device update times (the same steps, one
//! device at a time). Goal: at most 0.3x. Measured twice: with the default
//! health window (the trial image must run the drive loop 10 ticks) and
//! with a one-tick window, which leaves the CPU-bound part. Each is
//! measured in `DRIVESEC_BENCH_ROUNDS` (default 3) pairs of runs, each pair
//! a new release, and reported as medians with the spread of the per-pair
//! ratio. Prints one JSON object.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::{median, median_spread};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use drivesec_lab::up::LabOptions;

struct Down(PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = drivesec_lab::up::down(&self.0);
    }
}

/// One lab of `n` devices whose health check watches `window` ticks:
/// `rounds` pairs of (sum of single-device updates, rollout in waves),
/// seconds, each pair rolling out two new releases.
fn measure(n: usize, window: u32, rounds: usize) -> Vec<(f64, f64)> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let mut cfg = drivesec_state::config::DeviceConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.audit.time_quality = drivesec_audit::TimeQuality::Unsynchronized;
    cfg.firmware.health_window_ticks = window;
    let m = drivesec_lab::up::up(
        &LabOptions {
            daemon: Some(PathBuf::from(env!("CARGO_BIN_EXE_drivesecd"))),
            devices: n,
            device_config: Some(cfg),
            ..LabOptions::new(dir.clone())
        },
        &mut |_| {},
    )
    .unwrap();
    let _down = Down(dir.clone());
    let store = |name: &str| format!("sqlite:{}", tmp.path().join(name).display());
    let run = |image: &Path, store: &str, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_drivesec"));
        c.args(["--json", "fleet", "rollout", "--store", store, "--lab"])
            .arg(&dir)
            .arg("--release")
            .arg(image);
        c.args(extra);
        let t = Instant::now();
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        t.elapsed().as_secs_f64()
    };
    (0..rounds)
        .map(|r| {
            let minor = 1 + 2 * r;
            let release = |k: usize| {
                m.release(
                    tmp.path(),
                    &format!("1.{k}.0"),
                    1 + k as u64,
                    256 << 10,
                    true,
                )
                .unwrap()
            };
            let (one, two) = (release(minor), release(minor + 1));
            // Single-device updates: all devices in one wave, one at a time.
            let sequential = run(
                &one,
                &store(&format!("seq-{r}.db")),
                &["--parallel", "1", "--canary", &n.to_string()],
            );
            let waves = run(
                &two,
                &store(&format!("waves-{r}.db")),
                &["--parallel", "8", "--canary", "1"],
            );
            (sequential, waves)
        })
        .collect()
}

/// Medians over the pairs, and the spread of the per-pair ratio.
fn summary(pairs: &[(f64, f64)]) -> (f64, f64, f64, f64, f64) {
    let (ratio, lo, hi) = median_spread(pairs.iter().map(|(s, w)| w / s).collect());
    (
        median(pairs.iter().map(|p| p.0).collect()),
        median(pairs.iter().map(|p| p.1).collect()),
        ratio,
        lo,
        hi,
    )
}

fn main() {
    let n: usize = std::env::var("DRIVESEC_BENCH_DEVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let rounds: usize = std::env::var("DRIVESEC_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3);
    // The default health window (10 ticks, 100 ms), then the shortest (one
    // tick): the second shows the CPU-bound remainder on this machine.
    let (sequential, waves, ratio, lo, hi) = summary(&measure(n, 10, rounds));
    let (seq_1, waves_1, ratio_1, lo_1, hi_1) = summary(&measure(n, 1, rounds));
    println!(
        "{}",
        serde_json::json!({"bench": "rollout", "devices": n, "health_window_ticks": 10,
            "rounds": rounds,
            "single_sum_s": sequential, "single_mean_s": sequential / n as f64,
            "rollout_s": waves, "ratio": ratio, "ratio_min": lo, "ratio_max": hi,
            "window1_single_sum_s": seq_1, "window1_single_mean_s": seq_1 / n as f64,
            "window1_rollout_s": waves_1, "window1_ratio": ratio_1,
            "window1_ratio_min": lo_1, "window1_ratio_max": hi_1})
    );
}
