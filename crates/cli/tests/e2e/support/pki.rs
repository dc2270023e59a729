//! Certificates and certificate requests for the tests: from the lab's
//! CAs (as a stand-in device, a server or a client holds them) or from a
//! CA of the test's own.

use std::path::{Path, PathBuf};

use drivesec_client::client::ClientIdentity;
use drivesec_lab::LabManifest;
use drivesec_pki::{Ca, Profile};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use drivesec_testkit::csr::{csr_pem, key_and_csr};

/// A request for a certificate of `profile` over a new P-256 key, sent as
/// a CSR from `source`; and the key.
pub fn csr_request(
    profile: drivesec_pki::Profile,
    source: &str,
) -> (drivesec_pki::IssueRequest, rcgen::KeyPair) {
    let (key, pem) = key_and_csr();
    let req = drivesec_pki::IssueRequest {
        profile,
        key: drivesec_pki::SubjectKey::CsrPem {
            source: source.into(),
            pem,
        },
    };
    (req, key)
}

/// A certificate of `profile` (a server, a stand-in device's LDevID or
/// IDevID) that the CA in `ca_dir` issues now over a new P-256 key, sent as
/// a CSR from `source`: the CA's answer (chain PEM, serial) and the key.
pub fn issue_over_csr(
    ca_dir: &Path,
    profile: drivesec_pki::Profile,
    source: &str,
) -> (drivesec_pki::Issued, rcgen::KeyPair) {
    let (req, key) = csr_request(profile, source);
    let issued = drivesec_pki::Ca::open(ca_dir).unwrap().issue(&req).unwrap();
    (issued, key)
}

/// A certificate of `profile` from the CA in `ca_dir` over a new key: its
/// chain (leaf, issuing CA), key and serial.
pub fn issue_certificate(
    ca_dir: &Path,
    profile: Profile,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String) {
    let (issued, key) = issue_over_csr(ca_dir, profile, "test");
    let chain =
        drivesec_pki::read_certs_pem(Path::new("chain"), issued.chain_pem.as_bytes()).unwrap();
    (
        chain,
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        issued.serial,
    )
}

/// An LDevID for the device `serial` named `device_name` (no IP address,
/// a year).
pub fn ldevid(serial: &str, device_name: &str) -> Profile {
    Profile::LdevId {
        serial_number: serial.into(),
        device_name: device_name.into(),
        ip_addresses: vec![],
        days: 365,
    }
}

/// An IDevID of the simulated drive model for the device `serial`.
pub fn idevid(serial: &str) -> Profile {
    Profile::IdevId {
        serial_number: serial.into(),
        model: "iC7-Sim".into(),
    }
}

/// A lab's PKI and clients (no devices running) in a new temporary
/// directory, and a stand-in device's certificate of `profile` over a new
/// key: from the lab's manufacturer CA for an IDevID, its OEM CA otherwise.
pub fn pki_lab_and_device(
    profile: Profile,
) -> (
    tempfile::TempDir,
    LabManifest,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
) {
    let (t, m) = super::lab::pki_lab();
    let ca = match profile {
        Profile::IdevId { .. } => &m.manufacturer_ca_dir,
        _ => &m.oem_ca_dir,
    };
    let (chain, key, _) = issue_certificate(ca, profile);
    (t, m, chain, key)
}

/// An OEM CA of organisation `org` in `dir/name`, unknown to the device.
pub fn stranger_ca(dir: &Path, name: &str, org: &str) -> Ca {
    Ca::init(
        &dir.join(name),
        &drivesec_pki::CaOptions::new(drivesec_pki::CaKind::Oem, org),
    )
    .unwrap()
}

/// Issues a client certificate from `ca` (with `role` in the role extension,
/// or none) into `dir`; returns the chain and key files and the serial.
pub fn issue_client_files(
    ca: &mut drivesec_pki::Ca,
    dir: &std::path::Path,
    role: Option<&str>,
    validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
) -> (PathBuf, PathBuf, String) {
    let (req, key) = csr_request(
        drivesec_pki::Profile::Client {
            name: "x".into(),
            role: role.map(|r| drivesec_pki::Role::new(r).unwrap()),
            days: 30,
        },
        "test",
    );
    let issued = match validity {
        Some((nb, na)) => ca.dangerous_issue_with_validity(&req, nb, na).unwrap(),
        None => ca.issue(&req).unwrap(),
    };
    let (k, c) = (
        dir.join(format!("{}.key", issued.serial)),
        dir.join(format!("{}.crt", issued.serial)),
    );
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::write(&c, &issued.chain_pem).unwrap();
    (c, k, issued.serial)
}

/// [`issue_client_files`] as a client identity, with the serial.
pub fn issue_client_identity(
    ca: &mut drivesec_pki::Ca,
    dir: &Path,
    role: Option<&str>,
    validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
) -> (ClientIdentity, String) {
    let (c, k, serial) = issue_client_files(ca, dir, role, validity);
    (ClientIdentity::from_files(&c, &k).unwrap(), serial)
}

/// A self-signed client certificate and its key, written into `dir`.
pub fn self_signed_identity(dir: &Path, name: &str) -> ClientIdentity {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    let cert = p.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    ClientIdentity::from_files(&c, &k).unwrap()
}
