//! CRLs on a real drivesecd (issue 15, finding 1): an expired CRL does not
//! lock the owner out, a CRL from another CA, a malformed one or an older
//! one replayed is refused and changes nothing (the daemon starts again
//! from its state directory), and a revoked issuing CA takes every
//! certificate it issued with it.

use crate::support::{
    TestLab, actions, config, failures, issue_client_identity, outcome, stranger_ca, test_lab,
};
use drivesec_audit::reader::StoredRecord;
use drivesec_client::client::{ClientIdentity, DeviceClient, Versions};
use drivesec_client::modbus::ModbusClient;
use drivesec_pki::Ca;
use time::{Duration, OffsetDateTime};

fn info_status(c: &DeviceClient) -> Option<u16> {
    c.call("GET", "/api/v1/info", None).ok().map(|r| r.status)
}

/// A refusal's `details.reason`.
fn reason(r: &StoredRecord) -> &str {
    r.record.details["reason"].as_str().unwrap()
}

fn crl_file(lab: &TestLab) -> Vec<u8> {
    std::fs::read(lab.device_dir().join("crl.pem")).unwrap()
}

/// The engineer and the security administrator work, over new
/// connections (logged out after, sessions per user are bounded).
fn owner_works(lab: &TestLab) {
    for (who, c) in [
        ("the engineer", lab.session("engineer")),
        ("the security administrator", lab.admin()),
    ] {
        assert_eq!(
            c.call("GET", "/api/v1/me", None).unwrap().status,
            200,
            "{who} is locked out"
        );
        let _ = c.call("POST", "/api/v1/logout", None);
    }
}

/// Finding 1: a CRL past its nextUpdate (here with no grace at all) used
/// to refuse every client certificate, on the API and on Modbus, with no
/// way back. Now the revoked certificate stays refused, everyone else gets
/// in, and the staleness is reported in the posture, the trail and the log.
#[test]
fn expired_crl_does_not_lock_out_the_owner() {
    let mut cfg = config();
    cfg.trust.crl_grace_secs = 0;
    let mut lab = test_lab(Some(cfg));
    let d = tempfile::tempdir().unwrap();
    let mut oem = Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (victim, serial) = issue_client_identity(&mut oem, d.path(), Some("viewer"), None);
    assert_eq!(info_status(&lab.client_with(&victim)), Some(200));
    oem.revoke(&serial, "key-compromise").unwrap();
    let now = OffsetDateTime::now_utc();
    let stale = oem
        .dangerous_crl(1000, now - Duration::days(8), now - Duration::hours(1))
        .unwrap();
    let r = lab.put_crl(&stale);
    assert_eq!(r.status, 200, "{}", r.body);

    assert_eq!(
        info_status(&lab.client_with(&victim)),
        None,
        "the revoked certificate got in under a stale CRL"
    );
    owner_works(&lab);
    let mut op = ModbusClient::connect(
        lab.modbus_addr(),
        Some(&lab.identity("operator")),
        &lab.trust(),
        Versions::Default,
    )
    .expect("the operator's Modbus session is refused under a stale CRL");
    assert!(op.read_input(0, 3).unwrap().is_ok());
    drop(op);
    // The posture says so.
    let p = lab
        .session("auditor")
        .ok("GET", "/api/v1/posture", None)
        .unwrap();
    let fr1 = &p["foundational_requirements"][0];
    assert!(
        fr1["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("is stale")),
        "{fr1}"
    );
    assert!(fr1["level"].as_u64().unwrap() <= 1, "{fr1}");
    assert_eq!(p["settings"]["crls"][0]["status"], "stale", "{p}");

    let recs = lab.stop_and_read_trail();
    let stale_recs = actions(&recs, "trust.crl.stale");
    assert_eq!(stale_recs.len(), 1, "reported once");
    assert!(
        actions(&recs, "trust.crl.install")
            .iter()
            .any(|r| outcome(r) == "success")
    );
    // The state survives a restart, with the same decision.
    lab.start_again().unwrap();
    assert_eq!(info_status(&lab.client_with(&victim)), None);
    owner_works(&lab);
}

/// Finding 1: a validly signed CRL from another CA (here one with another
/// name, and one with the owner CA's very name but its own key) was
/// accepted, and then every client was refused for want of a CRL of its
/// issuer. Now it is refused (400 naming why) and nothing changes.
#[test]
fn crl_from_another_ca_is_refused_and_changes_nothing() {
    let mut lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let oem = Ca::open(&lab.m.oem_ca_dir).unwrap();
    let other = stranger_ca(d.path(), "other", "Mallory Ltd");
    let twin = stranger_ca(d.path(), "twin", oem.organization());
    let before = crl_file(&lab);
    for (ca, code) in [(&other, "crl-unknown-issuer"), (&twin, "crl-bad-signature")] {
        let r = lab.put_crl(&std::fs::read_to_string(ca.crl_path()).unwrap());
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some(code)),
            "{}",
            r.body
        );
        assert_eq!(crl_file(&lab), before, "crl.pem changed");
        owner_works(&lab);
    }
    let recs = lab.stop_and_read_trail();
    let refused = failures(&recs, "trust.crl.install");
    assert_eq!(refused.len(), 2);
    assert!(
        reason(refused[0]).contains("Mallory"),
        "{:?}",
        refused[0].record.details
    );
    lab.start_again().unwrap();
    owner_works(&lab);
}

/// Finding 1: a malformed CRL was answered 400 but already written, and the
/// daemon then refused to start. Now nothing is written and the installed
/// CRL stays in force, also across a restart.
#[test]
fn malformed_crl_is_refused_and_the_daemon_restarts() {
    let mut lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut oem = Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (victim, serial) = issue_client_identity(&mut oem, d.path(), Some("viewer"), None);
    lab.install_crl(&oem.revoke(&serial, "key-compromise").unwrap());
    assert_eq!(info_status(&lab.client_with(&victim)), None);
    let before = crl_file(&lab);
    let root = std::fs::read_to_string(&lab.m.oem_ca).unwrap();
    let good = std::fs::read_to_string(oem.crl_path()).unwrap();
    let truncated = {
        let lines: Vec<&str> = good.lines().collect();
        let mut t = lines[..lines.len() - 3].join("\n");
        t.push_str("\n-----END X509 CRL-----\n");
        t
    };
    for body in [
        "not a CRL",
        "",
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        &root,
        &truncated,
    ] {
        let r = lab.put_crl(body);
        assert_eq!(r.status, 400, "{body:?}: {}", r.body);
        assert_eq!(r.body["error"], "crl-malformed", "{}", r.body);
        assert_eq!(crl_file(&lab), before, "crl.pem changed by {body:?}");
    }
    owner_works(&lab);
    assert_eq!(
        info_status(&lab.client_with(&victim)),
        None,
        "the installed CRL is no longer in force"
    );
    let recs = lab.stop_and_read_trail();
    let refused = failures(&recs, "trust.crl.install").len();
    assert_eq!(refused, 5);
    lab.start_again()
        .expect("the daemon does not start after a refused CRL");
    owner_works(&lab);
    assert_eq!(info_status(&lab.client_with(&victim)), None);
}

/// Finding 1: an older CRL (from before a revocation) replayed by someone
/// with the right to install CRLs would let the revoked certificate back
/// in. Now a CRL whose number is not greater than the installed one's is
/// refused.
#[test]
fn older_crl_replay_is_refused() {
    let mut lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut oem = Ca::open(&lab.m.oem_ca_dir).unwrap();
    let old = std::fs::read_to_string(oem.crl_path()).unwrap();
    let (victim, serial) = issue_client_identity(&mut oem, d.path(), Some("viewer"), None);
    let newer = std::fs::read_to_string(oem.revoke(&serial, "key-compromise").unwrap()).unwrap();
    assert_eq!(lab.put_crl(&newer).status, 200);
    assert_eq!(info_status(&lab.client_with(&victim)), None);
    for body in [&old, &newer] {
        let r = lab.put_crl(body);
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some("crl-not-newer")),
            "{}",
            r.body
        );
    }
    assert_eq!(
        info_status(&lab.client_with(&victim)),
        None,
        "the replayed CRL let the revoked certificate back in"
    );
    owner_works(&lab);
    let recs = lab.stop_and_read_trail();
    let refused = failures(&recs, "trust.crl.install");
    assert_eq!(refused.len(), 2);
    assert!(
        reason(refused[0]).contains("not greater"),
        "{:?}",
        refused[0].record.details
    );
    lab.start_again().unwrap();
    assert_eq!(info_status(&lab.client_with(&victim)), None);
}

/// The owner's issuing CA is compromised: the root revokes it with a CRL
/// of its own. Every certificate it issued is then refused, although no
/// CRL lists them; a client certificate from the owner's new issuing CA
/// (same root) gets in.
#[test]
fn revoked_intermediate_ca_is_refused() {
    let mut lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let oem = Ca::open(&lab.m.oem_ca_dir).unwrap();
    let root = oem.dangerous_root_issuer().unwrap();
    // A second issuing CA under the same root, and a certificate from it.
    let i2_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, oem.organization());
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Second Issuing CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.use_authority_key_identifier_extension = true;
    let i2 = p.signed_by(&i2_key, &root).unwrap();
    let i2_issuer = rcgen::Issuer::new(p, &i2_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut lp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    lp.distinguished_name
        .push(rcgen::DnType::CommonName, "owner-after-the-compromise");
    lp.is_ca = rcgen::IsCa::ExplicitNoCa;
    lp.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    lp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    lp.use_authority_key_identifier_extension = true;
    lp.custom_extensions.push(
        drivesec_pki::Role::new("security-admin")
            .unwrap()
            .extension(),
    );
    let leaf = lp.signed_by(&leaf_key, &i2_issuer).unwrap();
    let (c, k) = (d.path().join("new.crt"), d.path().join("new.key"));
    std::fs::write(&c, format!("{}{}", leaf.pem(), i2.pem())).unwrap();
    std::fs::write(&k, leaf_key.serialize_pem()).unwrap();
    let fresh = ClientIdentity::from_files(&c, &k).unwrap();
    assert_eq!(info_status(&lab.client_with(&fresh)), Some(200));

    // The root's CRL revokes the first issuing CA.
    let now = OffsetDateTime::now_utc();
    let issuing_serial = hex::decode(
        drivesec_pki::inspect::summarize(oem.issuing_der())
            .unwrap()
            .serial,
    )
    .unwrap();
    let root_crl = rcgen::CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(7),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&issuing_serial),
            revocation_time: now - Duration::minutes(1),
            reason_code: Some(rcgen::RevocationReason::CaCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&root)
    .unwrap()
    .pem()
    .unwrap();
    let r = lab.put_crl(&root_crl);
    assert_eq!(r.status, 200, "{}", r.body);

    for role in ["viewer", "engineer", "security-admin"] {
        assert_eq!(
            info_status(&lab.client(role)),
            None,
            "{role}'s certificate from the revoked issuing CA got in"
        );
    }
    assert!(
        ModbusClient::connect(
            lab.modbus_addr(),
            Some(&lab.identity("operator")),
            &lab.trust(),
            Versions::Default,
        )
        .and_then(|mut m| m.read_input(0, 1).map(|_| ()))
        .is_err(),
        "Modbus admitted a certificate from the revoked issuing CA"
    );
    // The owner, with the new issuing CA's certificate, keeps working.
    let mut owner = lab.client_with(&fresh);
    let a = lab.m.admin.clone().unwrap();
    owner.login(&a.username, &a.password).unwrap();
    assert_eq!(owner.call("GET", "/api/v1/me", None).unwrap().status, 200);
    // Both CRLs are installed: the issuing CA's stays beside the root's.
    let installed = drivesec_pki::crl::parse_crls(&crl_file(&lab)).unwrap();
    assert_eq!(installed.len(), 2);

    let recs = lab.stop_and_read_trail();
    let installs = actions(&recs, "trust.crl.install");
    let last = installs.last().unwrap();
    assert_eq!(outcome(last), "success");
    assert_eq!(last.record.details["crls"].as_array().unwrap().len(), 2);
    lab.start_again().unwrap();
    assert_eq!(info_status(&lab.client("viewer")), None);
    let mut owner = lab.client_with(&fresh);
    owner.login(&a.username, &a.password).unwrap();
}
