//! Validation time: each of 8 lab devices validated alone, one after the
//! other, against all 8 validated concurrently (`validate_all` with 8 at
//! once), with the release drivesecd. Goal: concurrent wall time at most
//! 0.4x the sum of the single runs. Prints one JSON object.

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use drivesec_lab::up::LabOptions;

struct Down(PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = drivesec_lab::up::down(&self.0);
    }
}

/// CPU seconds the whole machine spent busy so far (/proc/stat, all
/// processes: the devices and this tool).
fn busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    (cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7]) / 100.0
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let m = drivesec_lab::up::up(
        &LabOptions {
            daemon: Some(PathBuf::from(env!("CARGO_BIN_EXE_drivesecd"))),
            devices: 8,
            ..LabOptions::new(dir.clone())
        },
        &mut |_| {},
    )
    .unwrap();
    let _down = Down(dir.clone());
    // Eight drives, one zone.
    let mut plan = String::from("[system]\nname = \"bench\"\n");
    let mut members = vec![];
    for i in 1..=8 {
        plan += &format!(
            "[[assets]]\nid = \"d{i}\"\nkind = \"drive\"\ncomponent = \"drivesecd\"\ndevice = \"drive-{i:03}\"\n"
        );
        members.push(format!("\"d{i}\""));
    }
    plan += &format!(
        "[[zones]]\nid = \"line\"\nmembers = [{}]\n",
        members.join(", ")
    );
    let l = drivesec_iec62443::model::parse(std::path::Path::new("bench.toml"), &plan).unwrap();
    let model = &l.model;
    let inv = m
        .inventory(&dir, &|dev: &str| model.asset_of_device(dev))
        .unwrap();
    let (ctx, targets) = drivesec_ops::validate::prepare(model, &inv).unwrap();
    assert_eq!(targets.len(), 8);
    // Warm-up.
    let _ = drivesec_ops::validate::validate_all(&ctx, &targets[..1], 1);
    let busy0 = busy();
    let mut singles = vec![];
    for t in &targets {
        let t0 = Instant::now();
        let r = drivesec_ops::validate::validate_device(&ctx, t);
        singles.push(t0.elapsed().as_secs_f64());
        assert!(r.checks.len() > 10);
    }
    let sum: f64 = singles.iter().sum();
    let busy1 = busy();
    let t0 = Instant::now();
    let all = drivesec_ops::validate::validate_all(&ctx, &targets, 8);
    let concurrent = t0.elapsed().as_secs_f64();
    let busy2 = busy();
    assert_eq!(all.len(), 8);
    println!(
        "{}",
        serde_json::json!({"bench": "validate", "devices": 8, "checks_per_device": all[0].checks.len(),
            "single_mean_s": sum / 8.0, "single_sum_s": sum, "concurrent_s": concurrent,
            "ratio": concurrent / sum,
            "cpu_s_single_runs": busy1 - busy0, "cpu_s_concurrent": busy2 - busy1})
    );
}
