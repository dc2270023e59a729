#![allow(clippy::unwrap_used, clippy::expect_used)]

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa,
    KeyIdMethod, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};

use super::*;
use crate::verify::{CrlPolicy, Usage, VerifyOptions, verify_chain_with};
use crate::{Ca, CaKind, CaOptions, IssueRequest, Profile, SubjectKey};

fn ca(dir: &std::path::Path, org: &str) -> Ca {
    Ca::init(
        &dir.join(org.replace(' ', "-")),
        &CaOptions::new(CaKind::Oem, org),
    )
    .unwrap()
}

fn issuers(ca: &Ca) -> Vec<CertificateDer<'static>> {
    known_issuers(
        &[CertificateDer::from(ca.root_der().to_vec())],
        &[CertificateDer::from(ca.issuing_der().to_vec())],
    )
}

fn client(ca: &mut Ca) -> crate::Issued {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    ca.issue(&IssueRequest {
        profile: Profile::Client {
            name: "c".into(),
            role: None,
            days: 30,
        },
        key: SubjectKey::CsrPem {
            source: "t".into(),
            pem: csr,
        },
    })
    .unwrap()
}

#[test]
fn the_own_issuing_cas_crl_is_accepted_with_its_number_and_dates() {
    let d = tempfile::tempdir().unwrap();
    let mut a = ca(d.path(), "Owner");
    let c = client(&mut a);
    a.revoke(&c.serial, "key-compromise").unwrap();
    let set = verify_crls(&std::fs::read(a.crl_path()).unwrap(), &issuers(&a)).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].number.to_string(), "2");
    assert_eq!(set[0].revoked, vec![c.serial.clone()]);
    assert!(set[0].issuer.contains("Issuing CA"));
    assert!(!set[0].is_overdue(OffsetDateTime::now_utc()));
    // DER is taken as well as PEM.
    let der = set[0].der.as_ref().to_vec();
    assert_eq!(verify_crls(&der, &issuers(&a)).unwrap().len(), 1);
}

#[test]
fn a_crl_from_another_ca_is_refused_as_unknown_issuer() {
    let d = tempfile::tempdir().unwrap();
    let a = ca(d.path(), "Owner");
    let b = ca(d.path(), "Stranger");
    let e = verify_crls(&std::fs::read(b.crl_path()).unwrap(), &issuers(&a)).unwrap_err();
    assert!(
        matches!(e, CrlError::UnknownIssuer { .. }),
        "{e:?}: {}",
        e.code()
    );
    assert!(e.to_string().contains("Stranger"), "{e}");
}

#[test]
fn a_crl_from_another_ca_with_the_same_name_fails_its_signature() {
    let d = tempfile::tempdir().unwrap();
    let a = ca(d.path(), "Owner");
    let twin = Ca::init(
        &d.path().join("twin"),
        &CaOptions::new(CaKind::Oem, "Owner"),
    )
    .unwrap();
    let e = verify_crls(&std::fs::read(twin.crl_path()).unwrap(), &issuers(&a)).unwrap_err();
    assert!(matches!(e, CrlError::BadSignature { .. }), "{e:?}");
}

#[test]
fn an_intermediate_not_signed_by_an_anchor_is_not_a_crl_issuer() {
    let d = tempfile::tempdir().unwrap();
    let a = ca(d.path(), "Owner");
    let b = ca(d.path(), "Stranger");
    let known = known_issuers(
        &[CertificateDer::from(a.root_der().to_vec())],
        &[
            CertificateDer::from(b.issuing_der().to_vec()),
            CertificateDer::from(a.issuing_der().to_vec()),
        ],
    );
    assert_eq!(known.len(), 2);
    assert!(known.iter().all(|k| k.as_ref() != b.issuing_der()));
    let e = verify_crls(&std::fs::read(b.crl_path()).unwrap(), &known).unwrap_err();
    assert!(matches!(e, CrlError::UnknownIssuer { .. }), "{e:?}");
}

#[test]
fn malformed_input_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let a = ca(d.path(), "Owner");
    let i = issuers(&a);
    for (input, code) in [
        (&b""[..], "crl-malformed"),
        (b"not a CRL", "crl-malformed"),
        (
            b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
            "crl-malformed",
        ),
        (b"\x30\x03\x02\x01\x01", "crl-malformed"),
    ] {
        let e = verify_crls(input, &i).unwrap_err();
        assert_eq!(e.code(), code, "{e}");
    }
    // A certificate where a CRL belongs.
    let cert = std::fs::read(a.root_path()).unwrap();
    let e = verify_crls(&cert, &i).unwrap_err();
    assert!(e.to_string().contains("CERTIFICATE"), "{e}");
    // Bytes after a good CRL.
    let good = verify_crls(&std::fs::read(a.crl_path()).unwrap(), &i).unwrap();
    let mut der = good[0].der.as_ref().to_vec();
    der.push(0);
    let e = verify_crls(&der, &i).unwrap_err();
    assert!(matches!(e, CrlError::Unparseable { .. }), "{e:?}");
    // Two CRLs of one issuer.
    let twice = format!("{}{}", good[0].pem(), good[0].pem());
    let e = verify_crls(twice.as_bytes(), &i).unwrap_err();
    assert!(matches!(e, CrlError::DuplicateIssuer { .. }), "{e:?}");
}

#[test]
fn an_older_or_equal_number_is_refused_and_a_newer_one_replaces_its_issuer_only() {
    let d = tempfile::tempdir().unwrap();
    let mut a = ca(d.path(), "Owner");
    let i = issuers(&a);
    let now = OffsetDateTime::now_utc();
    let at = |n: u64| {
        verify_crls(
            a.dangerous_crl(n, now - Duration::hours(1), now + Duration::days(1))
                .unwrap()
                .as_bytes(),
            &i,
        )
        .unwrap()
    };
    let five = at(5);
    for n in [4, 5] {
        let e = merge(&five, at(n)).unwrap_err();
        assert!(matches!(e, CrlError::NotNewer { .. }), "{e:?}");
        assert_eq!(e.code(), "crl-not-newer");
    }
    // Numbers compare as numbers, not as byte strings.
    let big = merge(&five, at(256)).unwrap();
    assert_eq!(big.len(), 1);
    assert_eq!(big[0].number.to_string(), "256");
    assert!(merge(&big, at(6)).is_err());
    // A root CRL joins the set; the issuing CA's stays.
    let root = root_crl(&a, &[]);
    let both = merge(&big, verify_crls(root.as_bytes(), &i).unwrap()).unwrap();
    assert_eq!(both.len(), 2);
    assert_eq!(both[0].number.to_string(), "256");
    let _ = client(&mut a);
}

fn root_crl(a: &Ca, revoked: &[&[u8]]) -> String {
    let now = OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(7),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|der| RevokedCertParams {
                serial_number: SerialNumber::from_slice(
                    x509_parser::parse_x509_certificate(der)
                        .unwrap()
                        .1
                        .raw_serial(),
                ),
                revocation_time: now - Duration::minutes(1),
                reason_code: Some(rcgen::RevocationReason::CaCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&a.dangerous_root_issuer().unwrap())
    .unwrap()
    .pem()
    .unwrap()
}

fn der_crls(set: &[CrlInfo]) -> Vec<CertificateRevocationListDer<'static>> {
    set.iter().map(|c| c.der.clone()).collect()
}

#[test]
fn device_policy_checks_the_whole_chain_and_survives_a_stale_crl() {
    let d = tempfile::tempdir().unwrap();
    let mut a = ca(d.path(), "Owner");
    let i = issuers(&a);
    let good = client(&mut a);
    let bad = client(&mut a);
    a.revoke(&bad.serial, "key-compromise").unwrap();
    let now = OffsetDateTime::now_utc();
    // Stale: nextUpdate an hour ago.
    let stale = verify_crls(
        a.dangerous_crl(10, now - Duration::days(8), now - Duration::hours(1))
            .unwrap()
            .as_bytes(),
        &i,
    )
    .unwrap();
    assert!(stale[0].is_overdue(now));
    let roots = [CertificateDer::from(a.root_der().to_vec())];
    let inter = [CertificateDer::from(a.issuing_der().to_vec())];
    let check = |leaf: &crate::Issued, crls: &[CertificateRevocationListDer<'static>], p| {
        verify_chain_with(
            &CertificateDer::from(leaf.der.clone()),
            &VerifyOptions {
                roots: &roots,
                intermediates: &inter,
                crls,
                usage: Usage::Client,
                time: None,
            },
            p,
        )
    };
    let crls = der_crls(&stale);
    assert!(check(&good, &crls, CrlPolicy::Device).is_ok());
    assert!(check(&bad, &crls, CrlPolicy::Device).is_err());
    // The strict policy fails everyone on a stale CRL.
    assert!(check(&good, &crls, CrlPolicy::Strict).is_err());
    // The root revokes the issuing CA: every certificate below it fails.
    let root = verify_crls(root_crl(&a, &[a.issuing_der()]).as_bytes(), &i).unwrap();
    let all = der_crls(&merge(&stale, root).unwrap());
    let e = check(&good, &all, CrlPolicy::Device).unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
}

#[test]
fn a_second_issuing_ca_under_the_root_is_known_once_it_chains() {
    let d = tempfile::tempdir().unwrap();
    let a = ca(d.path(), "Owner");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "Second Issuing CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let second = p
        .signed_by(&key, &a.dangerous_root_issuer().unwrap())
        .unwrap();
    let known = known_issuers(
        &[CertificateDer::from(a.root_der().to_vec())],
        &[second.der().clone()],
    );
    assert_eq!(known.len(), 2);
}

#[test]
fn a_ca_whose_key_usage_lacks_crl_sign_is_no_crl_issuer() {
    let d = tempfile::tempdir().unwrap();
    let a = ca(d.path(), "Owner");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "Certificates Only CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let cert = p
        .signed_by(&key, &a.dangerous_root_issuer().unwrap())
        .unwrap();
    let known = known_issuers(
        &[CertificateDer::from(a.root_der().to_vec())],
        &[cert.der().clone()],
    );
    assert_eq!(known.len(), 2);
    // rcgen refuses to sign with it as it is; the certificate stays without cRLSign.
    p.key_usages.push(KeyUsagePurpose::CrlSign);
    let now = OffsetDateTime::now_utc();
    let crl = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(7),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&rcgen::Issuer::new(p, &key))
    .unwrap()
    .pem()
    .unwrap();
    let e = verify_crls(crl.as_bytes(), &known).unwrap_err();
    assert!(matches!(e, CrlError::BadSignature { .. }), "{e:?}");
    assert!(e.to_string().contains("cRLSign"), "{e}");
}
