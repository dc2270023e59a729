//! `drivesec fleet` over a lab or an inventory: CRLs pushed to every device
//! and tamper flagged by a scan, an inventory without (or with a stale) CRL,
//! bad inventories refused by name, store passwords never echoed, and store
//! fields shown escaped.

use std::process::Command;

use crate::support::{
    config, drivesec, fails, fleet_scan, issue_client_files, lab_release, s, store_url, test_lab,
    test_lab_n, write_inventory,
};
use serde_json::Value;

/// The CRL policy: an inventory without trust.crl is refused before any
/// connection, with what to do; `--insecure-no-crl` goes on with a
/// warning. A stale CRL does not lock the owner out: the scan runs, and
/// the warning names the CRL and how to refresh it.
#[test]
fn a_missing_crl_refuses_and_a_stale_one_warns() {
    let lab = test_lab(Some(config()));
    let t = tempfile::tempdir().unwrap();
    let store = store_url(t.path());
    let mut inv = lab.inventory();
    let inventory = t.path().join("inventory.toml");
    let scan = |extra: &[&str]| {
        let mut args = vec!["--inventory", s(&inventory)];
        args.extend_from_slice(extra);
        fleet_scan(false, &store, &args)
    };

    inv.trust.crl = None;
    write_inventory(&inventory, &inv);
    let (code, _, err) = scan(&[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("trust.crl") && err.contains("--insecure-no-crl"),
        "{err}"
    );
    let (code, _, err) = scan(&["--insecure-no-crl"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: no CRL is configured"), "{err}");

    let now = time::OffsetDateTime::now_utc();
    let stale = t.path().join("stale-crl.pem");
    let oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    std::fs::write(
        &stale,
        oem.dangerous_crl(
            99,
            now - time::Duration::days(10),
            now - time::Duration::days(3),
        )
        .unwrap(),
    )
    .unwrap();
    inv.trust.crl = Some(stale);
    write_inventory(&inventory, &inv);
    let (code, out, err) = scan(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("more days"), "{out}");
    assert!(
        err.contains("warning: the owner's CRL")
            && err.contains("stale-crl.pem")
            && err.contains("past its nextUpdate")
            && err.contains("drivesec ca crl"),
        "{err}"
    );
}

/// A mistyped store URL, or one whose server is unreachable, is never
/// echoed with its password, nor is the one in DRIVESEC_FLEET_STORE shown
/// by --help.
#[test]
fn store_passwords_are_not_echoed() {
    for url in [
        "postgress://admin:s3cret-pw@localhost/fleet",
        "postgres:admin:s3cret-pw@localhost/fleet",
        "postgres://admin:s3cret-pw@127.0.0.1:1/fleet",
        "postgres://127.0.0.1:1/fleet?user=admin&password=s3cret-pw",
    ] {
        let (code, out, err) = drivesec(&["fleet", "status", "--store", url]);
        assert_eq!(code, 2, "{url}");
        assert!(!format!("{out}{err}").contains("s3cret-pw"), "{url}: {err}");
    }
    let (code, _, err) = drivesec(&[
        "fleet",
        "status",
        "--store",
        "postgress://admin:s3cret-pw@localhost/fleet",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("'postgress://admin:***@localhost/fleet' is not a store URL"),
        "{err}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_drivesec"))
        .args(["fleet", "status", "--help"])
        .env(
            "DRIVESEC_FLEET_STORE",
            "postgres://admin:s3cret-pw@db/fleet",
        )
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("DRIVESEC_FLEET_STORE"), "{help}");
    assert!(!help.contains("s3cret-pw"), "{help}");
}

/// Fleet store fields (a device name, its firmware version, a boot issue, a
/// campaign detail) with terminal escapes are shown escaped by `fleet status`.
#[test]
fn fleet_status_escapes_store_fields() {
    let d = tempfile::tempdir().unwrap();
    let url = store_url(d.path());
    let mut store = drivesec_fleet::open(&url).unwrap();
    let mut rec = drivesec_fleet::DeviceRecord::new(
        "drive\u{1b}[2J-001",
        "DS1",
        "127.0.0.1:1",
        "drive-001.example",
    );
    rec.firmware_version = "1.0\u{1b}]0;pwned\u{7}".into();
    rec.boot_issue = "reverted\u{1b}[1A\u{1b}[K all fine".into();
    rec.zone = "cell\u{9b}8m".into();
    store.upsert_device(&rec).unwrap();
    drop(store);
    let (code, out, err) = drivesec(&["fleet", "status", "--store", &url]);
    assert_eq!(code, 0, "{err}");
    for shown in [
        "drive\\u{1b}[2J-001",
        "1.0\\u{1b}]0;pwned\\u{7}",
        "reverted\\u{1b}[1A\\u{1b}[K all fine",
        "cell\\u{9b}8m",
    ] {
        assert!(out.contains(shown), "{shown} in {out}");
    }
    assert!(!out.contains(['\u{1b}', '\u{7}', '\u{9b}']), "{out:?}");
}

/// Fleet commands over an inventory name what is missing or wrong in it,
/// and touch neither the store nor any device.
#[test]
fn fleet_over_a_bad_inventory_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let inv = d.path().join("plant.toml");
    let store = d.path().join("fleet.db");
    let base = r#"
[trust]
oem_root = "root.crt"
TRUST
[validator]
admin_cert = "a.crt"
admin_key = "a.key"
admin_user = "secadmin"
admin_password_file = "secadmin.password"
low_privilege_cert = "v.crt"
low_privilege_key = "v.key"
approved_releases = []

[operator]
cert = "e.crt"
key = "e.key"
user = "engineer"
password_file = "engineer.password"

[[devices]]
name = "drive-001"
asset = "d1"
api = "API"
device_name = "d1.example"
"#;
    let store_url = format!("sqlite:{}", store.display());
    let rollout = |trust: &str, api: &str| {
        std::fs::write(&inv, base.replace("TRUST", trust).replace("API", api)).unwrap();
        fails(&[
            "fleet",
            "rollout",
            "--store",
            &store_url,
            "--inventory",
            s(&inv),
            "--release",
            s(&inv),
        ])
    };
    let err = rollout("", "127.0.0.1:8443");
    assert!(
        err.contains("plant.toml") && err.contains("trust.firmware_trust"),
        "{err}"
    );
    let err = rollout(r#"firmware_trust = "trust.json""#, "not-an-address");
    assert!(
        err.contains("drive-001") && err.contains("not-an-address"),
        "{err}"
    );
    let err = fails(&[
        "fleet",
        "scan",
        "--store",
        &store_url,
        "--inventory",
        s(&inv),
    ]);
    assert!(
        err.contains("drive-001") && err.contains("not-an-address"),
        "{err}"
    );
    // The administrator's password file is missing: named.
    std::fs::write(
        &inv,
        base.replace("TRUST", "").replace("API", "127.0.0.1:8443"),
    )
    .unwrap();
    let err = fails(&[
        "fleet",
        "push-crl",
        "--inventory",
        s(&inv),
        "--crl",
        s(&inv),
    ]);
    assert!(err.contains("secadmin.password"), "{err}");
    // An unknown key is named too (the format is closed).
    std::fs::write(
        &inv,
        base.replace("TRUST", "colour = \"blue\"")
            .replace("API", "x:1"),
    )
    .unwrap();
    let err = fails(&[
        "fleet",
        "push-crl",
        "--inventory",
        s(&inv),
        "--crl",
        s(&inv),
    ]);
    assert!(err.contains("colour"), "{err}");
    assert!(!store.exists(), "the store was touched");
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
    let (c, k, serial) = issue_client_files(&mut oem, d.path(), Some("viewer"), None);
    let stolen = drivesec_client::client::ClientIdentity::from_files(&c, &k).unwrap();
    let info = |dev: &drivesec_lab::manifest::LabDevice| {
        drivesec_client::client::DeviceClient::new(
            dev.api
                .as_ref()
                .unwrap()
                .trim_start_matches("https://")
                .parse()
                .unwrap(),
            Some(&stolen),
            &lab.m.device_trust(dev).unwrap(),
            drivesec_client::client::Versions::Default,
        )
        .unwrap()
        .call("GET", "/api/v1/info", None)
    };
    assert!(lab.m.devices.iter().all(|dev| info(dev).is_ok()));
    let crl = oem.revoke(&serial, "key-compromise").unwrap();
    // Pushed over the inventory of the plant (the lab's, written as a file).
    let inventory = lab.inventory_file(d.path());
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
    let eng = drivesec_lab::LabManifest::session(&lab.m, &lab.m.devices[1], "engineer").unwrap();
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
