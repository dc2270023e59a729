//! The device's posture (SL-A): it reflects the configuration, and reports
//! trail settings above their bound as the bound in force, saying so.

use std::path::Path;

use crate::support::test_lab;
use drivesec_state::config::DeviceConfig;

/// Review finding 8 (the posture): a trail setting above its bound, from a
/// configuration an older version accepted, is reported in the posture's
/// settings as the value in force (the bound), and the posture's start-up
/// findings say that it was brought down from the configured value.
#[test]
fn the_posture_reports_the_clamped_trail_settings_and_says_so() {
    let mut lab = test_lab(None);
    let dir = lab.device_dir();
    lab.stop_device();
    let mut cfg = DeviceConfig::load(&dir.join("drivesecd.toml")).unwrap();
    cfg.audit.segment_bytes = 2 * drivesec_audit::MAX_SEGMENT_BYTES;
    cfg.audit.max_bytes = 2 * drivesec_audit::MAX_TRAIL_BYTES;
    let s = drivesec_lab::daemons::start(Path::new(env!("CARGO_BIN_EXE_drivesecd")), &dir, &cfg)
        .unwrap();
    lab.started(s);
    let p = lab.admin().ok("GET", "/api/v1/posture", None).unwrap();
    let audit = &p["settings"]["audit"];
    assert_eq!(audit["segment_bytes"], drivesec_audit::MAX_SEGMENT_BYTES);
    assert_eq!(audit["max_bytes"], drivesec_audit::MAX_TRAIL_BYTES);
    let findings: Vec<&str> = p["settings"]["audit_start_up_findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for (setting, configured, bound) in [
        (
            "audit.segment_bytes",
            cfg.audit.segment_bytes,
            drivesec_audit::MAX_SEGMENT_BYTES,
        ),
        (
            "audit.max_bytes",
            cfg.audit.max_bytes,
            drivesec_audit::MAX_TRAIL_BYTES,
        ),
    ] {
        let said = format!("sets {setting} to {configured}, above its bound {bound}");
        assert!(
            findings.iter().any(|f| f.contains(&said)),
            "{said}: {findings:#?}"
        );
    }
}

#[test]
fn posture_reflects_the_configuration() {
    let lab = test_lab(None);
    let p = lab
        .session("security-admin")
        .ok("GET", "/api/v1/posture", None)
        .unwrap();
    let v: Vec<u64> = p["sl_a"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(v.len(), 7);
    // Achieved never exceeds capability: SL-A <= SL-C of drivesec's own
    // declaration, FR by FR, with the declaration named as the reason.
    let (sl_c, _) =
        drivesec_iec62443::assess::sl_c(drivesec_iec62443::model::builtin("drivesecd").unwrap());
    for i in 0..7 {
        assert!(
            v[i] <= u64::from(sl_c[i]),
            "FR{}: SL-A {} > SL-C {}",
            i + 1,
            v[i],
            sl_c[i]
        );
    }
    let text = p.to_string();
    assert!(
        text.contains(
            "SR 3.2 RE2 (SL 3): central management and reporting is not implemented -> at most 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("soft keystore"),
        "the soft keystore must cost points"
    );
    assert!(text.contains("audit forwarding not configured"));
    assert!(text.contains("unsynchronized") || text.contains("not known to be synchronized"));
    assert!(
        p["notation"]
            .as_str()
            .unwrap()
            .starts_with("SL-A(device) = {")
    );
    // The settings report is machine-readable and complete enough to audit.
    let s = &p["settings"];
    assert_eq!(s["keystore"]["backend"], "soft");
    assert_eq!(s["tls"]["client_certificate"], "required");
    assert_eq!(s["accounts_per_role"]["viewer"], 1);
    assert!(s["trust_anchors"].as_array().unwrap().len() == 1);
    // A viewer may not read it.
    assert_eq!(
        lab.session("viewer")
            .call("GET", "/api/v1/posture", None)
            .unwrap()
            .status,
        403
    );
}
