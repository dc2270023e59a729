//! Attestation: bound to the nonce sent, to the device asked and to the
//! approved release; and the attacks on it. An answer counts only for the
//! connection it came over: relayed from a second genuine drive, relayed by
//! a man in the middle that holds a genuine device certificate of its own,
//! replayed for an old nonce, or carrying a certificate other than the one
//! the connection authenticated, each is refused.

use std::sync::{Arc, Mutex};

use crate::support::{
    TestLab, config, fake_server_config, read_body, read_head, spawn_server, test_lab, test_lab_n,
    write_json,
};
use base64::Engine;
use drivesec_api::firmware::AttestAnswer;
use drivesec_client::attest::{Answer, attest, request, verify_attestation};
use drivesec_client::client::{DeviceClient, DeviceTrust, Revocation, Versions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde_json::{Value, json};
use sha2::Digest;

const ON_THIS_CONNECTION: &str = "not the one the device presented on this connection";

fn roots(lab: &TestLab) -> Vec<CertificateDer<'static>> {
    drivesec_pki::read_cert_chain(&lab.m.oem_ca).unwrap()
}

fn crls(lab: &TestLab) -> Vec<CertificateRevocationListDer<'static>> {
    match Revocation::from_file(&lab.m.crl).unwrap().0 {
        Revocation::Crls(c) => c,
        other => panic!("{other:?}"),
    }
}

fn name(lab: &TestLab, i: usize) -> String {
    lab.m.devices[i].device_name.clone().unwrap()
}

/// Drive `i`, logged in as the lab's viewer.
fn viewer(lab: &TestLab, i: usize) -> DeviceClient {
    lab.m.session(&lab.m.devices[i], "viewer").unwrap()
}

/// Drive `i`'s attestation answer for `nonce` (what a relaying party gets
/// by passing the tool's nonce on).
fn answer_of(c: &DeviceClient, nonce: &str) -> AttestAnswer {
    let v = c
        .ok("POST", "/api/v1/attest", Some(&json!({ "nonce": nonce })))
        .unwrap();
    serde_json::from_value(v).unwrap()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn statement(body: &AttestAnswer) -> Value {
    serde_json::from_slice(&b64(&body.statement)).unwrap()
}

/// A certificate the owner's OEM CA issued with the LDevID profile for
/// `serial` and `device_name`, and its key, which the test holds: a valid
/// device identity that is not the drive's (chain, key PEM).
fn genuine_other_identity(
    lab: &TestLab,
    serial: &str,
    device_name: &str,
) -> (Vec<CertificateDer<'static>>, String) {
    let (chain_pem, key_pem) = lab
        .m
        .issue_stand_in_device(serial, device_name, &[])
        .unwrap();
    let chain =
        drivesec_pki::read_certs_pem(std::path::Path::new("chain"), chain_pem.as_bytes()).unwrap();
    (chain, key_pem.to_string())
}

fn pem_of(chain: &[CertificateDer<'_>]) -> String {
    chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect()
}

/// An attestation answer body: `statement` signed with `key_pem` (P-256,
/// PKCS#8), carrying `chain`.
fn signed(statement: &Value, key_pem: &str, chain: &[CertificateDer<'_>]) -> AttestAnswer {
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::DecodePrivateKey;
    let bytes = serde_json::to_vec(statement).unwrap();
    let k = p256::ecdsa::SigningKey::from_pkcs8_pem(key_pem).unwrap();
    let sig: p256::ecdsa::Signature = k.sign(&bytes);
    let enc = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    AttestAnswer {
        statement: enc(&bytes),
        signature: enc(sig.to_der().as_bytes()),
        certificate_chain: pem_of(chain),
    }
}

/// The tool's connection to drive B carries drive A's answer to the nonce
/// the tool sent B (B passed it on and returned what A signed). A's answer
/// is genuine and fresh, but B's connection authenticated B's certificate:
/// refused, whether or not the tool names the device it expects.
#[test]
fn an_attestation_relayed_from_a_second_genuine_drive_is_refused() {
    let lab = test_lab_n(Some(config()), 2);
    let (roots, crls) = (roots(&lab), crls(&lab));
    let (a, b) = (viewer(&lab, 0), viewer(&lab, 1));
    // Each drive's own attestation is accepted over its own connection.
    let own = attest(&b, &roots, &crls, Some(&name(&lab, 1)), None).unwrap();
    assert_eq!(own.serial_number, lab.m.devices[1].serial_number);
    let own_a = attest(&a, &roots, &crls, Some(&name(&lab, 0)), None).unwrap();
    assert_eq!(own_a.serial_number, lab.m.devices[0].serial_number);

    // The tool asks B; B relays A's answer to the same nonce.
    let over_b = request(&b).unwrap();
    let relayed = Answer {
        body: answer_of(&a, &over_b.nonce),
        ..over_b.clone()
    };
    assert_eq!(statement(&relayed.body)["nonce"], over_b.nonce.as_str());
    for expected in [None, Some(name(&lab, 1))] {
        let e = verify_attestation(&relayed, &roots, &crls, expected.as_deref(), None)
            .expect_err("a relayed attestation counted");
        assert!(e.to_string().contains(ON_THIS_CONNECTION), "{e}");
    }
}

/// A man in the middle that is itself a valid device: it holds a genuine
/// LDevID from the owner's CA for the DNS name the tool asks for (another
/// serial, as a replacement unit would), so the tool's handshake accepts it
/// when no serial is pinned (`drivesec device --api ADDR --name NAME`
/// without `--serial`). It passes the tool's nonce to the genuine drive and
/// returns the drive's answer unchanged. Refused; the same answer checked
/// against the drive's own connection would have counted.
#[test]
fn a_genuine_device_in_the_middle_cannot_relay_the_drives_attestation() {
    let lab = test_lab_n(Some(config()), 2);
    let (roots, crls) = (roots(&lab), crls(&lab));
    let drive = name(&lab, 0);
    let (chain, key) = genuine_other_identity(&lab, "SN-MIDDLE-1", &drive);
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let cfg = fake_server_config(chain, key);
    let upstream = Arc::new(Mutex::new(viewer(&lab, 0)));
    let relayed: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = relayed.clone();
    let addr = spawn_server(move |tcp| {
        let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while let Some(head) = read_head(&mut tls) {
            let Some(body) = read_body(&mut tls, &head) else {
                return;
            };
            let answer = if head.starts_with("POST /api/v1/attest ") {
                let req: Value = serde_json::from_slice(&body).unwrap();
                let got = upstream
                    .lock()
                    .unwrap()
                    .ok("POST", "/api/v1/attest", Some(&req))
                    .unwrap();
                seen.lock().unwrap().push(got.clone());
                got
            } else {
                json!({})
            };
            if !write_json(&mut tls, "200 OK", &answer) {
                return;
            }
        }
    });
    let tool = DeviceClient::new(
        addr,
        Some(&lab.identity("viewer")),
        &DeviceTrust::owned(
            roots.clone(),
            drive.clone(),
            None,
            Revocation::from_file(&lab.m.crl).unwrap().0,
        ),
        Versions::Default,
    )
    .unwrap();

    let e = attest(&tool, &roots, &crls, Some(&drive), None)
        .expect_err("a relayed attestation counted");
    assert!(e.to_string().contains(ON_THIS_CONNECTION), "{e}");
    // The answer was the drive's, fresh: it relayed.
    assert_eq!(relayed.lock().unwrap().len(), 1);

    let answer = request(&tool).unwrap();
    assert_eq!(relayed.lock().unwrap().len(), 2);
    assert_eq!(
        serde_json::to_value(&answer.body).unwrap(),
        relayed.lock().unwrap()[1]
    );
    assert_eq!(
        statement(&answer.body)["serial_number"],
        lab.m.devices[0].serial_number.as_str()
    );
    let e = verify_attestation(&answer, &roots, &crls, Some(&drive), None).unwrap_err();
    assert!(e.to_string().contains(ON_THIS_CONNECTION), "{e}");
    // Over the drive's own connection this very answer counts.
    let drive_peer = viewer(&lab, 0)
        .ok_reply("GET", "/api/v1/info", None)
        .unwrap()
        .peer;
    let direct = Answer {
        peer: drive_peer,
        ..answer
    };
    let r = verify_attestation(&direct, &roots, &crls, Some(&drive), None).unwrap();
    assert_eq!(r.serial_number, lab.m.devices[0].serial_number);
}

/// An answer recorded for an earlier nonce, returned for a new request on
/// the drive's own connection, is refused; every request has a nonce of
/// its own, and the drive's statement echoes it.
#[test]
fn a_replayed_attestation_for_an_old_nonce_is_refused() {
    let lab = test_lab(Some(config()));
    let (roots, crls) = (roots(&lab), crls(&lab));
    let drive = name(&lab, 0);
    let a = viewer(&lab, 0);
    let old = request(&a).unwrap();
    verify_attestation(&old, &roots, &crls, Some(&drive), None).unwrap();
    let fresh = request(&a).unwrap();
    assert_ne!(fresh.nonce, old.nonce);
    assert_eq!(fresh.nonce.len(), 64);
    assert_eq!(statement(&fresh.body)["nonce"], fresh.nonce.as_str());
    verify_attestation(&fresh, &roots, &crls, Some(&drive), None).unwrap();

    let replayed = Answer {
        body: old.body.clone(),
        ..fresh
    };
    let e = verify_attestation(&replayed, &roots, &crls, Some(&drive), None)
        .expect_err("a replayed attestation counted");
    assert!(e.to_string().contains("replayed"), "{e}");
}

/// On the drive's own connection, an answer that carries another genuine
/// device certificate (the owner's CA issued it for the drive's own serial
/// and name; its holder signs a statement saying everything the tool
/// expects, for the nonce sent) is refused: the signature is checked with
/// the key of the certificate the connection authenticated, never with one
/// the answer brings. Carrying the drive's own certificate instead does
/// not help the forger either.
#[test]
fn an_answer_carrying_a_different_certificate_is_refused() {
    let lab = test_lab(Some(config()));
    let (roots, crls) = (roots(&lab), crls(&lab));
    let drive = name(&lab, 0);
    let serial = lab.m.devices[0].serial_number.clone();
    let a = viewer(&lab, 0);
    let genuine = request(&a).unwrap();
    verify_attestation(&genuine, &roots, &crls, Some(&drive), None).unwrap();

    let (chain, key_pem) = genuine_other_identity(&lab, &serial, &drive);
    let summary = drivesec_pki::inspect::summarize(&chain[0]).unwrap();
    let mut st = statement(&genuine.body);
    st["certificate"] = json!({
        "sha256": hex::encode(sha2::Sha256::digest(chain[0].as_ref())),
        "serial": summary.serial,
    });
    let forged = Answer {
        body: signed(&st, &key_pem, &chain),
        ..genuine.clone()
    };
    let e = verify_attestation(&forged, &roots, &crls, Some(&drive), None)
        .expect_err("an answer with another certificate counted");
    assert!(e.to_string().contains(ON_THIS_CONNECTION), "{e}");

    let mut carrying_the_drives = forged.clone();
    carrying_the_drives.body.certificate_chain = pem_of(&genuine.peer);
    let e = verify_attestation(&carrying_the_drives, &roots, &crls, Some(&drive), None)
        .expect_err("a forged signature counted");
    assert!(e.to_string().contains("does not verify"), "{e}");
}

/// Signed with the key of the very certificate the connection
/// authenticated is not enough: the statement must also name that
/// certificate (SHA-256 and serial) and the serial number in its subject.
/// A holder of that key (here the test, with an identity the owner's CA
/// issued) cannot pass a statement about another certificate or serial.
#[test]
fn the_statement_must_name_the_connections_certificate_and_serial() {
    let lab = test_lab(Some(config()));
    let (roots, crls) = (roots(&lab), crls(&lab));
    let drive = name(&lab, 0);
    let a = viewer(&lab, 0);
    let genuine = request(&a).unwrap();
    let (chain, key_pem) = genuine_other_identity(&lab, "SN-OTHER-7", &drive);
    let summary = drivesec_pki::inspect::summarize(&chain[0]).unwrap();
    let mut st = statement(&genuine.body);
    st["serial_number"] = json!("SN-OTHER-7");
    st["certificate"] = json!({
        "sha256": hex::encode(sha2::Sha256::digest(chain[0].as_ref())),
        "serial": summary.serial,
    });
    // The connection authenticated `chain`: a consistent statement counts.
    let over = |st: &Value| Answer {
        body: signed(st, &key_pem, &chain),
        nonce: genuine.nonce.clone(),
        peer: chain.clone().into(),
    };
    let r = verify_attestation(&over(&st), &roots, &crls, Some(&drive), None).unwrap();
    assert_eq!(r.serial_number, "SN-OTHER-7");
    assert_eq!(r.certificate_serial, summary.serial);

    let mut other_serial = st.clone();
    other_serial["serial_number"] = json!(lab.m.devices[0].serial_number);
    let e = verify_attestation(&over(&other_serial), &roots, &crls, Some(&drive), None)
        .expect_err("a statement naming another serial counted");
    assert!(e.to_string().contains("names serial number"), "{e}");

    let drive_leaf = &genuine.peer[0];
    let mut other_certificate = st.clone();
    other_certificate["certificate"] = json!({
        "sha256": hex::encode(sha2::Sha256::digest(drive_leaf.as_ref())),
        "serial": drivesec_pki::inspect::summarize(drive_leaf).unwrap().serial,
    });
    let e = verify_attestation(&over(&other_certificate), &roots, &crls, Some(&drive), None)
        .expect_err("a statement naming another certificate counted");
    assert!(e.to_string().contains("names certificate"), "{e}");

    let mut unnamed = st.clone();
    unnamed.as_object_mut().unwrap().remove("certificate");
    let e = verify_attestation(&over(&unnamed), &roots, &crls, Some(&drive), None)
        .expect_err("a statement naming no certificate counted");
    assert!(e.to_string().contains("missing field `certificate`"), "{e}");

    // A v1 statement (no certificate named) from an older drivesecd.
    let mut v1 = st.clone();
    v1["kind"] = json!("drivesec-attestation/v1");
    let e = verify_attestation(&over(&v1), &roots, &crls, Some(&drive), None)
        .expect_err("a v1 statement counted");
    assert!(e.to_string().contains("predates"), "{e}");
}

/// Attestation is bound to the nonce sent, to the device asked (its
/// certificate and statement name it) and, when given, to the approved
/// release (root, version, counter and signers).
#[test]
fn attestation_is_bound_to_nonce_device_and_release() {
    let lab = test_lab(Some(config()));
    let fw = lab.m.firmware.clone().unwrap();
    let roots = drivesec_pki::read_cert_chain(&lab.m.oem_ca).unwrap();
    let name = lab.m.devices[0].device_name.clone().unwrap();
    let factory = {
        let mut f = std::fs::File::open(&fw.factory_image).unwrap();
        drivesec_firmware::image::Header::read(&mut f).unwrap()
    };
    let viewer = lab.session("viewer");
    let nonce = "0123456789abcdef0123456789abcdef";
    let reply = viewer
        .ok_reply("POST", "/api/v1/attest", Some(&json!({"nonce": nonce})))
        .unwrap();
    let resp = reply.body.clone();
    let verify = |resp: &Value, nonce: &str, name: Option<&str>, h| {
        let answer = drivesec_client::attest::Answer {
            body: serde_json::from_value(resp.clone()).unwrap(),
            nonce: nonce.into(),
            peer: reply.peer.clone(),
        };
        drivesec_client::attest::verify_attestation(&answer, &roots, &[], name, h)
    };
    let r = verify(&resp, nonce, Some(&name), Some(&factory)).unwrap();
    assert_eq!(r.version, "1.0.0");
    assert_eq!(r.matches_approved, Some(true));
    // Another nonce: a replayed answer.
    let e = verify(&resp, "ffffffffffffffffffffffffffffffff", Some(&name), None).unwrap_err();
    assert!(e.to_string().contains("replayed"), "{e}");
    // Another device's name: a relayed answer.
    let e = verify(&resp, nonce, Some("other.plant.example"), None).unwrap_err();
    assert!(e.to_string().contains("not for other.plant.example"), "{e}");
    // A release with another counter does not match.
    let mut other = factory.clone();
    other.manifest.security_counter += 1;
    let r = verify(&resp, nonce, Some(&name), Some(&other)).unwrap();
    assert_eq!(r.matches_approved, Some(false));
    // A changed statement breaks the signature.
    let mut forged = resp.clone();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    };
    let mut st: Value = serde_json::from_slice(&b64(resp["statement"].as_str().unwrap())).unwrap();
    st["firmware"]["version"] = json!("9.9.9");
    let encoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&st).unwrap())
    };
    forged["statement"] = json!(encoded);
    let e = verify(&forged, nonce, Some(&name), None).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
    // Bad nonces are refused by the device.
    for bad in ["zz", "00", &"ab".repeat(65)] {
        let r = viewer
            .call("POST", "/api/v1/attest", Some(&json!({"nonce": bad})))
            .unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
}
