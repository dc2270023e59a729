//! A rollout across 50 lab devices (release drivesecd, soft keystores):
//! the total time of `fleet rollout` (canary, doubling waves, 8 at once)
//! against the sum of single-device update times (the same steps, one
//! device at a time). Goal: at most 0.3x. Measured twice: with the default
//! health window (the trial image must run the drive loop 10 ticks) and
//! with a one-tick window, which leaves the CPU-bound part. Prints one
//! JSON object.

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use drivesec_oem::lab::{self, LabOptions};

struct Down(PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab::down(&self.0);
    }
}

/// One lab of `n` devices whose health check watches `window` ticks:
/// (sum of single-device updates, rollout in waves), seconds.
fn measure(n: usize, window: u32) -> (f64, f64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let mut cfg = drivesec_device::config::DeviceConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.audit.time_quality = drivesec_audit::TimeQuality::Unsynchronized;
    cfg.firmware.health_window_ticks = window;
    let m = lab::up(
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
    let one = m.release(tmp.path(), "1.1.0", 2, 256 << 10, true).unwrap();
    let two = m.release(tmp.path(), "1.2.0", 3, 256 << 10, true).unwrap();
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
    // Single-device updates: all devices in one wave, one at a time.
    let sequential = run(
        &one,
        &store("a.db"),
        &["--parallel", "1", "--canary", &n.to_string()],
    );
    let waves = run(&two, &store("b.db"), &["--parallel", "8", "--canary", "1"]);
    (sequential, waves)
}

fn main() {
    let n: usize = std::env::var("DRIVESEC_BENCH_DEVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    // The default health window (10 ticks, 100 ms), then the shortest (one
    // tick): the second shows the CPU-bound remainder on this machine.
    let (sequential, waves) = measure(n, 10);
    let (seq_1, waves_1) = measure(n, 1);
    println!(
        "{}",
        serde_json::json!({"bench": "rollout", "devices": n, "health_window_ticks": 10,
            "single_sum_s": sequential, "single_mean_s": sequential / n as f64,
            "rollout_s": waves, "ratio": waves / sequential,
            "window1_single_sum_s": seq_1, "window1_single_mean_s": seq_1 / n as f64,
            "window1_rollout_s": waves_1, "window1_ratio": waves_1 / seq_1})
    );
}
