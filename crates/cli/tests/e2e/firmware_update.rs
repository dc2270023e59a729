//! Firmware updates on real daemons: upload, trial boot, confirmation and
//! revert, attestation of what runs, and SIGKILL at any moment of an update
//! survived.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{
    Daemon, LabGuard, Out, config, lab_release, ok, run, s, test_lab, wait_until,
};
use drivesec_client::client::{DeviceClient, Versions};
use drivesec_state::config::DeviceConfig;
use serde_json::Value;

/// The whole update path through real daemons: pack and approve with the
/// lab's release keys, least privilege on upload, unapproved and replayed
/// images refused with nothing staged, trial boot confirmed by the health
/// check, a corrupted pending slot reverted at boot, and an attestation
/// that proves what runs.
#[test]
fn device_firmware_update_revert_and_attestation() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("lab");
    let _guard = LabGuard(dir.clone());
    ok(&["lab", "up", "--dir", s(&dir), "--devices", "1"]);
    let lab: Value = serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap();
    let dev = &lab["devices"][0];
    let fw = &lab["firmware"];
    let p = |n: &str| d.path().join(n);
    let release = |version: &str, counter: &str| -> (PathBuf, PathBuf) {
        let plain = p(&format!("fw-{version}.bin"));
        std::fs::write(&plain, format!("drive firmware {version}\n").repeat(20_000)).unwrap();
        let packed = p(&format!("fw-{version}.packed"));
        let approved = p(&format!("fw-{version}.img"));
        ok(&[
            "firmware",
            "pack",
            "--input",
            s(&plain),
            "--out",
            s(&packed),
            "--hw-class",
            fw["hw_class"].as_str().unwrap(),
            "--version",
            version,
            "--counter",
            counter,
            "--recipient",
            dev["firmware_key"].as_str().unwrap(),
            "--keystore",
            fw["vendor_keystore"].as_str().unwrap(),
            "--key",
            "release",
        ]);
        ok(&[
            "firmware",
            "approve",
            "--image",
            s(&packed),
            "--out",
            s(&approved),
            "--keystore",
            fw["oem_keystore"].as_str().unwrap(),
            "--key",
            "approval",
        ]);
        (packed, approved)
    };
    let device = |role: Option<&str>, args: &[&str]| -> Out {
        let mut v = vec!["--json", "device", "--lab", s(&dir)];
        if let Some(r) = role {
            v.extend(["--as", r]);
        }
        v.extend(args);
        run(&v)
    };
    let json_of = |o: &Out| -> Value {
        assert_eq!(o.code, 0, "{}", o.stderr);
        serde_json::from_str(&o.stdout).unwrap()
    };
    let status = || json_of(&device(None, &["firmware", "status"]));
    let audit = |action: &str| -> Value {
        json_of(&device(
            None,
            &["audit", "show", "--action", action, "--limit", "1000"],
        ))
    };

    let st = status();
    assert_eq!(st["running"]["version"], "1.0.0");
    assert_eq!(st["running"]["trial"], false);
    assert_eq!(st["boot_state"]["counter"], 1);

    let (packed, approved) = release("1.1.0", "2");
    // Least privilege: only the engineer role may update firmware.
    for role in ["viewer", "operator", "auditor", "security-admin"] {
        let o = device(Some(role), &["firmware", "update", "--image", s(&approved)]);
        assert_ne!(o.code, 0, "{role} must not update firmware");
        assert!(o.stderr.contains("403"), "{role}: {}", o.stderr);
    }
    // Without the OEM approval the policy is not met: refused, nothing staged.
    let o = device(
        Some("engineer"),
        &["firmware", "update", "--image", s(&packed)],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("400"), "{}", o.stderr);
    assert!(
        o.stderr.contains("oem"),
        "names the missing role: {}",
        o.stderr
    );
    assert!(status()["boot_state"]["pending"].is_null());
    let refused = audit("firmware.refused");
    assert!(
        refused.to_string().contains("firmware.refused"),
        "{refused}"
    );

    // The approved image: staged, trial boot, health check, confirmed.
    let staged = json_of(&device(
        Some("engineer"),
        &["firmware", "update", "--image", s(&approved)],
    ));
    assert_eq!(staged["staged"], "1.1.0");
    assert!(!status()["boot_state"]["pending"].is_null());
    let after = json_of(&device(Some("engineer"), &["firmware", "reboot"]));
    assert_eq!(after["running"]["version"], "1.1.0");
    assert_eq!(after["running"]["trial"], false);
    assert_eq!(after["boot_state"]["counter"], 2);
    assert!(after["boot_state"]["pending"].is_null());
    let running = audit("firmware.running").to_string();
    assert!(running.contains("1.1.0"), "{running}");

    // Attestation: fresh nonce, device identity signature, the approved release.
    let att = json_of(&device(
        Some("viewer"),
        &["attest", "--approved", s(&approved)],
    ));
    assert_eq!(att["version"], "1.1.0");
    assert_eq!(att["matches_approved"], true);
    let o = device(
        Some("viewer"),
        &[
            "firmware",
            "attest",
            "--approved",
            fw["factory_image"].as_str().unwrap(),
        ],
    );
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("not the approved release"),
        "{}",
        o.stderr
    );
    // An identity root the device does not chain to is refused.
    let o = device(
        Some("viewer"),
        &[
            "firmware",
            "attest",
            "--identity-root",
            lab["manufacturer_ca"].as_str().unwrap(),
        ],
    );
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert!(
        o.stderr.contains("does not lead to a trusted root"),
        "{}",
        o.stderr
    );

    // Replaying the old, validly signed factory image: anti-rollback.
    let o = device(
        Some("engineer"),
        &[
            "firmware",
            "update",
            "--image",
            fw["factory_image"].as_str().unwrap(),
        ],
    );
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("rollback") || o.stderr.contains("counter"),
        "{}",
        o.stderr
    );
    assert!(status()["boot_state"]["pending"].is_null());

    // A verified update whose slot is corrupted before the trial boot (flash
    // fault): the boot stage refuses it and stays on 1.1.0.
    let (_, broken) = release("1.2.0", "3");
    json_of(&device(
        Some("engineer"),
        &["firmware", "update", "--image", s(&broken)],
    ));
    let pending = status()["boot_state"]["pending"]
        .as_str()
        .unwrap()
        .to_lowercase();
    let slot = Path::new(dev["dir"].as_str().unwrap())
        .join("firmware")
        .join(format!("slot-{pending}.img"));
    let mut bytes = std::fs::read(&slot).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x01;
    std::fs::write(&slot, bytes).unwrap();
    let after = json_of(&device(Some("engineer"), &["firmware", "reboot"]));
    assert_eq!(after["running"]["version"], "1.1.0");
    assert_eq!(after["boot_state"]["counter"], 2);
    assert!(after["boot_state"]["pending"].is_null());
    assert!(!after["boot_state"]["last_revert"].is_null());
    let reverted = audit("firmware.reverted").to_string();
    assert!(reverted.contains("firmware.reverted"), "{reverted}");
}

fn sigkill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    // Wait until it is gone (the lab, not this test, is its parent).
    wait_until("the killed daemon to be gone", || {
        !drivesec_lab::daemons::alive(pid)
    });
}

/// Packs and approves a release with the lab's keys through the CLI.
/// SIGKILL of drivesecd at any moment of an update (while the image streams
/// in, after it is staged, while the trial boot and confirmation run) is
/// survivable: the restarted daemon runs a verified image, the old or the new
/// one as the protocol says, the security counter never decreases, and the
/// update completes on the next try.
#[test]
fn sigkill_during_update_and_trial_boot_is_survivable() {
    let lab = test_lab(Some(config()));
    let tmp = tempfile::tempdir().unwrap();
    let dev_dir = lab.device_dir();
    let conf = DeviceConfig::load(&dev_dir.join("drivesecd.toml")).unwrap();
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_drivesecd"));
    let long = std::env::var_os("DRIVESEC_LONG_TESTS").is_some();
    let delays_ms: Vec<u64> = if long {
        (0..40).map(|i| i * 7).collect()
    } else {
        vec![0, 15, 60, 150]
    };
    let engineer = |addr: SocketAddr| {
        let mut c = DeviceClient::new(
            addr,
            Some(&lab.identity("engineer")),
            &lab.trust(),
            Versions::Default,
        )
        .unwrap();
        let u = &lab.m.users["engineer"];
        c.login(&u.username, &u.password).unwrap();
        c
    };
    let mut pid = lab.m.devices[0].pid.unwrap();
    let mut addr = lab.addr();
    let mut guard: Option<Daemon> = None;
    let mut counter = 1u64;
    let mut version = "1.0.0".to_string();
    let restart = |pid: &mut u32, addr: &mut SocketAddr, guard: &mut Option<Daemon>| {
        sigkill(*pid);
        *guard = None;
        let s = drivesec_lab::daemons::start(&daemon, &dev_dir, &conf).unwrap();
        *pid = s.pid;
        *addr = s.addr;
        *guard = Some(Daemon(s.pid));
    };
    for (i, delay) in delays_ms.iter().enumerate() {
        let next = format!("1.{}.0", i + 1);
        let image = lab_release(&lab, tmp.path(), &next, i as u64 + 2, 4 << 20);
        let bytes = std::fs::read(&image).unwrap();
        // Kill while the upload streams in.
        let c = engineer(addr);
        let up = std::thread::spawn(move || {
            c.call_raw(
                "POST",
                "/api/v1/firmware",
                Some(bytes),
                "application/octet-stream",
            )
        });
        std::thread::sleep(Duration::from_millis(*delay));
        restart(&mut pid, &mut addr, &mut guard);
        let _ = up.join().unwrap();
        let st = engineer(addr).ok("GET", "/api/v1/firmware", None).unwrap();
        // The old image, or the new one when it was staged before the kill
        // (then the restart was its trial boot).
        let running = st["running"]["version"].as_str().unwrap();
        assert!(running == version || running == next, "{st}");
        assert_eq!(st["running"]["trial"], false, "{st}");
        let c_now = st["boot_state"]["counter"].as_u64().unwrap();
        assert!(c_now >= counter, "counter went down: {st}");
        counter = c_now;
        // Kill after staging, and again right after asking for the reboot.
        let r = engineer(addr)
            .call_raw(
                "POST",
                "/api/v1/firmware",
                Some(std::fs::read(&image).unwrap()),
                "application/octet-stream",
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let c = engineer(addr);
        let rb = std::thread::spawn(move || c.call("POST", "/api/v1/firmware/reboot", None));
        std::thread::sleep(Duration::from_millis(*delay / 4));
        restart(&mut pid, &mut addr, &mut guard);
        let _ = rb.join().unwrap();
        // The restart itself is a reboot: the pending image boots on trial
        // and is confirmed, unless the killed reboot already did that.
        let st = engineer(addr).ok("GET", "/api/v1/firmware", None).unwrap();
        assert_eq!(st["running"]["version"], next.as_str(), "{st}");
        assert_eq!(st["running"]["trial"], false, "{st}");
        assert!(st["boot_state"]["pending"].is_null(), "{st}");
        let c_now = st["boot_state"]["counter"].as_u64().unwrap();
        assert_eq!(c_now, i as u64 + 2, "{st}");
        assert!(c_now >= counter);
        counter = c_now;
        version = next;
    }
}
