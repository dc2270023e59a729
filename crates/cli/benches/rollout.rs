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

fn drivesec(args: &[&std::ffi::OsStr]) {
    let o = Command::new(env!("CARGO_BIN_EXE_drivesec"))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Packs and approves `version` for every device of the lab.
fn release(m: &lab::LabManifest, dir: &Path, version: &str, counter: u64) -> PathBuf {
    let fw = m.firmware.as_ref().unwrap();
    let plain = dir.join(format!("fw-{version}.bin"));
    std::fs::write(&plain, vec![7u8; 256 << 10]).unwrap();
    let packed = dir.join(format!("fw-{version}.packed"));
    let image = dir.join(format!("fw-{version}.img"));
    let counter = counter.to_string();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "firmware".as_ref(),
        "pack".as_ref(),
        "--input".as_ref(),
        plain.as_os_str(),
        "--out".as_ref(),
        packed.as_os_str(),
        "--hw-class".as_ref(),
        fw.hw_class.as_ref(),
        "--version".as_ref(),
        version.as_ref(),
        "--counter".as_ref(),
        counter.as_ref(),
        "--keystore".as_ref(),
        fw.vendor_keystore.as_os_str(),
        "--key".as_ref(),
        "release".as_ref(),
    ];
    for d in &m.devices {
        args.push("--recipient".as_ref());
        args.push(d.firmware_key.as_ref().unwrap().as_os_str());
    }
    drivesec(&args);
    drivesec(&[
        "firmware".as_ref(),
        "approve".as_ref(),
        "--image".as_ref(),
        packed.as_os_str(),
        "--out".as_ref(),
        image.as_os_str(),
        "--keystore".as_ref(),
        fw.oem_keystore.as_os_str(),
        "--key".as_ref(),
        "approval".as_ref(),
    ]);
    image
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
    let one = release(&m, tmp.path(), "1.1.0", 2);
    let two = release(&m, tmp.path(), "1.2.0", 3);
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
