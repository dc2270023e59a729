//! `drivesec validate` end to end: a correctly provisioned lab device
//! passes; four deliberate faults (TLS 1.2 allowed where SL-T forbids it,
//! the factory credential present, a stray administrator, firmware not on
//! the approved list) give exactly one precise finding each, and each fix
//! removes its finding; signed evidence verifies and tampered evidence does
//! not; audit forwarding is checked by delivery to a real collector.

use std::path::Path;

use crate::support::{
    Collector, ONE_ZONE_PLAN as PLAN, config, drivesec, issue_client_files, lab_release,
    oem_public_key, s, test_lab, write_inventory,
};
use drivesec_iec62443::profile::Profile;
use serde_json::{Value, json};

#[test]
fn four_faults_four_findings_and_evidence() {
    let lab = test_lab(Some(config()));
    let d = tempfile::tempdir().unwrap();
    let plan = d.path().join("plan.toml");
    std::fs::write(&plan, PLAN).unwrap();
    // The profile the device is held to: the lab's own accounts.
    let l = drivesec_iec62443::model::load(&plan).unwrap();
    let mut p: Profile =
        drivesec_iec62443::profile::derive(&l.model, "line", [1, 1, 2, 1, 1, 1, 0]);
    p.accounts = lab.profile_accounts();
    let profile = d.path().join("line.toml");
    std::fs::write(&profile, drivesec_iec62443::profile::to_toml(&p, "bench")).unwrap();
    let admin = lab.admin();
    drivesec_ops::provision::apply(&admin, &p).unwrap();
    // The inventory: the lab's, with the profile.
    let m = &lab.m;
    let mut inv = m
        .inventory(&lab.dir, &|dev| {
            (dev == "drive-001").then(|| "drive".to_string())
        })
        .unwrap();
    inv.devices[0].profile = Some(profile.clone());
    // A revoked client certificate, with the CRL on the device.
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (rc, rk, serial) = issue_client_files(&mut oem, d.path(), Some("viewer"), None);
    let crl = oem.revoke(&serial, "key-compromise").unwrap();
    admin
        .ok(
            "PUT",
            "/api/v1/security/crl",
            Some(&json!({"crl_pem": std::fs::read_to_string(&crl).unwrap()})),
        )
        .unwrap();
    inv.validator.revoked_cert = Some(rc);
    inv.validator.revoked_key = Some(rk);
    inv.trust.crl = Some(crl);
    let inventory = d.path().join("inventory.toml");
    write_inventory(&inventory, &inv);
    // The inventory matches its published schema.
    let schema: Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/inventory.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let as_json: Value = toml::from_str(&std::fs::read_to_string(&inventory).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&as_json)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let fw = m.firmware.as_ref().unwrap();
    let out = d.path().join("evidence");
    let store = format!("sqlite:{}", d.path().join("fleet.db").display());
    let validate = || {
        let (code, stdout, err) = drivesec(&[
            "--json",
            "validate",
            "--plan",
            s(&plan),
            "--inventory",
            s(&inventory),
            "--out",
            s(&out),
            "--sign-keystore",
            s(&fw.oem_keystore),
            "--sign-key",
            "approval",
            "--store",
            &store,
        ]);
        let doc: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{err}"));
        let failed: Vec<String> = doc["devices"][0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["verdict"] == "fail")
            .map(|c| {
                format!(
                    "{} {}: {}",
                    c["requirement"].as_str().unwrap(),
                    c["id"].as_str().unwrap(),
                    c["detail"].as_str().unwrap()
                )
            })
            .collect();
        (code, failed)
    };
    let (code, failed) = validate();
    assert_eq!(
        (code, failed.clone()),
        (0, vec![]),
        "a correct device must pass: {failed:#?}"
    );
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out.join("evidence.json")).unwrap()).unwrap();
    let not_passed: Vec<&Value> = doc["evidence"]["devices"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] != "pass")
        .collect();
    assert!(
        not_passed.is_empty(),
        "every check runs on the bench: {not_passed:#?}"
    );

    // Four faults.
    let mut loose = p.clone();
    loose.allow_tls12 = true;
    drivesec_ops::provision::apply(&admin, &loose).unwrap();
    std::fs::write(
        lab.device_dir().join("factory-credential.hash"),
        "left behind",
    )
    .unwrap();
    admin
        .ok("POST", "/api/v1/users", Some(&json!({"username": "stray", "role": "security-admin", "password": "Xylophone-42-Blue"})))
        .unwrap();
    let rel = lab_release(&lab, d.path(), "1.1.0", 2, 64 << 10);
    for step in [
        vec!["firmware", "update", "--image", s(&rel)],
        vec!["firmware", "reboot"],
    ] {
        let mut args = vec!["device", "--lab", s(&lab.dir), "--as", "engineer"];
        args.extend(step);
        let (code, _, err) = drivesec(&args);
        assert_eq!(code, 0, "{err}");
    }
    let (code, failed) = validate();
    assert_eq!(code, 2);
    assert_eq!(failed.len(), 4, "{failed:#?}");
    assert!(
        failed[0].starts_with(
            "SR 4.3 tls12-refused: TLS 1.2 accepted where SL-T {1 1 2 1 1 1 0} forbids it"
        ),
        "{failed:#?}"
    );
    assert!(
        failed[1].starts_with("SR 1.5 factory-credential: the factory credential is still present"),
        "{failed:#?}"
    );
    assert!(
        failed[2].starts_with("SR 3.4 firmware: runs 1.1.0"),
        "{failed:#?}"
    );
    assert!(
        failed[3]
            .starts_with("SR 1.3 accounts: account stray (security-admin) is not in the profile"),
        "{failed:#?}"
    );
    // JUnit has them too.
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<failure ").count(), 4, "{junit}");

    // Fix one at a time: one finding fewer each time.
    // (Re-applying the profile would also remove the stray account and the
    // left-over credential, so TLS is fixed last.)
    type Fix<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let fixes: [Fix<'_>; 4] = [
        (
            "factory-credential",
            Box::new(|| {
                std::fs::remove_file(lab.device_dir().join("factory-credential.hash")).unwrap()
            }),
        ),
        (
            "accounts",
            Box::new(|| {
                admin.ok("DELETE", "/api/v1/users/stray", None).unwrap();
            }),
        ),
        (
            "firmware",
            Box::new(|| {
                // The owner approves 1.1.0 for this plant.
                let mut inv = drivesec_ops::inventory::Inventory::load(&inventory).unwrap();
                inv.validator.approved_releases.push(rel.clone());
                write_inventory(&inventory, &inv);
            }),
        ),
        (
            "tls12-refused",
            Box::new(|| {
                drivesec_ops::provision::apply(&admin, &p).unwrap();
            }),
        ),
    ];
    let mut left = 4;
    for (id, fix) in fixes {
        fix();
        left -= 1;
        let (code, failed) = validate();
        assert_eq!(failed.len(), left, "after fixing {id}: {failed:#?}");
        assert!(
            !failed.iter().any(|f| f.contains(&format!(" {id}:"))),
            "{failed:#?}"
        );
        assert_eq!(code, if left == 0 { 0 } else { 2 });
    }

    // The evidence verifies with the OEM key, and not once changed.
    // Every run is in the fleet store; the last one passed, against the
    // profile, with the evidence file's digest.
    let (code, st, err) = drivesec(&["--json", "fleet", "status", "--store", &store]);
    assert_eq!(code, 0, "{err}");
    let st: Value = serde_json::from_str(&st).unwrap();
    let last = &st["last_validation"]["drive-001"];
    assert_eq!(last["passed"], true, "{st}");
    assert!(
        last["profile"]
            .as_str()
            .unwrap()
            .starts_with("line.toml sha256:"),
        "{last}"
    );
    let ev_bytes = std::fs::read(out.join("evidence.json")).unwrap();
    assert_eq!(
        last["evidence_sha"].as_str().unwrap(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&ev_bytes)),
        "{last}"
    );
    assert_eq!(st["devices"][0]["zone"], "line", "{st}");
    let key = oem_public_key(&lab);
    let ev = out.join("evidence.json");
    let (code, stdout, err) = drivesec(&["validate", "verify-evidence", s(&ev), "--key", s(&key)]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("signature valid; 1 device(s), 0 finding(s)"),
        "{stdout}"
    );
    let original: Value = serde_json::from_slice(&std::fs::read(&ev).unwrap()).unwrap();
    let tampered = d.path().join("tampered.json");
    for edit in [
        |v: &mut Value| v["evidence"]["summary"]["failures"] = 3.into(),
        |v: &mut Value| v["evidence"]["devices"][0]["checks"][0]["verdict"] = "fail".into(),
        |v: &mut Value| v["signature"]["kid"] = "0000000000000000".into(),
        |v: &mut Value| v["signature"]["value"] = "AAAA".into(),
    ] {
        let mut v = original.clone();
        edit(&mut v);
        std::fs::write(&tampered, serde_json::to_vec(&v).unwrap()).unwrap();
        let (code, _, err) = drivesec(&[
            "validate",
            "verify-evidence",
            s(&tampered),
            "--key",
            s(&key),
        ]);
        assert_eq!(code, 2, "tampered evidence accepted");
        assert!(err.contains("evidence:"), "{err}");
    }
}

/// Where SL-T asks for a central audit trail, validation proves delivery:
/// a fresh test record must reach the collector (a real rsyslog); with
/// the collector gone, the check fails and says so.
#[test]
fn audit_forwarding_is_checked_end_to_end() {
    let lab = test_lab(Some(config()));
    let collector = Collector::start(&lab);
    lab.admin()
        .ok(
            "PUT",
            "/api/v1/audit/forwarding",
            Some(&collector.forwarding(&lab)),
        )
        .unwrap();
    // TRE 2: forwarding required.
    let plan = PLAN.replace("[1, 1, 2, 1, 1, 1, 0]", "[1, 1, 1, 1, 1, 2, 0]");
    let l = drivesec_iec62443::model::parse(Path::new("plan.toml"), &plan).unwrap();
    let inv = lab
        .m
        .inventory(&lab.dir, &|d| {
            (d == "drive-001").then(|| "drive".to_string())
        })
        .unwrap();
    let (ctx, targets) = drivesec_ops::validate::prepare(&l.model, &inv).unwrap();
    let check = || {
        let r = drivesec_ops::validate::validate_device(&ctx, &targets[0]);
        let c = r
            .checks
            .iter()
            .find(|c| c.id == "audit-forwarding")
            .unwrap()
            .clone();
        (c.verdict, c.detail)
    };
    let (verdict, detail) = check();
    assert_eq!(verdict, drivesec_ops::validate::Verdict::Pass, "{detail}");
    assert!(detail.contains("reached the collector"), "{detail}");
    // The test record is at the collector, by its sequence number.
    let seq: u64 = detail.split_whitespace().nth(2).unwrap().parse().unwrap();
    let log = std::fs::read_to_string(collector.rx.join("received.log")).unwrap();
    assert!(log.contains(&format!("seq=\"{seq}\"")), "{log}");
    collector.stop();
    let (verdict, detail) = check();
    assert_eq!(verdict, drivesec_ops::validate::Verdict::Fail, "{detail}");
    assert!(detail.contains("not delivered"), "{detail}");
}
