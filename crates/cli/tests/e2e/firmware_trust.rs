//! Firmware trust rotation on a running device: root-signed statements in
//! version order, a revoked release key's images refused.

use std::process::Command;

use crate::support::{config, lab_keystore, test_lab};
use drivesec_client::client::DeviceClient;
use serde_json::json;

/// Key rotation and revocation on a running device: only a statement signed
/// by the current root applies, in version order; after the vendor's release
/// key is revoked, images it signs are refused (and audited) while the new
/// key's are accepted; the rotated store persists.
#[test]
fn firmware_trust_rotation_revokes_keys_on_the_device() {
    use drivesec_keystore::{KeyAlgorithm, KeyHandle};
    let lab = test_lab(Some(config()));
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let fw = lab.m.firmware.clone().unwrap();
    let vendor = lab_keystore(&fw.vendor_keystore);
    let oem = lab_keystore(&fw.oem_keystore);
    let h = |s: &str| KeyHandle::new(s).unwrap();
    let new_key = vendor
        .generate(&h("release-2"), KeyAlgorithm::EcdsaP256)
        .unwrap()
        .public_key;
    std::fs::write(p("release-2.pub"), new_key.spki_pem()).unwrap();
    let trust: drivesec_firmware::trust::TrustStore =
        serde_json::from_slice(&std::fs::read(&fw.trust).unwrap()).unwrap();
    let old_kid = trust
        .keys
        .iter()
        .find(|k| k.role == "vendor")
        .unwrap()
        .kid
        .clone();
    let drivesec = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_drivesec"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = |s: &str| std::ffi::OsString::from(s);
    // The tool signs the statement with the root key and checks it applies.
    let out = drivesec(&[&o("firmware"), &o("rotate"), fw.trust.as_os_str()]);
    assert!(!out.status.success(), "--trust is a named option");
    let out = drivesec(&[
        &o("firmware"),
        &o("rotate"),
        &o("--trust"),
        fw.trust.as_os_str(),
        &o("--add"),
        &o(&format!("vendor={}", p("release-2.pub").display())),
        &o("--revoke"),
        &o(&old_kid),
        &o("--out"),
        p("rotate-2.cose").as_os_str(),
        &o("--keystore"),
        fw.vendor_keystore.as_os_str(),
        &o("--key"),
        &o("root"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Signed by a key that is not the root: the tool refuses to write it.
    let out = drivesec(&[
        &o("firmware"),
        &o("rotate"),
        &o("--trust"),
        fw.trust.as_os_str(),
        &o("--revoke"),
        &o(&old_kid),
        &o("--out"),
        p("rogue.cose").as_os_str(),
        &o("--keystore"),
        fw.oem_keystore.as_os_str(),
        &o("--key"),
        &o("approval"),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not by the root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!p("rogue.cose").exists());

    let admin = lab.admin();
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let put = |c: &DeviceClient, stmt: &[u8]| {
        c.call(
            "PUT",
            "/api/v1/firmware/trust",
            Some(&json!({"statement": b64(stmt)})),
        )
        .unwrap()
    };
    let trust_path = lab.device_dir().join("firmware-trust.json");
    let on_disk = || std::fs::read(&trust_path).unwrap();
    let before = on_disk();
    // A statement signed by the OEM key, straight to the device: refused.
    let rogue = drivesec_firmware::trust::sign_rotation(
        &drivesec_firmware::trust::Rotation {
            version: 2,
            add: vec![],
            revoke: vec![old_kid.clone()],
            policy: None,
            new_root: None,
        },
        oem.as_ref(),
        &h("approval"),
    )
    .unwrap();
    let r = put(&admin, &rogue);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("not by the root")
    );
    assert_eq!(on_disk(), before);
    // The engineer may update firmware but not change whom it trusts.
    let engineer = lab.session("engineer");
    let stmt = std::fs::read(p("rotate-2.cose")).unwrap();
    assert_eq!(put(&engineer, &stmt).status, 403);
    assert_eq!(on_disk(), before);
    // The root's statement applies.
    let r = put(&admin, &stmt);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["trust"]["version"], 2);
    let stored: drivesec_firmware::trust::TrustStore = serde_json::from_slice(&on_disk()).unwrap();
    assert_eq!(stored.version, 2);
    assert!(stored.keys.iter().any(|k| k.kid == old_kid && k.revoked));
    // Replayed: refused, nothing changes.
    let after = on_disk();
    let r = put(&admin, &stmt);
    assert_eq!(r.status, 400);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("does not follow"),
        "{}",
        r.body
    );
    assert_eq!(on_disk(), after);

    // Images signed with the revoked key are refused; the new key's pass.
    let pack_with = |key: &str, name: &str| -> Vec<u8> {
        use drivesec_firmware::image::{PackOptions, approve, pack};
        std::fs::write(p("fw.bin"), vec![7u8; 100_000]).unwrap();
        pack(
            &p("fw.bin"),
            &p(&format!("{name}.packed")),
            &PackOptions {
                product: "iC7-Sim".into(),
                hw_class: fw.hw_class.clone(),
                version: "2.0.0".into(),
                security_counter: 5,
                chunk_size: 16 * 1024,
                sbom: None,
                build_time: "2026-11-28T00:00:00Z".into(),
            },
            &[
                drivesec_firmware::read_public_key(lab.m.devices[0].firmware_key.as_ref().unwrap())
                    .unwrap(),
            ],
            (vendor.as_ref(), &h(key)),
            "vendor",
            &mut |_| {},
        )
        .unwrap();
        approve(
            &p(&format!("{name}.packed")),
            &p(&format!("{name}.img")),
            (oem.as_ref(), &h("approval")),
            "oem",
        )
        .unwrap();
        std::fs::read(p(&format!("{name}.img"))).unwrap()
    };
    let upload = |bytes: Vec<u8>| {
        engineer
            .call_raw(
                "POST",
                "/api/v1/firmware",
                Some(bytes),
                "application/octet-stream",
            )
            .unwrap()
    };
    let r = upload(pack_with("release", "old-key"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("revoked"),
        "{}",
        r.body
    );
    let r = upload(pack_with("release-2", "new-key"));
    assert_eq!(r.status, 200, "{}", r.body);
    let audit = admin
        .ok("GET", "/api/v1/audit?action=firmware.&limit=1000", None)
        .unwrap();
    let actions: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for want in [
        "firmware.trust-refused",
        "firmware.trust-rotated",
        "firmware.refused",
        "firmware.staged",
    ] {
        assert!(actions.contains(&want), "{want} not in {actions:?}");
    }
}
