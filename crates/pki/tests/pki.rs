//! The PKI end to end: CAs in a keystore, every profile, CSRs, CRLs, and the
//! independent checks (`openssl verify`, `openssl x509 -text`) a user would run.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;

use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeystoreConfig};
use drivesec_pki::ca::{CaKeystore, parse_reason};
use drivesec_pki::inspect::summarize;
use drivesec_pki::verify::{Usage, VerifyOptions, verify_chain};
use drivesec_pki::{
    Ca, CaKind, CaOptions, IssueRequest, PkiError, Profile, Role, SubjectKey, read_cert_chain,
    read_crl,
};
use rustls_pki_types::CertificateDer;

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed by scripts/test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn device_key(dir: &Path) -> drivesec_keystore::PublicKey {
    let (_, store) = KeystoreConfig::create_soft(dir, "device-ks", "device-secret").unwrap();
    store
        .generate(&KeyHandle::new("idevid").unwrap(), KeyAlgorithm::EcdsaP256)
        .unwrap()
        .public_key
}

fn csr_pem(name: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn verify_opts<'a>(
    ca: &'a [CertificateDer<'a>],
    roots: &'a [CertificateDer<'a>],
    usage: Usage,
) -> VerifyOptions<'a> {
    VerifyOptions {
        roots,
        intermediates: ca,
        crls: &[],
        usage,
        time: None,
    }
}

#[test]
fn idevid_from_manufacturer_ca_passes_webpki_and_openssl() {
    let d = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(
        &d.path().join("mfg"),
        &CaOptions::new(CaKind::Manufacturer, "Acme Drives"),
    )
    .unwrap();
    let pk = device_key(d.path());
    let issued = ca
        .issue(&IssueRequest {
            profile: Profile::IdevId {
                serial_number: "SN-000123".into(),
                model: "iC7-Sim".into(),
            },
            key: SubjectKey::Public(pk),
        })
        .unwrap();
    let leaf_path = d.path().join("leaf.pem");
    std::fs::write(&leaf_path, &issued.pem).unwrap();

    let roots = [CertificateDer::from(ca.root_der().to_vec())];
    let inter = [CertificateDer::from(ca.issuing_der().to_vec())];
    let leaf = CertificateDer::from(issued.der.clone());
    verify_chain(&leaf, &verify_opts(&inter, &roots, Usage::Client)).unwrap();
    verify_chain(&leaf, &verify_opts(&inter, &roots, Usage::Server)).unwrap();

    let root = ca.root_path();
    let issuing = ca.dir().join("issuing.crt");
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        issuing.to_str().unwrap(),
        leaf_path.to_str().unwrap(),
    ]);
    assert!(ok, "openssl verify failed: {out}");
    let (ok, text) = openssl(&[
        "x509",
        "-in",
        leaf_path.to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(ok);
    assert!(
        text.contains("serialNumber = SN-000123") || text.contains("serialNumber=SN-000123"),
        "{text}"
    );
    assert!(
        text.contains("Not After : Dec 31 23:59:59 9999 GMT"),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("URI:urn:drivesec:device:SN-000123"), "{text}");

    let s = summarize(&issued.der).unwrap();
    assert_eq!(s.key_usage, ["digitalSignature"]);
    assert!(s.key_usage_critical);
    assert!(!s.is_ca);
    assert!(s.subject_key_id.is_some());
    let ca_summary = summarize(ca.issuing_der()).unwrap();
    assert_eq!(
        s.authority_key_id, ca_summary.subject_key_id,
        "AKI must name the issuing CA's SKI"
    );
    assert!(ca_summary.is_ca);
    assert!(ca_summary.key_usage.contains(&"keyCertSign".to_string()));
    assert_eq!(s.role, None);
}

#[test]
fn client_certificate_carries_role_extension_visible_to_openssl() {
    let d = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(
        &d.path().join("oem"),
        &CaOptions::new(CaKind::Oem, "Machine Builder GmbH"),
    )
    .unwrap();
    let csr = d.path().join("op.csr");
    std::fs::write(&csr, csr_pem("ignored-subject")).unwrap();
    let issued = ca
        .issue(&IssueRequest {
            profile: Profile::Client {
                name: "alice".into(),
                role: Some(Role::new("operator").unwrap()),
                days: 365,
            },
            key: SubjectKey::CsrFile(csr),
        })
        .unwrap();
    let s = summarize(&issued.der).unwrap();
    assert_eq!(s.role.as_deref(), Some("operator"));
    assert_eq!(s.role_extension_critical, Some(false));
    assert_eq!(s.extended_key_usage, ["clientAuth"]);
    assert!(
        s.subject.contains("CN=alice"),
        "the CA sets the subject, not the CSR: {}",
        s.subject
    );

    let leaf = d.path().join("alice.pem");
    std::fs::write(&leaf, &issued.pem).unwrap();
    let (ok, text) = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-text"]);
    assert!(ok);
    let pos = text
        .find("1.3.6.1.4.1.50316.802.1:")
        .expect("role extension shown");
    assert!(
        !text[pos..pos + 40].contains("critical"),
        "role extension must be non-critical"
    );
    assert!(
        text[pos..].lines().nth(1).unwrap().contains("operator"),
        "{text}"
    );
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        ca.root_path().to_str().unwrap(),
        "-untrusted",
        ca.dir().join("issuing.crt").to_str().unwrap(),
        "-purpose",
        "sslclient",
        leaf.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
}

#[test]
fn ldevid_and_server_profiles_carry_dns_names() {
    let d = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(&d.path().join("oem"), &CaOptions::new(CaKind::Oem, "OEM")).unwrap();
    let pk = device_key(d.path());
    let issued = ca
        .issue(&IssueRequest {
            profile: Profile::LdevId {
                serial_number: "SN-1".into(),
                device_name: "drive-001.plant.example".into(),
                ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                days: 730,
            },
            key: SubjectKey::Public(pk.clone()),
        })
        .unwrap();
    let s = summarize(&issued.der).unwrap();
    assert!(
        s.subject_alt_names
            .contains(&"DNS:drive-001.plant.example".to_string()),
        "{s:?}"
    );
    assert!(
        s.subject_alt_names.contains(&"IP:127.0.0.1".to_string()),
        "{s:?}"
    );
    assert_eq!(s.extended_key_usage, ["serverAuth", "clientAuth"]);
    let roots = [CertificateDer::from(ca.root_der().to_vec())];
    let inter = [CertificateDer::from(ca.issuing_der().to_vec())];
    verify_chain(
        &CertificateDer::from(issued.der),
        &verify_opts(&inter, &roots, Usage::Server),
    )
    .unwrap();

    let err = ca
        .issue(&IssueRequest {
            profile: Profile::Server {
                dns_names: vec!["bad name".into()],
                ip_addresses: vec![],
                days: 30,
            },
            key: SubjectKey::Public(pk),
        })
        .unwrap_err();
    assert!(err.to_string().contains("bad name"), "{err}");
}

#[test]
fn each_ca_kind_issues_only_its_profiles() {
    let d = tempfile::tempdir().unwrap();
    let mut oem = Ca::init(&d.path().join("oem"), &CaOptions::new(CaKind::Oem, "OEM")).unwrap();
    let mut mfg = Ca::init(
        &d.path().join("mfg"),
        &CaOptions::new(CaKind::Manufacturer, "Mfg"),
    )
    .unwrap();
    let pk = device_key(d.path());
    let idevid = Profile::IdevId {
        serial_number: "S1".into(),
        model: "M".into(),
    };
    let err = oem
        .issue(&IssueRequest {
            profile: idevid,
            key: SubjectKey::Public(pk.clone()),
        })
        .unwrap_err();
    assert!(matches!(err, PkiError::WrongCaKind { .. }), "{err}");
    let err = mfg
        .issue(&IssueRequest {
            profile: Profile::Client {
                name: "x".into(),
                role: None,
                days: 1,
            },
            key: SubjectKey::Public(pk),
        })
        .unwrap_err();
    assert!(matches!(err, PkiError::WrongCaKind { .. }), "{err}");
}

#[test]
fn bad_csrs_are_named_and_rejected() {
    let d = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(&d.path().join("oem"), &CaOptions::new(CaKind::Oem, "OEM")).unwrap();
    let client = |key| IssueRequest {
        profile: Profile::Client {
            name: "bob".into(),
            role: None,
            days: 10,
        },
        key,
    };
    // Not PEM at all.
    let junk = d.path().join("junk.csr");
    std::fs::write(&junk, "hello").unwrap();
    let err = ca
        .issue(&client(SubjectKey::CsrFile(junk.clone())))
        .unwrap_err();
    assert!(matches!(err, PkiError::BadInput { .. }), "{err}");
    assert!(err.to_string().contains("junk.csr"), "{err}");
    // A CSR whose signature was tampered with: proof of possession fails.
    let good = csr_pem("bob");
    let block = pem::parse(&good).unwrap();
    let mut der = block.contents().to_vec();
    // Change the subject "bob" to "bop": the DER stays valid, the signature does not.
    let at = der.windows(3).position(|w| w == b"bob").unwrap();
    der[at + 2] = b'p';
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let err = ca
        .issue(&client(SubjectKey::CsrPem {
            source: "tampered.csr".into(),
            pem: tampered,
        }))
        .unwrap_err();
    assert!(err.to_string().contains("tampered.csr"), "{err}");
    assert!(err.to_string().contains("proof of possession"), "{err}");
    // Missing file.
    let err = ca
        .issue(&client(SubjectKey::CsrFile(d.path().join("nope.csr"))))
        .unwrap_err();
    assert!(err.to_string().contains("nope.csr"), "{err}");
    // Nothing was filed for any of them.
    assert_eq!(
        std::fs::read_dir(ca.dir().join("issued")).unwrap().count(),
        0
    );
}

#[test]
fn revocation_reaches_the_crl_webpki_and_openssl() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("oem");
    let mut ca = Ca::init(&dir, &CaOptions::new(CaKind::Oem, "OEM")).unwrap();
    let mk = |ca: &mut Ca, name: &str| {
        ca.issue(&IssueRequest {
            profile: Profile::Client {
                name: name.into(),
                role: Some(Role::new("viewer").unwrap()),
                days: 30,
            },
            key: SubjectKey::CsrPem {
                source: name.into(),
                pem: csr_pem(name),
            },
        })
        .unwrap()
    };
    let good = mk(&mut ca, "good");
    let bad = mk(&mut ca, "bad");
    let crl_path = ca.revoke(&bad.serial, "key-compromise").unwrap();
    assert!(matches!(
        ca.revoke("00ff", "unspecified").unwrap_err(),
        PkiError::UnknownSerial(_)
    ));
    assert!(
        ca.revoke(&bad.serial, "key-compromise").is_err(),
        "double revoke"
    );
    assert!(parse_reason("bogus").is_err());

    // Reopen from disk: the revocation persisted.
    let ca = Ca::open(&dir).unwrap();
    assert_eq!(ca.revoked_serials(), vec![bad.serial.clone()]);

    let crl = read_crl(&crl_path).unwrap();
    let roots = [CertificateDer::from(ca.root_der().to_vec())];
    let inter = [CertificateDer::from(ca.issuing_der().to_vec())];
    let crls = [crl];
    let opts = VerifyOptions {
        crls: &crls,
        ..verify_opts(&inter, &roots, Usage::Client)
    };
    verify_chain(&CertificateDer::from(good.der.clone()), &opts).unwrap();
    let err = verify_chain(&CertificateDer::from(bad.der.clone()), &opts).unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    // A CRL past its nextUpdate (7 days) is not trusted to say "not revoked".
    let later = rustls_pki_types::UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            + std::time::Duration::from_secs(10 * 86400),
    );
    let err = verify_chain(
        &CertificateDer::from(good.der.clone()),
        &VerifyOptions {
            time: Some(later),
            ..opts
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("nextUpdate"), "{err}");

    let (ok, text) = openssl(&["crl", "-in", crl_path.to_str().unwrap(), "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(
        text.to_lowercase().replace(':', "").contains(&bad.serial),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    let bad_path = d.path().join("bad.pem");
    std::fs::write(&bad_path, &bad.pem).unwrap();
    let chain = ca.chain_path();
    let (ok, out) = openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        chain.to_str().unwrap(),
        "-CRLfile",
        crl_path.to_str().unwrap(),
        bad_path.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let good_path = d.path().join("good.pem");
    std::fs::write(&good_path, &good.pem).unwrap();
    let (ok, out) = openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        chain.to_str().unwrap(),
        "-CRLfile",
        crl_path.to_str().unwrap(),
        good_path.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
}

#[test]
fn init_refuses_existing_dir_and_leaves_nothing_on_failure() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("ca");
    Ca::init(&dir, &CaOptions::new(CaKind::Oem, "OEM")).unwrap();
    let before = std::fs::read(dir.join("ca.json")).unwrap();
    let err = Ca::init(&dir, &CaOptions::new(CaKind::Oem, "Other")).unwrap_err();
    assert!(matches!(err, PkiError::CaExists { .. }), "{err}");
    assert_eq!(std::fs::read(dir.join("ca.json")).unwrap(), before);

    // Parent is a file: the error names it and no staging directory remains.
    let file = d.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let err = Ca::init(&file.join("ca"), &CaOptions::new(CaKind::Oem, "OEM")).unwrap_err();
    assert!(err.to_string().contains("plain-file"), "{err}");

    // A keystore failure half-way (bad PKCS#11 URI) leaves no directory behind.
    let mut opts = CaOptions::new(CaKind::Oem, "OEM");
    opts.keystore = CaKeystore::Pkcs11 {
        uri: "pkcs11:token=does-not-exist?pin-source=file:/nonexistent-pin".into(),
    };
    let target = d.path().join("ca2");
    assert!(Ca::init(&target, &opts).is_err());
    assert!(!target.exists());
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn ca_keys_on_a_pkcs11_token() {
    assert!(
        std::env::var_os("SOFTHSM2_CONF").is_some(),
        "run through scripts/test (SOFTHSM2_CONF)"
    );
    let d = tempfile::tempdir().unwrap();
    let label = format!("ca-test-{}", std::process::id());
    drivesec_keystore::pkcs11::init_token(
        &drivesec_keystore::pkcs11::default_module(),
        &label,
        "5678",
        "4321",
    )
    .unwrap();
    std::fs::write(d.path().join("pin"), "4321").unwrap();
    let mut opts = CaOptions::new(CaKind::Manufacturer, "Acme");
    opts.keystore = CaKeystore::Pkcs11 {
        uri: format!(
            "pkcs11:token={label}?pin-source=file:{}",
            d.path().join("pin").display()
        ),
    };
    let mut ca = Ca::init(&d.path().join("mfg"), &opts).unwrap();
    assert_eq!(ca.keystore_backend(), "pkcs11");
    assert!(
        !d.path().join("mfg/keystore").exists(),
        "no soft keystore for a token-backed CA"
    );
    let pk = device_key(d.path());
    let issued = ca
        .issue(&IssueRequest {
            profile: Profile::IdevId {
                serial_number: "HSM-1".into(),
                model: "iC7-Sim".into(),
            },
            key: SubjectKey::Public(pk),
        })
        .unwrap();
    let roots = read_cert_chain(&ca.root_path()).unwrap();
    let inter = [CertificateDer::from(ca.issuing_der().to_vec())];
    verify_chain(
        &CertificateDer::from(issued.der),
        &verify_opts(&inter, &roots, Usage::Client),
    )
    .unwrap();
}
