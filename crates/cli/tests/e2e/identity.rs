//! How the tool recognises a commissioned device (issue 16, items 1 and
//! 3): fake devices on loopback holding certificates of the lab's own CAs
//! (revoked, of another profile, of another serial). Nothing is sent to a
//! device that did not prove to be the expected one; a revoked LDevID and
//! its attestations are refused; `--serial` and validation take the serial
//! from the certificate, not from what the device says.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::support::fake_device::{
    Answer, FakeDevice, answers_everything, contains, factory_state_answers,
};
use crate::support::{
    TestLab, config, drivesec, fleet_scan, issue_certificate, lab_pointing_at, ldevid, pki_lab,
    pki_lab_and_device, s, sa_cert_args, store_url, test_lab,
};
use drivesec_pki::Profile;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

/// A fake device serving `chain` and `key` that answers like a logged-in
/// device, and a copy of the lab (in `dir`) whose first device is the fake.
fn impostor(
    lab: &TestLab,
    dir: &Path,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> (FakeDevice, PathBuf) {
    let fake = FakeDevice::start(chain, key, answers_everything());
    let fake_lab = lab_pointing_at(&lab.m, dir, fake.addr, &[]);
    (fake, fake_lab)
}

/// `drivesec device --lab LAB users list`.
fn users_list(lab: &Path) -> (i32, String, String) {
    drivesec(&["device", "--lab", s(lab), "users", "list"])
}

/// `drivesec fleet scan` of the lab in `lab` into a store in `dir`.
fn scan_lab(dir: &Path, lab: &Path) -> (i32, String, String) {
    fleet_scan(false, &store_url(dir), &["--lab", s(lab)])
}

/// The revoked impostor: a fake device serving a certificate the lab's OEM
/// CA issued (server profile, for drive-001.lab.drivesec) and then revoked.
/// `fleet scan` reports it as refused (exit 2), and `device users list`
/// refuses it too; the fake receives no request at all, so neither the
/// security administrator's name nor a password. The genuine device is
/// still scanned. The same certificate unrevoked is refused as not an
/// LDevID, and a genuine LDevID of another serial as another device.
#[test]
fn a_revoked_impostor_device_gets_no_password() {
    let lab = test_lab(Some(config()));
    let t = tempfile::tempdir().unwrap();
    let name = lab.m.devices[0].device_name.clone().unwrap();
    let server = |dns: &str| Profile::Server {
        dns_names: vec![dns.to_string()],
        ip_addresses: vec!["127.0.0.1".parse().unwrap()],
        days: 365,
    };
    let (chain, key, serial) = issue_certificate(&lab.m.oem_ca_dir, server(&name));
    drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
        .unwrap()
        .revoke(&serial, "key-compromise")
        .unwrap();
    let (fake, fake_lab) = impostor(&lab, &t.path().join("fake-lab"), chain, key);

    let (code, out, err) = scan_lab(t.path(), &fake_lab);
    assert_eq!(code, 2, "the revoked impostor was scanned: {out}");
    assert!(
        out.contains("FAILED") && out.contains("revokes") && out.contains(&serial),
        "{out} {err}"
    );
    assert!(err.contains("could not be scanned: drive-001"), "{err}");
    assert!(!out.contains("more days"), "{out}");

    let (code, out, err) = users_list(&fake_lab);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("revokes") && err.contains(&name), "{err}");

    let got = fake.assert_received_nothing();
    for secret in [
        &lab.m.users["security-admin"].password,
        &lab.m.admin.as_ref().unwrap().password,
    ] {
        assert!(!contains(&got, secret));
    }

    // The genuine device passes the same checks (its LDevID, the lab CRL, its serial).
    let (code, out, err) = scan_lab(t.path(), &lab.dir);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("more days"), "{out}");

    // Not revoked, but a server certificate: not the device either.
    let (chain, key, _) = issue_certificate(&lab.m.oem_ca_dir, server(&name));
    let (fake, fake_lab) = impostor(&lab, &t.path().join("fake-lab-2"), chain, key);
    let (code, out, err) = users_list(&fake_lab);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("server-profile certificate"), "{err}");
    assert!(fake.received().is_empty());

    // A genuine LDevID for the name, but of another serial.
    let (chain, key, _) = issue_certificate(&lab.m.oem_ca_dir, ldevid("SN-OTHER", &name));
    let (fake, fake_lab) = impostor(&lab, &t.path().join("fake-lab-3"), chain, key);
    let (code, out, err) = users_list(&fake_lab);
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("serial SN-OTHER")
            && err.contains(&format!(
                "expected serial {}",
                lab.m.devices[0].serial_number
            )),
        "{err}"
    );
    assert!(fake.received().is_empty());
}

/// A device whose own LDevID the owner revoked is refused by the tool, and
/// an attestation that LDevID signed (fetched before the revocation) no
/// longer counts once the CRL says so.
#[test]
fn a_revoked_ldevid_and_its_attestations_are_refused() {
    let lab = test_lab(Some(config()));
    let admin = lab.admin();
    let nonce = "00112233445566778899aabbccddeeff";
    let reply = admin
        .ok_reply("POST", "/api/v1/attest", Some(&json!({ "nonce": nonce })))
        .unwrap();
    let answer = drivesec_client::attest::Answer {
        body: reply.answer().unwrap(),
        nonce: nonce.into(),
        peer: reply.peer,
    };
    let leaf = admin.peer_certificates()[0].clone();
    let serial = drivesec_pki::inspect::summarize(&leaf).unwrap().serial;
    let roots = drivesec_pki::read_cert_chain(&lab.m.oem_ca).unwrap();
    let name = lab.m.devices[0].device_name.clone();
    let crls = |p: &Path| match drivesec_client::client::Revocation::from_file(p).unwrap().0 {
        drivesec_client::client::Revocation::Crls(c) => c,
        other => panic!("{other:?}"),
    };
    // The attestation checked against the owner's CRL as it is now.
    let verify = || {
        drivesec_client::attest::verify_attestation(
            &answer,
            &roots,
            &crls(&lab.m.crl),
            name.as_deref(),
            None,
        )
    };
    verify().unwrap();

    drivesec_pki::Ca::open(&lab.m.oem_ca_dir)
        .unwrap()
        .revoke(&serial, "key-compromise")
        .unwrap();
    let e = verify().unwrap_err();
    assert!(e.to_string().contains("revokes"), "{e}");

    let t = tempfile::tempdir().unwrap();
    let (code, out, _) = scan_lab(t.path(), &lab.dir);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("revokes") && out.contains(&serial), "{out}");
}

/// Validation's identity check reads the serial from the certificate the
/// device presents, not from its `/info`: a device with a genuine LDevID
/// of SN-REAL whose `/info` claims the inventory's SN-CLAIMED fails it,
/// and is not logged in to.
#[test]
fn validation_reads_the_serial_from_the_certificate() {
    let (_t, m, chain, key) = pki_lab_and_device(ldevid("SN-REAL", "press.lab.drivesec"));
    let fake = FakeDevice::start(
        chain,
        key,
        Arc::new(|_: &str, _: &[u8]| {
            Answer::Json(
                200,
                json!({"state": "commissioned", "serial_number": "SN-CLAIMED"}),
            )
        }),
    );
    let id = |role: &str| {
        let f = &m.clients[role];
        drivesec_client::client::ClientIdentity::from_files(&f.cert, &f.key).unwrap()
    };
    let ctx = drivesec_ops::validate::Context {
        roots: drivesec_pki::read_cert_chain(&m.oem_ca).unwrap(),
        crls: vec![drivesec_pki::read_crl(&m.crl).unwrap()],
        admin: id("security-admin"),
        admin_user: "admin".into(),
        admin_password: zeroize::Zeroizing::new("Never-Sent-Passw0rd".into()),
        low_privilege: id("viewer"),
        revoked: None,
        approved: vec![],
        expiry_margin_days: 30,
    };
    let target = drivesec_ops::validate::Target {
        name: "press".into(),
        asset: "press".into(),
        zone: "cell".into(),
        sl_t: [2; 7],
        api: fake.addr,
        modbus: None,
        device_name: "press.lab.drivesec".into(),
        serial: Some("SN-CLAIMED".into()),
        profile: None,
    };
    let r = drivesec_ops::validate::validate_device(&ctx, &target);
    let identity = r.checks.iter().find(|c| c.id == "identity").unwrap();
    assert_eq!(
        identity.verdict,
        drivesec_ops::validate::Verdict::Fail,
        "{identity:?}"
    );
    assert!(identity.detail.contains("SN-REAL"), "{identity:?}");
    let login = r.checks.iter().find(|c| c.id == "login").unwrap();
    assert!(login.detail.contains("serial SN-REAL"), "{login:?}");
    assert!(!contains(&fake.received(), "Never-Sent-Passw0rd"));
}

/// `device --api ... --serial`: the LDevID must name exactly that serial.
/// A genuine LDevID of the owner's CA for another device (SN-10) answering
/// at the address is refused before anything is sent; the same device
/// given as SN-10 is accepted.
#[test]
fn device_api_serial_holds_the_device_to_its_serial() {
    let (_t, m) = pki_lab();
    let (chain, key, _) =
        issue_certificate(&m.oem_ca_dir, ldevid("SN-10", "press-1.plant.example"));
    let fake = FakeDevice::start(chain, key, factory_state_answers());
    let api = fake.addr.to_string();
    let info = |serial: &str| {
        let mut args: Vec<&str> = vec![
            "device",
            "--api",
            &api,
            "--name",
            "press-1.plant.example",
            "--ca",
            s(&m.oem_ca),
            "--crl",
            s(&m.crl),
            "--serial",
            serial,
        ];
        args.extend(sa_cert_args(&m));
        args.push("info");
        drivesec(&args)
    };
    let (code, out, err) = info("SN-1");
    assert_eq!(code, 2, "another device's LDevID was accepted: {out}");
    assert!(
        err.contains("serial SN-10") && err.contains("expected serial SN-1"),
        "{err}"
    );
    assert_eq!(fake.received_text(), "", "the other device got something");
    let (code, _, err) = info("SN-10");
    assert_eq!(code, 0, "{err}");
    assert!(fake.received_text().contains("GET /api/v1/info"));
}
