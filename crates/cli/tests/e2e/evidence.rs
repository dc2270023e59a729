//! Signed evidence: bound to the devices' certificates, the plan, the
//! inventory and its age; signed evidence that records failed checks does
//! not pass; the re-certification bundle is signed and tamper-evident.

use std::path::Path;

use crate::support::{
    ONE_ZONE_PLAN as PLAN, config, drivesec, evidence_public_key, lab_keystore, mode,
    oem_public_key, pki_lab, s, set_mode, test_lab, write_inventory,
};
use serde_json::Value;

/// A validly signed evidence document whose validation failed: not a pass.
/// `verify-evidence` exits 2 saying the evidence is authentic and records
/// the failed checks, unless `--accept-findings`; evidence without findings
/// exits 0.
#[test]
fn signed_evidence_with_findings_does_not_pass() {
    use drivesec_ops::validate::{Check, DeviceResult, Verdict};
    let (t, m) = pki_lab();
    let e = m.evidence.as_ref().unwrap();
    let store = lab_keystore(&e.keystore);
    let handle = drivesec_keystore::KeyHandle::new(e.key.clone()).unwrap();
    let result = |verdicts: &[Verdict]| DeviceResult {
        device: "drive-001".into(),
        asset: "drive".into(),
        zone: "line".into(),
        sl_t: "1".into(),
        serial_number: Some("SN-1".into()),
        certificate_sha256: None,
        sl_a: None,
        checks: verdicts
            .iter()
            .enumerate()
            .map(|(i, v)| Check {
                id: format!("check-{i}"),
                requirement: "SR 1.1".into(),
                verdict: *v,
                detail: "seen".into(),
            })
            .collect(),
        seconds: 0.1,
    };
    let write = |name: &str, verdicts: &[Verdict]| {
        let doc = drivesec_ops::evidence::document("plant", "00", &[result(verdicts)]);
        let signed = drivesec_ops::evidence::sign(doc, &*store, &handle).unwrap();
        let path = t.path().join(name);
        std::fs::write(&path, serde_json::to_vec(&signed).unwrap()).unwrap();
        path
    };
    let failed = write(
        "failed.json",
        &[Verdict::Pass, Verdict::Fail, Verdict::Fail],
    );
    let passed = write("passed.json", &[Verdict::Pass, Verdict::Skipped]);
    let verify = |file: &Path, extra: &[&str]| {
        let mut args = vec!["validate", "verify-evidence", s(file), "--key"];
        args.push(s(&e.public_key));
        args.extend_from_slice(extra);
        drivesec(&args)
    };
    let (code, out, err) = verify(&failed, &[]);
    assert_eq!(code, 2, "evidence of a failed validation passed: {out}");
    assert!(
        err.contains("the evidence is authentic, and it records 2 failed check(s)"),
        "{err}"
    );
    let (code, out, err) = verify(&failed, &["--accept-findings"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("records 2 failed check(s)"), "{err}");
    let (code, out, err) = verify(&passed, &[]);
    assert_eq!(code, 0, "{out}{err}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// Evidence names each device by the serial number and SHA-256 of the
/// certificate it presented (not what it says about itself) and carries the
/// plan's digest; the lab signs it with a key of its own, not the firmware
/// approval key. `verify-evidence --plan --inventory --max-age` checks all
/// three and names each difference; a lab without an evidence key, or an
/// `--out` that is not the tool's own directory, stops before any device
/// is contacted and changes nothing.
#[test]
fn evidence_is_bound_to_certificates_plan_inventory_and_age() {
    let lab = test_lab(Some(config()));
    let d = tempfile::tempdir().unwrap();
    let plan = d.path().join("plan.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let out = d.path().join("evidence");
    let validate = |out: &Path| {
        drivesec(&[
            "validate",
            "--plan",
            s(&plan),
            "--lab",
            s(&lab.dir),
            "--out",
            s(out),
        ])
    };

    // --out naming someone's directory, or a symlink to one: refused, untouched.
    let theirs = d.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("keep.txt"), "mine").unwrap();
    set_mode(&theirs, 0o755);
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&theirs, &link).unwrap();
    for (dir, why) in [
        (&theirs, "is an existing directory the tool did not make"),
        (&link, "is a symbolic link"),
    ] {
        let (code, _, err) = validate(dir);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!("--out {}: {why}", dir.display())),
            "{err}"
        );
        assert_eq!(mode(&theirs), 0o755);
        assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 1);
        assert_eq!(
            std::fs::read_to_string(theirs.join("keep.txt")).unwrap(),
            "mine"
        );
    }

    // A lab from before labs had an evidence key: no signing with another key.
    let manifest = lab.dir.join("lab.json");
    let original = std::fs::read(&manifest).unwrap();
    let mut old: Value = serde_json::from_slice(&original).unwrap();
    old.as_object_mut().unwrap().remove("evidence");
    std::fs::write(&manifest, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    let (code, _, err) = validate(&out);
    std::fs::write(&manifest, &original).unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("this lab has no evidence key"), "{err}");
    assert!(!out.exists());

    // The lab's evidence key is not the firmware approval key.
    let ek = lab
        .m
        .evidence
        .as_ref()
        .expect("lab.json names the evidence key");
    let approval = oem_public_key(&lab);
    assert_ne!(
        std::fs::read(&ek.public_key).unwrap(),
        std::fs::read(&approval).unwrap()
    );

    let (code, stdout, err) = validate(&out);
    assert_eq!(code, 0, "{stdout}{err}");
    let ev = out.join("evidence.json");
    let signed: Value = serde_json::from_slice(&std::fs::read(&ev).unwrap()).unwrap();
    let doc = &signed["evidence"];
    assert_eq!(doc["plan_sha256"], sha256_hex(PLAN.as_bytes()));
    let dev = &doc["devices"][0];
    assert_eq!(dev["device"], "drive-001");
    assert_eq!(
        dev["serial_number"],
        lab.m.devices[0].serial_number.as_str()
    );
    let ldevid = drivesec_pki::read_cert_chain(&lab.device_dir().join("ldevid.crt")).unwrap();
    assert_eq!(dev["certificate_sha256"], sha256_hex(ldevid[0].as_ref()));
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains(lab.m.devices[0].serial_number.as_str()));

    // Signed with the evidence key: the approval key does not verify it.
    let (code, _, err) = drivesec(&["validate", "verify-evidence", s(&ev), "--key", s(&approval)]);
    assert_eq!(code, 2);
    assert!(err.contains("signed with another key"), "{err}");

    let inv = lab
        .m
        .inventory(&lab.dir, &|dev| {
            (dev == "drive-001").then(|| "drive".to_string())
        })
        .unwrap();
    let inventory = d.path().join("inventory.toml");
    write_inventory(&inventory, &inv);
    let verify = |file: &Path, plan: &Path, inventory: &Path, age: &str| {
        drivesec(&[
            "validate",
            "verify-evidence",
            s(file),
            "--lab",
            s(&lab.dir),
            "--plan",
            s(plan),
            "--inventory",
            s(inventory),
            "--max-age",
            age,
            // The lab's validation may record findings; this test is
            // about the bindings.
            "--accept-findings",
        ])
    };
    let (code, stdout, err) = verify(&ev, &plan, &inventory, "1h");
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("matches the plan, inventory, max-age"),
        "{stdout}"
    );

    // Another plan (one byte more).
    let plan2 = d.path().join("plan2.toml");
    std::fs::write(&plan2, format!("{PLAN}\n")).unwrap();
    let (code, stdout, err) = verify(&ev, &plan2, &inventory, "1h");
    assert_eq!(code, 2);
    assert!(
        stdout.contains(&format!(
            "MISMATCH plan: the evidence is for a plan with SHA-256 {}, the plan given has {}",
            sha256_hex(PLAN.as_bytes()),
            sha256_hex(format!("{PLAN}\n").as_bytes())
        )),
        "{stdout}"
    );
    assert!(err.contains("1 mismatch(es)"), "{err}");

    // An inventory whose serial differs, and a device the evidence lacks.
    let mut other = inv.clone();
    other.devices[0].serial = Some("DS-RELABELLED".into());
    let mut missing = other.devices[0].clone();
    missing.name = "drive-404".into();
    other.devices.push(missing);
    let inventory2 = d.path().join("inventory2.toml");
    write_inventory(&inventory2, &other);
    let (code, stdout, _) = verify(&ev, &plan, &inventory2, "1h");
    assert_eq!(code, 2);
    assert!(
        stdout.contains(&format!(
            "MISMATCH device drive-001: serial {} in its certificate, the inventory says DS-RELABELLED",
            lab.m.devices[0].serial_number
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("MISMATCH device drive-404: in the inventory, not in the evidence"),
        "{stdout}"
    );

    // An inventory that pins the device's certificate: another fingerprint
    // is a mismatch, the right one (colons and case as people write them)
    // passes, and a malformed one is refused naming the device.
    let pinned = |fp: &str, name: &str| {
        let mut inv = inv.clone();
        inv.devices[0].certificate_sha256 = Some(fp.into());
        let f = d.path().join(name);
        write_inventory(&f, &inv);
        f
    };
    let (code, stdout, _) = verify(&ev, &plan, &pinned(&"ab".repeat(32), "pin-bad.toml"), "1h");
    assert_eq!(code, 2);
    assert!(
        stdout.contains("MISMATCH device drive-001: certificate SHA-256"),
        "{stdout}"
    );
    let right = sha256_hex(ldevid[0].as_ref()).to_uppercase();
    let right: Vec<String> = right
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let (code, stdout, err) = verify(&ev, &plan, &pinned(&right.join(":"), "pin-ok.toml"), "1h");
    assert_eq!(code, 0, "{stdout}{err}");
    let (code, _, err) = verify(&ev, &plan, &pinned("abc", "pin-malformed.toml"), "1h");
    assert_eq!(code, 2);
    assert!(
        err.contains("device drive-001: certificate_sha256 'abc' is not a SHA-256"),
        "{err}"
    );

    // Evidence from 2020, signed with the same key: too old for 90 days.
    let mut aged = doc.clone();
    aged["generated_at"] = "2020-01-01T00:00:00Z".into();
    let store = lab_keystore(&ek.keystore);
    let resigned = drivesec_ops::evidence::sign(
        aged,
        store.as_ref(),
        &drivesec_keystore::KeyHandle::new(&ek.key).unwrap(),
    )
    .unwrap();
    let old_ev = d.path().join("old.json");
    std::fs::write(&old_ev, serde_json::to_vec(&resigned).unwrap()).unwrap();
    let (code, stdout, _) = verify(&old_ev, &plan, &inventory, "90d");
    assert_eq!(code, 2);
    assert!(
        stdout.contains("MISMATCH age: generated at 2020-01-01T00:00:00Z,")
            && stdout.contains("older than the maximum age of 90 d"),
        "{stdout}"
    );

    // A --max-age that is no duration: named, nothing verified.
    let (code, stdout, err) = verify(&ev, &plan, &inventory, "soon");
    assert_eq!(code, 2);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(err.contains("--max-age 'soon'"), "{err}");
}

/// The re-certification bundle: plan, assessment with live SL-A, validation
/// and access review in one signed file; any change breaks the signature.
#[test]
fn evidence_bundle_is_signed_and_tamper_evident() {
    let lab = test_lab(Some(config()));
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
    let key = evidence_public_key(&lab);
    let approval = oem_public_key(&lab);
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
    let inv = lab
        .m
        .inventory(&lab.dir, &|dev| l.model.asset_of_device(dev))
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

/// A bundle over an inventory without trust.crl stops before any device is
/// contacted, naming trust.crl and --insecure-no-crl (as the fleet
/// commands do); with --insecure-no-crl (and --parallel) it goes on,
/// warning, and the bundle is written.
#[test]
fn evidence_bundle_without_a_crl_stops_unless_insecure_no_crl() {
    let lab = test_lab(Some(config()));
    let d = tempfile::tempdir().unwrap();
    let plan = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/packaging-line.toml");
    let l = drivesec_iec62443::model::load(&plan).unwrap();
    let mut inv = lab
        .m
        .inventory(&lab.dir, &|dev| l.model.asset_of_device(dev))
        .unwrap();
    inv.trust.crl = None;
    let inventory = d.path().join("no-crl.toml");
    write_inventory(&inventory, &inv);
    let out = d.path().join("bundle.json");
    let ks = lab.m.firmware.as_ref().unwrap().oem_keystore.clone();
    let bundle = |extra: &[&str]| {
        let mut args = vec![
            "evidence",
            "bundle",
            "--plan",
            s(&plan),
            "--inventory",
            s(&inventory),
            "--sign-keystore",
            s(&ks),
            "--sign-key",
            "approval",
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        drivesec(&args)
    };
    let (code, stdout, err) = bundle(&[]);
    assert_eq!(code, 2, "{stdout}{err}");
    assert!(
        err.contains("trust.crl") && err.contains("--insecure-no-crl"),
        "{err}"
    );
    // Stopped before any device: none was asked for its posture.
    assert!(!err.contains("FAILED"), "{err}");
    assert!(!out.exists());
    let (code, stdout, err) = bundle(&["--insecure-no-crl", "--parallel", "1"]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(err.contains("warning: no CRL is configured"), "{err}");
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        v["evidence"]["contents"]["audit_review"][0]["trail_intact"],
        true
    );
}
