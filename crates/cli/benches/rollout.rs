//! A rollout across 50 lab devices (release drivesecd, soft keystores):
//! the total time of `fleet rollout` (canary, doubling waves, 8 at once)
//! against the sum of single-device update times (the same steps, one
//! device at a time). Goal: at most 0.3x. Prints one JSON object.

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

fn main() {
    let n: usize = std::env::var("DRIVESEC_BENCH_DEVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let m = lab::up(
        &LabOptions {
            daemon: Some(PathBuf::from(env!("CARGO_BIN_EXE_drivesecd"))),
            devices: n,
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
    // Single-device updates: one device per wave, one at a time (canary 1,
    // parallel 1 still doubles waves, so run them as n one-device waves by
    // timing the sequential rollout).
    let sequential = run(
        &one,
        &store("a.db"),
        &["--parallel", "1", "--canary", &n.to_string()],
    );
    let waves = run(&two, &store("b.db"), &["--parallel", "8", "--canary", "1"]);
    println!(
        "{}",
        serde_json::json!({"bench": "rollout", "devices": n, "single_sum_s": sequential,
            "single_mean_s": sequential / n as f64, "rollout_s": waves, "ratio": waves / sequential})
    );
}
