//! Provisioning end to end on real drivesecd processes: a profile applies,
//! re-applies with no change, is refused whole when one item is bad, and is
//! all-or-nothing when the device is killed at each point of the
//! transaction; `diff` finds each drift injected behind its back.

use std::net::SocketAddr;
use std::path::Path;

use crate::support::{TestLab, config, test_lab, wait_until};
use drivesec_client::client::{DeviceClient, Versions};
use drivesec_iec62443::profile::{Account, Profile};
use drivesec_state::config::DeviceConfig;
use serde_json::{Value, json};

fn admin_at(lab: &TestLab, addr: SocketAddr) -> DeviceClient {
    let mut c = DeviceClient::new(
        addr,
        Some(&lab.identity("security-admin")),
        &lab.trust(),
        Versions::Default,
    )
    .unwrap();
    let a = lab.m.admin.as_ref().unwrap();
    c.login(&a.username, &a.password).unwrap();
    c
}

fn current(c: &DeviceClient) -> Value {
    c.ok("GET", "/api/v1/profile", None).unwrap()["current"].clone()
}

#[test]
fn applies_reapplies_with_no_change_and_diff_finds_drift() {
    let lab = test_lab(Some(config()));
    let admin = lab.admin();
    let p = lab.cell_profile();
    let before = drivesec_ops::provision::diff(&admin, &p).unwrap();
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("session.max_per_user: profile 1, device 3")),
        "{before:#?}"
    );
    let r = drivesec_ops::provision::apply(&admin, &p).unwrap();
    assert!(
        r.changed.iter().any(|l| l.starts_with("modbus.rights")),
        "{:?}",
        r.changed
    );
    assert!(r.initial_passwords.is_empty(), "no account is new");
    assert_eq!(
        drivesec_ops::provision::diff(&admin, &p).unwrap(),
        Vec::<String>::new()
    );
    // Again: nothing changes, and the trail says so.
    let again = drivesec_ops::provision::apply(&admin, &p).unwrap();
    assert!(again.changed.is_empty(), "{:?}", again.changed);
    let t = lab
        .session("auditor")
        .ok("GET", "/api/v1/audit?action=device.&limit=100", None)
        .unwrap();
    let runs: Vec<&Value> = t["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "device.provision")
        .collect();
    assert_eq!(runs.len(), 2);
    assert!(!runs[0]["details"]["changed"].as_array().unwrap().is_empty());
    assert!(runs[1]["details"]["changed"].as_array().unwrap().is_empty());
    // The applied Modbus rights hold: no parameter writes at UC 3.
    let mut eng = drivesec_client::modbus::ModbusClient::connect(
        lab.m.devices[0].modbus.as_ref().unwrap().parse().unwrap(),
        Some(&lab.identity("engineer")),
        &lab.trust(),
        Versions::Default,
    )
    .unwrap();
    assert_eq!(eng.write_single(1004, 50).unwrap(), Err(1));

    // Drift behind the profile's back, each found once.
    admin
        .ok("POST", "/api/v1/users", Some(&json!({"username": "stray", "role": "security-admin", "password": "Xylophone-42-Blue"})))
        .unwrap();
    let mut policy = admin.ok("GET", "/api/v1/security/access", None).unwrap();
    policy["password"]["min_length"] = 8.into();
    admin
        .ok("PUT", "/api/v1/security/access", Some(&policy))
        .unwrap();
    admin
        .ok(
            "PUT",
            "/api/v1/modbus/rights",
            Some(&json!({"roles": {"viewer": [{"functions": [3, 4], "start": 0, "end": 8}]}})),
        )
        .unwrap();
    let d = drivesec_ops::provision::diff(&admin, &p).unwrap();
    assert!(
        d.contains(&"accounts: stray (security-admin) is not in the profile".to_string()),
        "{d:#?}"
    );
    assert!(
        d.contains(&"password.min_length: profile 12, device 8".to_string()),
        "{d:#?}"
    );
    assert!(
        d.iter()
            .any(|l| l.starts_with("modbus.rights: missing grant operator")),
        "{d:#?}"
    );
    assert!(
        !d.iter().any(|l| l.contains("modbus.rights: extra")),
        "{d:#?}"
    );
    // Re-applying repairs all of it.
    drivesec_ops::provision::apply(&admin, &p).unwrap();
    assert_eq!(
        drivesec_ops::provision::diff(&admin, &p).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn a_refused_item_changes_nothing() {
    let lab = test_lab(Some(config()));
    let admin = lab.admin();
    let before = current(&admin);
    let good = lab.cell_profile();
    let mut bad = good.clone();
    bad.modbus.rights[0].functions = vec![5];
    let r = admin
        .call("PUT", "/api/v1/profile", Some(&json!({"profile": bad})))
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("modbus.rights"),
        "{}",
        r.body
    );
    // A new account whose initial password breaks the profile's policy.
    let mut weak = good.clone();
    weak.accounts.push(Account {
        username: "newbie".into(),
        role: "viewer".into(),
    });
    let r = admin
        .call(
            "PUT",
            "/api/v1/profile",
            Some(&json!({"profile": weak, "initial_passwords": {"newbie": "short"}})),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    // No security administrator left.
    let mut orphan = good.clone();
    orphan.accounts.retain(|a| a.role != "security-admin");
    let r = admin
        .call("PUT", "/api/v1/profile", Some(&json!({"profile": orphan})))
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        current(&admin),
        before,
        "a refused profile changed something"
    );
    // Only write-security-settings + manage-users may provision.
    for role in ["viewer", "operator", "engineer", "auditor"] {
        let r = lab
            .session(role)
            .call("PUT", "/api/v1/profile", Some(&json!({"profile": good})))
            .unwrap();
        assert_eq!(r.status, 403, "{role}");
    }
}

#[test]
fn killed_at_each_point_of_the_transaction_it_is_all_or_nothing() {
    let lab = test_lab(Some(config()));
    let dir = lab.device_dir();
    let daemon = Path::new(env!("CARGO_BIN_EXE_drivesecd"));
    let cfg = DeviceConfig::load(&dir.join("drivesecd.toml")).unwrap();
    let p = lab.cell_profile();
    let mut addr = lab.addr();
    let mut pid = lab.m.devices[0].pid.unwrap();
    let before = current(&admin_at(&lab, addr));
    for (point, applied) in [
        ("provision:before-journal", false),
        ("provision:after-journal", true),
        ("provision:mid-apply", true),
    ] {
        std::fs::write(dir.join("test-failpoint"), point).unwrap();
        let admin = admin_at(&lab, addr);
        let r = admin.call("PUT", "/api/v1/profile", Some(&json!({"profile": p})));
        assert!(
            r.is_err(),
            "{point}: the device should have died, got {r:?}"
        );
        wait_until(&format!("{point}: the device to die"), || {
            !drivesec_lab::daemons::alive(pid)
        });
        std::fs::remove_file(dir.join("test-failpoint")).unwrap();
        let started = drivesec_lab::daemons::start(daemon, &dir, &cfg).unwrap();
        (addr, pid) = (started.addr, started.pid);
        let admin = admin_at(&lab, addr);
        let now = current(&admin);
        assert!(
            !dir.join("provision.journal").exists(),
            "{point}: journal left behind"
        );
        if applied {
            assert_eq!(
                drivesec_ops::provision::diff(&admin, &p).unwrap(),
                Vec::<String>::new(),
                "{point}: not completely applied"
            );
            // Back to the old state for the next round.
            let mut undo: Profile = serde_json::from_value(before.clone()).unwrap();
            undo.zone = "undo".into();
            drivesec_ops::provision::apply(&admin, &undo).unwrap();
            assert_eq!(
                drivesec_ops::provision::compare(
                    &undo,
                    &serde_json::from_value(current(&admin)).unwrap()
                ),
                Vec::<String>::new()
            );
        } else {
            assert_eq!(now, before, "{point}: something changed");
        }
    }
    drivesec_lab::daemons::stop(pid);
}
