//! Changes to a CA from more than one handle at a time, and CSRs whose key
//! the CA does not certify (issue 16).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;

use drivesec_pki::{Ca, CaKind, CaOptions, IssueRequest, PkiError, Profile, SubjectKey};

fn client(name: &str, key: SubjectKey) -> IssueRequest {
    IssueRequest {
        profile: Profile::Client {
            name: name.into(),
            role: None,
            days: 10,
        },
        key,
    }
}

fn csr() -> SubjectKey {
    let (_key, pem) = drivesec_testkit::csr::key_and_csr();
    SubjectKey::CsrPem {
        source: "test.csr".into(),
        pem,
    }
}

fn crl_number(ca: &Path) -> String {
    let issuing = drivesec_pki::read_cert_chain(&ca.join("issuing.crt")).unwrap();
    let crls =
        drivesec_pki::crl::verify_crls(&std::fs::read(ca.join("crl.pem")).unwrap(), &issuing)
            .unwrap();
    crls[0].number.to_string()
}

/// Two handles opened before either changes anything: each change starts
/// from ca.json as it is on disk, not from what the handle read at open,
/// so no record, revocation or CRL number is lost or reused.
#[test]
fn a_stale_handle_does_not_undo_another_handles_changes() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("oem");
    Ca::init(&dir, &CaOptions::new(CaKind::Oem, "OEM")).unwrap();
    let mut a = Ca::open(&dir).unwrap();
    let mut b = Ca::open(&dir).unwrap();
    let one = a.issue(&client("one", csr())).unwrap();
    let two = b.issue(&client("two", csr())).unwrap();
    let mut issued = Ca::open(&dir).unwrap().issued_serials();
    issued.sort();
    let mut want = vec![one.serial.clone(), two.serial.clone()];
    want.sort();
    assert_eq!(issued, want);

    // b revokes what a issued (b opened before a issued it).
    b.revoke(&one.serial, "key-compromise").unwrap();
    a.revoke(&two.serial, "superseded").unwrap();
    let mut revoked = Ca::open(&dir).unwrap().revoked_serials();
    revoked.sort();
    assert_eq!(revoked, want);
    // Revoking again through the other handle is refused as a repeat.
    let err = a.revoke(&one.serial, "unspecified").unwrap_err();
    assert!(err.to_string().contains("already revoked"), "{err}");

    // init published 1, the revocations 2 and 3.
    assert_eq!(crl_number(&dir), "3");
    assert_eq!(a.publish_crl(7).unwrap().number, 4);
    assert_eq!(b.publish_crl(7).unwrap().number, 5);
    assert_eq!(crl_number(&dir), "5");
}

/// Threads of one process, each with its own handle, queue on the lock too.
#[test]
fn concurrent_handles_in_one_process_keep_every_record() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("oem");
    Ca::init(&dir, &CaOptions::new(CaKind::Oem, "OEM")).unwrap();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut ca = Ca::open(&dir).unwrap();
                let serial = ca.issue(&client(&format!("t{i}"), csr())).unwrap().serial;
                ca.revoke(&serial, "unspecified").unwrap();
                serial
            })
        })
        .collect();
    let mut serials: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    serials.sort();
    let ca = Ca::open(&dir).unwrap();
    let mut issued = ca.issued_serials();
    issued.sort();
    let mut revoked = ca.revoked_serials();
    revoked.sort();
    assert_eq!(issued, serials);
    assert_eq!(revoked, serials);
    assert_eq!(ca.crl_number(), 7);
    assert_eq!(crl_number(&dir), "7");
}

/// A symlink where the lock file belongs is refused, not followed.
#[test]
fn the_lock_file_is_never_a_symlink() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("oem");
    let mut ca = Ca::init(&dir, &CaOptions::new(CaKind::Oem, "OEM")).unwrap();
    let elsewhere = d.path().join("elsewhere");
    std::fs::remove_file(dir.join("ca.lock")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("ca.lock")).unwrap();
    let before = std::fs::read(dir.join("ca.json")).unwrap();
    let err = ca.publish_crl(7).unwrap_err();
    assert!(err.to_string().contains("ca.lock"), "{err}");
    assert!(!elsewhere.exists());
    assert_eq!(std::fs::read(dir.join("ca.json")).unwrap(), before);
}

fn openssl_csr(dir: &Path, name: &str, newkey: &[&str], digest: &str) -> SubjectKey {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut args = vec!["req", "-new"];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&[
        digest,
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-subj",
        "/CN=x",
        "-out",
        csr.to_str().unwrap(),
    ]);
    let out = Command::new("openssl")
        .args(&args)
        .output()
        .expect("openssl is installed by scripts/test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    SubjectKey::CsrFile(csr)
}

/// CSRs for keys this CA does not certify are refused naming the key's
/// actual type and what to use instead (they used to say "not a P-256
/// point" for P-384, "proof of possession failed" for P-521, and "neither
/// P-256 nor Ed25519" for a P-256 key signed with SHA-384). A P-256 key
/// signed with SHA-384 proves possession as well as one signed with
/// SHA-256, and is certified.
#[test]
fn csr_keys_the_ca_does_not_certify_are_named() {
    let d = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(&d.path().join("oem"), &CaOptions::new(CaKind::Oem, "OEM")).unwrap();
    let ec =
        |curve: &'static str| -> Vec<&'static str> { vec!["-newkey", "ec", "-pkeyopt", curve] };
    for (name, newkey, digest, what) in [
        (
            "p384",
            ec("ec_paramgen_curve:P-384"),
            "-sha256",
            "ECDSA P-384",
        ),
        (
            "p384s384",
            ec("ec_paramgen_curve:P-384"),
            "-sha384",
            "ECDSA P-384",
        ),
        (
            "p521",
            ec("ec_paramgen_curve:P-521"),
            "-sha512",
            "ECDSA P-521",
        ),
        ("rsa", vec!["-newkey", "rsa:2048"], "-sha256", "RSA"),
    ] {
        let err = ca
            .issue(&client("x", openssl_csr(d.path(), name, &newkey, digest)))
            .unwrap_err();
        assert!(matches!(err, PkiError::BadInput { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("{name}.csr")), "{msg}");
        assert!(
            msg.contains(&format!("the CSR's key is {what};")),
            "{name}: {msg}"
        );
        assert!(msg.contains("only ECDSA P-256 and Ed25519"), "{msg}");
    }
    assert_eq!(ca.issued_serials().len(), 0);
    let p256 = openssl_csr(
        d.path(),
        "p256s384",
        &ec("ec_paramgen_curve:P-256"),
        "-sha384",
    );
    let issued = ca.issue(&client("x", p256)).unwrap();
    let summary = drivesec_pki::inspect::summarize(&issued.der).unwrap();
    assert_eq!(summary.subject, "O=OEM, OU=Clients, CN=x");
}

/// The serials a CA's published CRL lists (lower-case hex).
fn crl_serials(ca: &Path) -> Vec<String> {
    let pem = std::fs::read(ca.join("crl.pem")).unwrap();
    let ders = drivesec_pki::crl::parse_crls(&pem).unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(ders[0].as_ref()).unwrap();
    crl.iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect()
}

/// A revoke stopped between its two writes (power cut, full disk): the
/// revocation is never lost and no CRL number is published twice, in
/// either order of the stop.
#[test]
fn a_revoke_stopped_half_way_loses_nothing_and_repeats_no_number() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("oem");
    Ca::init(&dir, &CaOptions::new(CaKind::Oem, "OEM")).unwrap();
    let mut ca = Ca::open(&dir).unwrap();
    let one = ca.issue(&client("one", csr())).unwrap();
    let two = ca.issue(&client("two", csr())).unwrap();
    ca.crl(7).unwrap();
    let n0: u64 = crl_number(&dir).parse().unwrap();

    // Stopped after ca.json, before crl.pem: the record has the
    // revocation; the next CRL lists it under a new number.
    let old_crl = std::fs::read(dir.join("crl.pem")).unwrap();
    ca.revoke(&one.serial, "key-compromise").unwrap();
    assert_eq!(crl_number(&dir), (n0 + 1).to_string());
    std::fs::write(dir.join("crl.pem"), &old_crl).unwrap();
    Ca::open(&dir).unwrap().crl(7).unwrap();
    assert_eq!(crl_number(&dir), (n0 + 2).to_string());
    assert!(
        crl_serials(&dir).contains(&one.serial),
        "{:?}",
        crl_serials(&dir)
    );

    // A crl.pem newer than ca.json (written first by an older version,
    // then stopped): its number is not published again.
    let old_meta = std::fs::read(dir.join("ca.json")).unwrap();
    Ca::open(&dir)
        .unwrap()
        .revoke(&two.serial, "superseded")
        .unwrap();
    let published: u64 = crl_number(&dir).parse().unwrap();
    std::fs::write(dir.join("ca.json"), &old_meta).unwrap();
    Ca::open(&dir).unwrap().crl(7).unwrap();
    let next: u64 = crl_number(&dir).parse().unwrap();
    assert!(next > published, "CRL number {next} published again");
}
