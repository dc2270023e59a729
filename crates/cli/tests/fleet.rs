//! Rollouts on a lab of four drivesecd processes: one device fails its
//! health check, reverts on its own, and the wave halts the campaign; a
//! rollout killed with SIGKILL mid-wave resumes and ends with every device
//! updated exactly once; only OEM-approved images are accepted.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{
    TestLab, config, drivesec, fleet_scan, lab_release, s, store_url, test_lab_n, write_inventory,
};
use serde_json::Value;

/// Each device's running version (through the CLI, as the engineer).
fn versions(lab: &TestLab) -> Vec<String> {
    lab.m
        .devices
        .iter()
        .map(|d| {
            let recs = drivesec_audit::reader::read(
                &d.dir.join("audit"),
                &drivesec_audit::reader::Query::default(),
                usize::MAX,
            )
            .unwrap();
            recs.iter()
                .rev()
                .find(|r| {
                    r.record.action == "firmware.running" || r.record.action == "firmware.trial"
                })
                .and_then(|r| r.record.target.clone())
                .unwrap_or_default()
        })
        .collect()
}

/// How many times each device accepted an image.
fn staged(lab: &TestLab) -> Vec<usize> {
    lab.m
        .devices
        .iter()
        .map(|d| {
            drivesec_audit::reader::read(
                &d.dir.join("audit"),
                &drivesec_audit::reader::Query::default(),
                usize::MAX,
            )
            .unwrap()
            .iter()
            .filter(|r| r.record.action == "firmware.staged")
            .count()
        })
        .collect()
}

/// The lab's devices as an inventory file (what a plant would keep).
fn inventory_file(lab: &TestLab, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("inventory.toml");
    write_inventory(&path, &lab.inventory());
    path
}

fn events(out: &str) -> Vec<Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_failing_health_check_reverts_and_halts_the_wave() {
    let lab = test_lab_n(Some(config()), 4);
    let d = tempfile::tempdir().unwrap();
    let rel = lab_release(&lab, d.path(), "1.1.0", 2, 64 << 10);
    let store = store_url(d.path());
    // Only approved images: the vendor-packed one without the OEM signature is refused.
    let packed = d.path().join("release-1.1.0.packed");
    let (code, _, err) = drivesec(&[
        "fleet",
        "rollout",
        "--store",
        &store,
        "--lab",
        s(&lab.dir),
        "--release",
        s(&packed),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("not an approved release"), "{err}");
    assert_eq!(staged(&lab), vec![0, 0, 0, 0]);
    // drive-002's next health check fails.
    std::fs::write(
        lab.m.devices[1].dir.join("test-failpoint"),
        "boot:health-fail",
    )
    .unwrap();
    let (code, out, err) = drivesec(&[
        "--json",
        "fleet",
        "rollout",
        "--store",
        &store,
        "--lab",
        s(&lab.dir),
        "--release",
        s(&rel),
        "--canary",
        "1",
        "--max-failure-rate",
        "0.2",
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("halted"), "{err}");
    let ev = events(&out);
    let waves: Vec<Vec<String>> = ev
        .iter()
        .filter(|e| e["event"] == "wave")
        .map(|e| {
            e["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(
        waves,
        vec![vec!["drive-001"], vec!["drive-002", "drive-003"]],
        "canary, then 2"
    );
    let halted = ev.iter().find(|e| e["event"] == "halted").unwrap();
    assert_eq!(
        (
            halted["wave"].clone(),
            halted["failed"].clone(),
            halted["of"].clone()
        ),
        (1.into(), 1.into(), 2.into())
    );
    let reverted = ev
        .iter()
        .find(|e| e["event"] == "device" && e["device"] == "drive-002" && e["state"] == "reverted")
        .expect("drive-002 reverted");
    assert!(
        reverted["detail"]
            .as_str()
            .unwrap()
            .contains("reverted to 1.0.0"),
        "{reverted}"
    );
    // The devices say the same: 001 and 003 run 1.1.0, 002 reverted, 004 untouched.
    assert_eq!(versions(&lab), vec!["1.1.0", "1.0.0", "1.1.0", "1.0.0"]);
    assert_eq!(staged(&lab), vec![1, 1, 1, 0]);
    // And the store.
    let (code, out, _) = drivesec(&["--json", "fleet", "status", "--store", &store]);
    assert_eq!(code, 0);
    let st: Value = serde_json::from_str(&out).unwrap();
    let fw: Vec<&str> = st["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["firmware_version"].as_str().unwrap())
        .collect();
    assert_eq!(fw, vec!["1.1.0", "", "1.1.0", ""]);
}

#[test]
fn a_rollout_killed_mid_wave_resumes_and_updates_each_device_once() {
    let lab = test_lab_n(Some(config()), 4);
    let d = tempfile::tempdir().unwrap();
    let rel = lab_release(&lab, d.path(), "1.1.0", 2, 256 << 10);
    let store = store_url(d.path());
    let args = [
        "--json",
        "fleet",
        "rollout",
        "--store",
        &store,
        "--lab",
        s(&lab.dir),
        "--release",
        s(&rel),
        "--canary",
        "1",
    ];
    // The same devices as an inventory file; without an [operator] a
    // rollout over it is refused, naming what is missing, and nothing moves.
    let inventory = d.path().join("inventory.toml");
    let mut inv = lab.inventory();
    let operator = inv.operator.take().unwrap();
    write_inventory(&inventory, &inv);
    let mut inv_args = args.to_vec();
    let inv_str = s(&inventory).to_string();
    inv_args[5] = "--inventory";
    inv_args[6] = &inv_str;
    let (code, _, err) = drivesec(&inv_args);
    assert_eq!(code, 2);
    assert!(
        err.contains("[operator]") && err.contains("inventory.toml"),
        "{err}"
    );
    assert_eq!(
        (staged(&lab), versions(&lab)),
        (vec![0; 4], vec!["1.0.0".to_string(); 4])
    );
    // Kill the tool as soon as wave 1 starts.
    let mut child = Command::new(env!("CARGO_BIN_EXE_drivesec"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let l = lines
            .next()
            .expect("the rollout ended before wave 1")
            .unwrap();
        let e: Value = serde_json::from_str(&l).unwrap();
        if e["event"] == "wave" && e["wave"] == 1 {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(30));
    let _ = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
    // Resume, this time from an inventory file that names the same devices
    // (the devices may still be finishing what the killed tool asked).
    inv.operator = Some(operator);
    write_inventory(&inventory, &inv);
    let (code, out, err) = drivesec(&inv_args);
    assert_eq!(code, 0, "{out}{err}");
    let ev = events(&out);
    assert_eq!(ev[0]["event"], "campaign");
    assert_eq!(ev[0]["resumed"], true, "{}", ev[0]);
    assert_eq!(ev.last().unwrap()["event"], "finished");
    assert_eq!(ev.last().unwrap()["done"], 4);
    assert_eq!(versions(&lab), vec!["1.1.0"; 4]);
    assert_eq!(
        staged(&lab),
        vec![1, 1, 1, 1],
        "each device updated exactly once"
    );
    // Running it again changes nothing.
    let (code, out, _) = drivesec(&args);
    assert_eq!(code, 0, "{out}");
    assert_eq!(staged(&lab), vec![1, 1, 1, 1]);
}

/// Key compromise: the CRL reaches every device and the revoked client is
/// refused everywhere; a device whose tamper response ran is flagged in the
/// store by a scan.
#[test]
fn crl_reaches_every_device_and_tamper_is_flagged() {
    let lab = test_lab_n(Some(config()), 4);
    let d = tempfile::tempdir().unwrap();
    let store = store_url(d.path());
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (c, k, serial) = common::issue_client_files(&mut oem, d.path(), Some("viewer"), None);
    let stolen = drivesec_oem::client::ClientIdentity::from_files(&c, &k).unwrap();
    let info = |dev: &drivesec_oem::lab::LabDevice| {
        drivesec_oem::client::DeviceClient::new(
            dev.api
                .as_ref()
                .unwrap()
                .trim_start_matches("https://")
                .parse()
                .unwrap(),
            Some(&stolen),
            &lab.m.device_trust(dev).unwrap(),
            drivesec_oem::client::Versions::Default,
        )
        .unwrap()
        .call("GET", "/api/v1/info", None)
    };
    assert!(lab.m.devices.iter().all(|dev| info(dev).is_ok()));
    let crl = oem.revoke(&serial, "key-compromise").unwrap();
    // Pushed over the inventory of the plant (the lab's, written as a file).
    let inventory = inventory_file(&lab, d.path());
    let (code, out, err) = drivesec(&[
        "--json",
        "fleet",
        "push-crl",
        "--inventory",
        s(&inventory),
        "--crl",
        s(&crl),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["installed"].as_array().unwrap().len(), 4);
    assert!(
        lab.m.devices.iter().all(|dev| info(dev).is_err()),
        "the stolen certificate still works somewhere"
    );

    let (code, out, _) = fleet_scan(true, &store, &["--lab", s(&lab.dir)]);
    assert_eq!(code, 0, "{out}");
    let seen: Value = serde_json::from_str(&out).unwrap();
    assert!(
        seen.as_array()
            .unwrap()
            .iter()
            .all(|x| x["reachable"] == true && x["days_left"].as_i64().unwrap() > 700)
    );
    // Bit rot in drive-002's staged image: its boot stage refuses it and
    // stays on the other slot; the scan reports it to the store.
    let rel = lab_release(&lab, d.path(), "1.1.0", 2, 64 << 10);
    let eng =
        drivesec_oem::lab::LabManifest::session(&lab.m, &lab.m.devices[1], "engineer").unwrap();
    let r = eng
        .upload_file("POST", "/api/v1/firmware", &rel, "application/octet-stream")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let pending = eng.ok("GET", "/api/v1/firmware", None).unwrap()["boot_state"]["pending"]
        .as_str()
        .unwrap()
        .to_string();
    let slot = lab.m.devices[1]
        .dir
        .join("firmware")
        .join(format!("slot-{pending}.img"));
    let mut img = std::fs::read(&slot).unwrap();
    let n = img.len();
    img[n - 100] ^= 0x01;
    std::fs::write(&slot, &img).unwrap();
    let rb = eng.ok("POST", "/api/v1/firmware/reboot", None).unwrap();
    assert_eq!(rb["running"]["version"], "1.0.0", "{rb}");
    let (code, out, err) = fleet_scan(true, &store, &["--inventory", s(&inventory)]);
    assert_eq!(code, 0, "{err}");
    let seen: Value = serde_json::from_str(&out).unwrap();
    assert!(
        seen[1]["boot_issue"].as_str().unwrap().contains("failed"),
        "{seen}"
    );
    let (_, out, _) = drivesec(&["--json", "fleet", "status", "--store", &store]);
    let st: Value = serde_json::from_str(&out).unwrap();
    let issues: Vec<bool> = st["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| !d["boot_issue"].as_str().unwrap().is_empty())
        .collect();
    assert_eq!(issues, vec![false, true, false, false], "{st}");
    // The enclosure of drive-004 is opened.
    let t = lab.m.devices[3].tamper.clone().unwrap();
    std::fs::create_dir_all(t.parent().unwrap()).unwrap();
    std::fs::write(&t, b"").unwrap();
    // The response runs within a tick; give the scan a few tries (while
    // the device switches to its tampered identity, a scan may also find
    // it unreachable, a failed device, and try again).
    let mut res = (0, String::new(), String::new());
    for _ in 0..50 {
        res = fleet_scan(false, &store, &["--inventory", s(&inventory)]);
        if res.0 == 2 && res.2.contains("report tamper") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, _, err) = res;
    assert_eq!(code, 2);
    assert!(err.contains("1 device(s) report tamper"), "{err}");
    let (_, out, _) = drivesec(&["--json", "fleet", "status", "--store", &store]);
    let st: Value = serde_json::from_str(&out).unwrap();
    let flags: Vec<bool> = st["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["tampered"].as_bool().unwrap())
        .collect();
    assert_eq!(flags, vec![false, false, false, true]);
}

/// LDevIDs due within the margin are renewed through a key each device
/// makes in its own keystore; the old key is destroyed, the device keeps
/// working under its new identity, also after a restart.
#[test]
fn ldevid_renewal_before_expiry() {
    let lab = test_lab_n(Some(config()), 4);
    let serial_of = |dev: &drivesec_oem::lab::LabDevice| {
        let id = lab.identity("viewer");
        let trust = lab.m.device_trust(dev).unwrap();
        let (_, _, chain) = drivesec_oem::validate::probe(
            dev.api
                .as_ref()
                .unwrap()
                .trim_start_matches("https://")
                .parse()
                .unwrap(),
            Some(&id),
            &trust,
            drivesec_oem::client::Versions::Default,
        )
        .unwrap();
        drivesec_pki::inspect::summarize(&chain[0]).unwrap().serial
    };
    let before: Vec<String> = lab.m.devices.iter().map(serial_of).collect();
    // Not due with a 30-day margin (the lab's LDevIDs run 730 days); asked
    // over an inventory, which needs the signing CA named.
    let d = tempfile::tempdir().unwrap();
    let inventory = inventory_file(&lab, d.path());
    let (code, _, err) = drivesec(&["fleet", "renew", "--inventory", s(&inventory)]);
    assert_eq!(code, 2);
    assert!(err.contains("--ca"), "{err}");
    let (code, out, _) = drivesec(&[
        "--json",
        "fleet",
        "renew",
        "--inventory",
        s(&inventory),
        "--ca",
        s(&lab.m.oem_ca_dir),
        "--margin-days",
        "30",
    ]);
    assert_eq!(code, 0);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(r.as_array().unwrap().iter().all(|x| x["renewed"] == false));
    // Due with a margin beyond their expiry: renewed for 365 days.
    let (code, out, err) = common::renew_every_ldevid(&lab);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(
        r.as_array().unwrap().iter().all(|x| x["renewed"] == true),
        "{r}"
    );
    let after: Vec<String> = lab.m.devices.iter().map(serial_of).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(a, b, "still the old LDevID");
    }
    for (dev, x) in lab.m.devices.iter().zip(r.as_array().unwrap()) {
        assert_eq!(
            x["serial"].as_str().unwrap(),
            after[lab
                .m
                .devices
                .iter()
                .position(|d| d.name == dev.name)
                .unwrap()]
        );
    }
    // One key per device in the keystore: the old one is gone.
    let st = drivesec_device::state::StateDir::load(&lab.m.devices[0].dir).unwrap();
    let handles: Vec<String> = st
        .store
        .list()
        .unwrap()
        .into_iter()
        .map(|k| k.handle.as_str().to_string())
        .collect();
    assert_eq!(
        handles.iter().filter(|h| h.starts_with("ldevid")).count(),
        1,
        "{handles:?}"
    );
    assert_eq!(
        Some(
            handles
                .iter()
                .find(|h| h.starts_with("ldevid"))
                .unwrap()
                .as_str()
        ),
        st.file.ldevid_key.as_ref().map(|h| h.as_str())
    );
    // The device still works for its users, and after a restart.
    assert_eq!(
        lab.session("viewer")
            .ok("GET", "/api/v1/info", None)
            .unwrap()["state"],
        "commissioned"
    );
    let dir = lab.device_dir();
    drivesec_oem::daemons::stop(lab.m.devices[0].pid.unwrap());
    let cfg = drivesec_device::config::DeviceConfig::load(&dir.join("drivesecd.toml")).unwrap();
    let again =
        drivesec_oem::daemons::start(Path::new(env!("CARGO_BIN_EXE_drivesecd")), &dir, &cfg)
            .unwrap();
    let c = drivesec_oem::client::DeviceClient::new(
        again.addr,
        Some(&lab.identity("viewer")),
        &lab.trust(),
        drivesec_oem::client::Versions::Default,
    )
    .unwrap();
    assert_eq!(c.call("GET", "/api/v1/info", None).unwrap().status, 200);
    drivesec_oem::daemons::stop(again.pid);
}

/// The access review: trail verified; used, never-used accounts; the
/// privilege change; a burst of failed logins.
#[test]
fn access_review_finds_what_happened() {
    let lab = common::test_lab(Some(config()));
    let _ = lab.session("viewer");
    let admin = lab.admin();
    admin
        .ok("POST", "/api/v1/users", Some(&serde_json::json!({"username": "late-admin", "role": "security-admin", "password": "Xylophone-42-Blue"})))
        .unwrap();
    let c = lab.client("operator");
    for _ in 0..6 {
        let r = c
            .call("POST", "/api/v1/login", Some(&serde_json::json!({"username": lab.m.users["operator"].username, "password": "Wrong-passw0rd-9"})))
            .unwrap();
        // 401, then 403 once the account locks (after five).
        assert!(matches!(r.status, 401 | 403), "{}", r.status);
    }
    // Failed logins are recorded aggregated: the window's summary, which
    // counts all but the first, is written when the window closes.
    std::thread::sleep(std::time::Duration::from_millis(11_500));
    let (code, out, err) = drivesec(&["--json", "audit", "review", "--lab", s(&lab.dir)]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let d = &r[0];
    assert_eq!(d["trail_intact"], true);
    let acct = |name: &str| {
        d["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["username"] == name)
            .cloned()
            .unwrap()
    };
    // Each lab account logged in once at set-up, to change the password
    // its administrator set; the viewer once more above.
    let viewer = acct(&lab.m.users["viewer"].username);
    assert_eq!(
        (viewer["logins"].clone(), viewer["never_used"].clone()),
        (2.into(), false.into()),
        "{viewer}"
    );
    assert_eq!(acct(&lab.m.users["auditor"].username)["logins"], 1);
    assert_eq!(acct("late-admin")["never_used"], true);
    let changes = d["privilege_changes"].to_string();
    assert!(changes.contains("user.add late-admin"), "{changes}");
    let bursts = d["failed_login_bursts"].as_array().unwrap();
    assert_eq!(bursts.len(), 1, "{bursts:?}");
    assert!(
        bursts[0]
            .as_str()
            .unwrap()
            .contains(&lab.m.users["operator"].username),
        "{bursts:?}"
    );

    // Over an inventory: the trail is collected through the API into
    // --trails and verified there with the IDevID the device presents,
    // which must chain to the inventory's manufacturer root.
    let t = tempfile::tempdir().unwrap();
    let inventory = inventory_file(&lab, t.path());
    let trails = t.path().join("trails");
    let review = |inv: &Path| {
        drivesec(&[
            "--json",
            "audit",
            "review",
            "--inventory",
            s(inv),
            "--trails",
            s(&trails),
        ])
    };
    let (code, out, err) = review(&inventory);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r[0]["trail_intact"], true);
    assert!(r[0]["records"].as_u64().unwrap() >= d["records"].as_u64().unwrap());
    assert!(
        std::fs::read_dir(trails.join("drive-001").join("segments"))
            .unwrap()
            .count()
            >= 1
    );
    // A byte changed in the device's own trail shows in the collected copy.
    let seg = std::fs::read_dir(lab.m.devices[0].dir.join("audit").join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::remove_dir_all(&trails).unwrap();
    let (code, out, err) = review(&inventory);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("broken"), "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r[0]["trail_intact"], false, "{out}");
    // Another manufacturer's root: the device's IDevID is refused.
    let other = t.path().join("other-mfg");
    let (code, _, err) = drivesec(&[
        "ca",
        "init",
        "--dir",
        s(&other),
        "--kind",
        "manufacturer",
        "--org",
        "Other",
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&inventory)
        .unwrap()
        .replace(s(&lab.m.manufacturer_ca), s(&other.join("root.crt")));
    std::fs::write(&inventory, text).unwrap();
    let (code, _, err) = review(&inventory);
    assert_eq!(code, 2);
    assert!(
        err.contains("does not chain to the manufacturer root"),
        "{err}"
    );
}

/// The re-certification bundle: plan, assessment with live SL-A, validation
/// and access review in one signed file; any change breaks the signature.
#[test]
fn evidence_bundle_is_signed_and_tamper_evident() {
    let lab = common::test_lab(Some(config()));
    let d = tempfile::tempdir().unwrap();
    let plan = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/packaging-line.toml");
    let out = d.path().join("bundle.json");
    let (code, stdout, err) = drivesec(&[
        "evidence",
        "bundle",
        "--plan",
        s(&plan),
        "--lab",
        s(&lab.dir),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{stdout}{err}");
    // The lab signs evidence with its own evidence key, not the approval key.
    let key = common::evidence_public_key(&lab);
    let approval = common::oem_public_key(&lab);
    let (code, _, err) = drivesec(&["evidence", "verify", s(&out), "--key", s(&approval)]);
    assert_eq!(code, 2, "verified under the approval key: {err}");
    let (code, stdout, err) = drivesec(&["evidence", "verify", s(&out), "--key", s(&key)]);
    assert_eq!(code, 0, "{stdout}{err}");
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let c = &v["evidence"]["contents"];
    assert!(
        c["plan_toml"]
            .as_str()
            .unwrap()
            .contains("Packaging line 4")
    );
    assert_eq!(c["assessment"]["zones"].as_array().unwrap().len(), 8);
    let cell = c["assessment"]["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["zone"] == "cell")
        .unwrap();
    assert!(
        !cell["assets"][0]["sl_a"].is_null(),
        "live SL-A for drive-001"
    );
    assert_eq!(c["validation"]["summary"]["devices"], 1);
    assert_eq!(c["audit_review"][0]["trail_intact"], true);
    let mut t = v.clone();
    t["evidence"]["contents"]["plan_toml"] = "tolerable = 25".into();
    let bad = d.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_vec(&t).unwrap()).unwrap();
    let (code, _, err) = drivesec(&["evidence", "verify", s(&bad), "--key", s(&key)]);
    assert_eq!(code, 2);
    assert!(err.contains("does not match"), "{err}");

    // The same over an inventory file, signed with a keystore named on the
    // command line (an inventory does not say where the OEM key is).
    let l = drivesec_iec62443::model::load(&plan).unwrap();
    let inv = drivesec_oem::inventory::Inventory::from_lab(&lab.dir, &lab.m, &|dev| {
        l.model.asset_of_device(dev)
    })
    .unwrap();
    let inventory = d.path().join("plant.toml");
    write_inventory(&inventory, &inv);
    let out2 = d.path().join("bundle2.json");
    let bundle = |extra: &[&str]| {
        let mut args = vec![
            "evidence",
            "bundle",
            "--plan",
            s(&plan),
            "--inventory",
            s(&inventory),
            "--out",
            s(&out2),
        ];
        args.extend_from_slice(extra);
        drivesec(&args)
    };
    let (code, _, err) = bundle(&[]);
    assert_eq!(code, 2);
    assert!(err.contains("--sign-keystore"), "{err}");
    assert!(!out2.exists());
    let ks = lab.m.firmware.as_ref().unwrap().oem_keystore.clone();
    let (code, _, err) = bundle(&["--sign-keystore", s(&ks)]);
    assert_eq!(code, 2);
    assert!(err.contains("--sign-key"), "{err}");
    let (code, stdout, err) = bundle(&["--sign-keystore", s(&ks), "--sign-key", "approval"]);
    assert_eq!(code, 0, "{stdout}{err}");
    let (code, _, err) = drivesec(&["evidence", "verify", s(&out2), "--key", s(&approval)]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_slice(&std::fs::read(&out2).unwrap()).unwrap();
    let c = &v["evidence"]["contents"];
    assert_eq!(c["validation"]["summary"]["devices"], 1);
    assert_eq!(c["audit_review"][0]["trail_intact"], true);
    // And plan assess takes its live SL-A from the inventory too.
    let (code, out, err) = drivesec(&[
        "--json",
        "plan",
        "assess",
        s(&plan),
        "--live-inventory",
        s(&inventory),
    ]);
    assert_eq!(code, 0, "{err}");
    let a: Value = serde_json::from_str(&out).unwrap();
    let cell = a["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["zone"] == "cell")
        .unwrap()
        .clone();
    assert!(!cell["assets"][0]["sl_a"].is_null(), "{cell}");
}
