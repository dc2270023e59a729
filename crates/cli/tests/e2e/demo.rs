//! `drivesec demo`: the whole story, every check verified.

use crate::support::{ok, s};
use serde_json::Value;

#[test]
fn demo_verifies_everything() {
    let d = tempfile::tempdir().unwrap();
    let v: Value = serde_json::from_str(&ok(&[
        "--json",
        "demo",
        "--dir",
        s(&d.path().join("demo")),
        "--devices",
        "3",
    ]))
    .unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["devices"].as_array().unwrap().len(), 3);
    for dev in v["devices"].as_array().unwrap() {
        assert_eq!(dev["possession_ok"], true);
        assert_eq!(dev["credential_ok"], true);
        assert_eq!(dev["openssl_ok"], true);
    }
    // The firmware story: unapproved refused, approved confirmed, attested,
    // broken reverted.
    let fw = &v["firmware"];
    assert_eq!(fw["factory_version"], "1.0.0", "{fw}");
    assert_eq!(fw["unapproved_status"], 400, "{fw}");
    assert!(
        fw["unapproved_reason"]
            .as_str()
            .unwrap()
            .contains("missing required signature"),
        "{fw}"
    );
    assert_eq!(fw["running_after_update"], "1.1.0", "{fw}");
    assert_eq!(fw["confirmed"], true, "{fw}");
    assert_eq!(fw["counter_after_update"], 2, "{fw}");
    assert_eq!(fw["attested"], true, "{fw}");
    assert_eq!(fw["running_after_broken"], "1.1.0", "{fw}");
    assert!(
        fw["revert_reason"]
            .as_str()
            .unwrap()
            .contains("failed authentication"),
        "{fw}"
    );
    // The drive story: started, viewer refused, STO wins, no restart.
    let dr = &v["drive"];
    assert!(dr["running_speed_rpm"].as_f64().unwrap() > 0.0, "{dr}");
    assert_eq!(dr["viewer_exception"], 1, "{dr}");
    assert_eq!(dr["sto_state"], "safe-torque-off", "{dr}");
    assert_eq!(dr["sto_torque_pct"], 0.0, "{dr}");
    assert_eq!(dr["after_release"], "ready", "{dr}");
    // The IEC 62443 assessment of the lab plant, with live SL-A.
    let pl = &v["plan"];
    assert_eq!(pl["zones"], 8, "{pl}");
    assert!(!pl["live_devices"].as_array().unwrap().is_empty(), "{pl}");
    assert!(std::path::Path::new(pl["report"].as_str().unwrap()).exists());
    // Provisioned to the cell's SL-T and validated, with signed evidence.
    let va = &v["validation"];
    assert!(va["validated"].as_u64().unwrap() >= 1, "{va}");
    assert_eq!(va["provisioned"], va["validated"], "{va}");
    assert!(std::path::Path::new(va["evidence"].as_str().unwrap()).exists());
    // The fleet: a rollout halted by the drive that failed its health
    // check and reverted, LDevIDs renewed, trails intact.
    let fl = &v["fleet"];
    assert_eq!(fl["halted"], true, "{fl}");
    assert_eq!(fl["reverted"].as_array().unwrap().len(), 1, "{fl}");
    assert!(fl["renewed"].as_u64().unwrap() >= 3, "{fl}");
    assert_eq!(fl["trails_intact"], true, "{fl}");
    // The tamper story: the keys are gone, the device says so.
    let t = &v["tamper"];
    assert!(t["keys_before"].as_u64().unwrap() >= 3, "{t}");
    assert_eq!(t["keys_after"], 0, "{t}");
    assert_eq!(t["tampered"], true, "{t}");
    assert_eq!(t["identity_refused"], true, "{t}");
    assert_eq!(t["login_status"], 423, "{t}");
    // Re-provisioned by the manufacturer: a new IDevID on the same keystore,
    // the old one refused by the CRL, firmware at the old counter.
    let r = &t["reprovisioned"];
    assert_eq!(r["old_idevid_in_crl"], true, "{r}");
    assert_eq!(r["keys_after"], 2, "{r}");
    assert_ne!(r["new_idevid_serial"], r["old_idevid_serial"], "{r}");
    assert!(r["security_counter_floor"].as_u64().unwrap() >= 1, "{r}");
    assert!(
        std::path::Path::new(r["archive"].as_str().unwrap())
            .join("tampered.json")
            .exists()
    );
    let text = ok(&[
        "demo",
        "--dir",
        s(&d.path().join("demo2")),
        "--devices",
        "1",
    ]);
    assert!(text.contains("All identities verified"), "{text}");
    assert!(text.contains("the boot stage refuses it"), "{text}");
}
