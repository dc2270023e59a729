//! A two-tier CA whose keys live in a keystore.
//!
//! Directory layout (see docs/pki.md):
//!
//! ```text
//! ca.json        metadata: kind, organisation, keystore config, key handles,
//!                CRL number, issued and revoked serials (no secrets)
//! root.crt       self-signed root (PEM)
//! issuing.crt    issuing CA certificate, signed by the root (PEM)
//! chain.pem      issuing.crt + root.crt
//! crl.pem        the issuing CA's latest CRL
//! issued/SERIAL.crt
//! keystore/, ca-secret   the soft keystore (when the CA uses the soft backend)
//! ca.lock        empty; held with flock(2) while one change is made
//! ```
//!
//! Every change (issue, revoke, CRL) takes an exclusive lock on `ca.lock`
//! and re-reads `ca.json` under it, so concurrent runs (an operator's
//! revoke and the renewal timer, say) queue instead of losing each other's
//! records, and CRL numbers only go up. Readers take no lock: every file is
//! replaced by an atomic rename.

use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use drivesec_fsutil::{self as fsu, Mode};
use drivesec_keystore::adapters::{CertPublicKey, CertSigningKey};
use drivesec_keystore::pkcs11::Pkcs11Uri;
use drivesec_keystore::{
    KeyAlgorithm, KeyHandle, KeyStore, KeystoreConfig, PublicKey, open_keystore,
};
use rand_core::{OsRng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::role::Role;
use crate::{PkiError, Result};

const FORMAT: &str = "drivesec-ca";

/// The file whose flock(2) serialises changes to a CA directory.
const LOCK_FILE: &str = "ca.lock";

/// An exclusive lock on a CA directory, released when dropped (or when the
/// process ends, however it ends).
struct DirLock {
    _file: File,
}

impl DirLock {
    /// Waits for the exclusive lock on `dir`'s lock file, creating the file
    /// (0600) if needed. A symlink in its place is refused, not followed.
    fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32,
            )
            .open(&path)
            .map_err(|e| fsu::FsError::io("open lock file", &path, e))?;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => return Ok(DirLock { _file: file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(fsu::FsError::io("lock", &path, std::io::Error::from(e)).into());
                }
            }
        }
    }
}

/// Whose CA this is, which decides what it may issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaKind {
    /// The drive manufacturer: issues IDevIDs at the factory.
    Manufacturer,
    /// An OEM, integrator or asset owner: issues LDevIDs, server and client certificates.
    Oem,
}

impl CaKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CaKind::Manufacturer => "manufacturer",
            CaKind::Oem => "oem",
        }
    }
}

/// Where a new CA keeps its keys.
#[derive(Debug, Clone)]
pub enum CaKeystore {
    /// A soft keystore inside the CA directory.
    Soft,
    /// A PKCS#11 token. The URI must name its PIN with `pin-source` (never
    /// `pin-value`); a relative `pin-source` resolves against the current
    /// directory and is stored absolute.
    Pkcs11 {
        /// The token URI.
        uri: String,
    },
}

/// Options for [`Ca::init`].
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// Manufacturer or OEM.
    pub kind: CaKind,
    /// Organisation name, used in every subject the CA issues.
    pub organization: String,
    /// Key storage.
    pub keystore: CaKeystore,
    /// Root validity in years.
    pub root_years: i64,
    /// Issuing CA validity in years.
    pub issuing_years: i64,
}

impl CaOptions {
    /// Defaults: soft keystore, 25-year root, 15-year issuing CA.
    pub fn new(kind: CaKind, organization: impl Into<String>) -> Self {
        CaOptions {
            kind,
            organization: organization.into(),
            keystore: CaKeystore::Soft,
            root_years: 25,
            issuing_years: 15,
        }
    }
}

/// What kind of certificate to issue, with the profile's own fields.
#[derive(Debug, Clone)]
pub enum Profile {
    /// IEEE 802.1AR initial device identity (manufacturer CA only).
    /// Valid "forever" (notAfter 99991231235959Z, RFC 5280 §4.1.2.5).
    IdevId {
        /// The device's serial number, put in the subject's serialNumber.
        serial_number: String,
        /// Product model, in the subject's CN.
        model: String,
    },
    /// Locally significant device identity, issued at commissioning (OEM CA only).
    LdevId {
        /// The device's serial number.
        serial_number: String,
        /// DNS name clients use to reach the device (CN and SAN).
        device_name: String,
        /// Extra IP address SANs.
        ip_addresses: Vec<IpAddr>,
        /// Validity in days.
        days: i64,
    },
    /// A client certificate for a tool or a person (OEM CA only), with an
    /// optional Modbus/TCP Security role.
    Client {
        /// Who the certificate is for.
        name: String,
        /// Role carried in the 1.3.6.1.4.1.50316.802.1 extension.
        role: Option<Role>,
        /// Validity in days.
        days: i64,
    },
    /// A TLS server certificate (OEM CA only).
    Server {
        /// DNS names.
        dns_names: Vec<String>,
        /// IP addresses.
        ip_addresses: Vec<IpAddr>,
        /// Validity in days.
        days: i64,
    },
}

impl Profile {
    /// Profile name as used on the command line and in `ca.json`.
    pub fn name(&self) -> &'static str {
        match self {
            Profile::IdevId { .. } => "idevid",
            Profile::LdevId { .. } => "ldevid",
            Profile::Client { .. } => "client",
            Profile::Server { .. } => "server",
        }
    }
}

/// The key a certificate is issued for.
#[derive(Debug, Clone)]
pub enum SubjectKey {
    /// A PEM CSR file; only its (signature-checked) public key is used.
    CsrFile(PathBuf),
    /// A PEM CSR held in memory, with a name for error messages.
    CsrPem {
        /// Where it came from.
        source: String,
        /// The PEM text.
        pem: String,
    },
    /// A public key whose private half is in a keystore.
    Public(PublicKey),
}

/// An issuance request.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The profile.
    pub profile: Profile,
    /// The subject's key.
    pub key: SubjectKey,
}

/// A CRL just published by [`Ca::publish_crl`].
#[derive(Debug, Clone)]
pub struct PublishedCrl {
    /// Where it was written (`crl.pem`).
    pub path: PathBuf,
    /// Its cRLNumber.
    pub number: u64,
    /// The CRL, PEM (what `crl.pem` held when it was written).
    pub pem: String,
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The certificate, PEM.
    pub pem: String,
    /// Leaf + issuing CA, PEM (what a TLS peer presents).
    pub chain_pem: String,
    /// Where the CA filed it.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IssuedRecord {
    serial: String,
    profile: String,
    subject: String,
    not_after: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RevokedRecord {
    serial: String,
    revoked_at: String,
    reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CaMeta {
    format: String,
    version: u32,
    kind: CaKind,
    organization: String,
    keystore: KeystoreConfig,
    root_key: KeyHandle,
    issuing_key: KeyHandle,
    crl_number: u64,
    issued: Vec<IssuedRecord>,
    revoked: Vec<RevokedRecord>,
}

/// An open CA.
pub struct Ca {
    dir: PathBuf,
    meta: CaMeta,
    store: Arc<dyn KeyStore>,
    root_der: Vec<u8>,
    issuing_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("kind", &self.meta.kind)
            .finish_non_exhaustive()
    }
}

fn rand_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn random_serial() -> (SerialNumber, String) {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b[0] &= 0x7f; // positive INTEGER
    b[0] |= 0x01; // and no leading zero octet to strip
    (SerialNumber::from_slice(&b), hex::encode(b))
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn pem_of(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn check_token(what: &str, v: &str, extra: &[u8], max: usize) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "{what} '{v}' must be 1 to {max} characters from A-Z a-z 0-9 {}",
            String::from_utf8_lossy(extra)
        )))
    }
}

fn check_dns(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "'{name}' is not a valid DNS name"
        )))
    }
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String> {
    s.try_into()
        .map_err(|_| PkiError::Invalid(format!("'{s}' is not IA5 (ASCII) text")))
}

fn ca_params(
    kind: CaKind,
    org: &str,
    cn: &str,
    path_len: u8,
    years: i64,
    aki: bool,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(
        DnType::OrganizationalUnitName,
        format!("{} PKI", kind.as_str()),
    );
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now() - Duration::hours(1);
    p.not_after = now() + Duration::days(365 * years);
    p.serial_number = Some(random_serial().0);
    p.use_authority_key_identifier_extension = aki;
    p.key_identifier_method = KeyIdMethod::Sha256;
    p
}

impl Ca {
    /// Creates a CA in `dir`, which must not exist yet. The CA is assembled in
    /// a hidden sibling directory and renamed into place at the end, so a
    /// failure leaves nothing behind (keys made on a PKCS#11 token are destroyed).
    pub fn init(dir: &Path, opts: &CaOptions) -> Result<Ca> {
        if opts.organization.trim().is_empty() {
            return Err(PkiError::Invalid("the organisation name is empty".into()));
        }
        let staged = fsu::StagedDir::new(dir).map_err(|e| match e {
            fsu::FsError::AlreadyExists { path } => PkiError::CaExists { path },
            other => other.into(),
        })?;
        let mut created_keys: Vec<(Arc<dyn KeyStore>, KeyHandle)> = Vec::new();
        match Self::build(staged.path(), opts, &mut created_keys)
            .and_then(|()| Ok(staged.commit()?))
        {
            Ok(dir) => Ca::open(&dir),
            Err(e) => {
                for (store, h) in created_keys {
                    let _ = store.destroy(&h);
                }
                Err(e)
            }
        }
    }

    fn build(
        dir: &Path,
        opts: &CaOptions,
        created: &mut Vec<(Arc<dyn KeyStore>, KeyHandle)>,
    ) -> Result<()> {
        let (keystore, store) = match &opts.keystore {
            CaKeystore::Soft => KeystoreConfig::create_soft(dir, "keystore", "ca-secret")?,
            CaKeystore::Pkcs11 { uri } => {
                let cwd = std::env::current_dir()
                    .map_err(|e| fsu::FsError::io("read current directory", Path::new("."), e))?;
                let uri = Pkcs11Uri::parse(uri)?.for_storage(&cwd)?;
                let cfg = KeystoreConfig::Pkcs11 {
                    uri: uri.to_string(),
                };
                let store = open_keystore(&cfg, dir)?;
                (cfg, store)
            }
        };
        let id = rand_hex(4);
        let root_key = KeyHandle::new(format!("ca-root-{id}"))?;
        let issuing_key = KeyHandle::new(format!("ca-issuing-{id}"))?;
        store.generate(&root_key, KeyAlgorithm::EcdsaP256)?;
        created.push((store.clone(), root_key.clone()));
        store.generate(&issuing_key, KeyAlgorithm::EcdsaP256)?;
        created.push((store.clone(), issuing_key.clone()));

        let org = opts.organization.as_str();
        let label = match opts.kind {
            CaKind::Manufacturer => "Manufacturer",
            CaKind::Oem => "OEM",
        };
        let root_signer = CertSigningKey::new(store.clone(), &root_key)?;
        let root_params = ca_params(
            opts.kind,
            org,
            &format!("{org} {label} Root CA"),
            1,
            opts.root_years,
            false,
        );
        let root = root_params.self_signed(&root_signer)?;
        let issuing_signer = CertSigningKey::new(store.clone(), &issuing_key)?;
        let issuing_params = ca_params(
            opts.kind,
            org,
            &format!("{org} {label} Issuing CA"),
            0,
            opts.issuing_years,
            true,
        );
        let root_issuer = Issuer::new(root_params, &root_signer);
        let issuing = issuing_params.signed_by(
            &CertPublicKey(issuing_signer.public_key().clone()),
            &root_issuer,
        )?;

        fsu::write_new(&dir.join("root.crt"), root.pem().as_bytes(), Mode::Public)?;
        fsu::write_new(
            &dir.join("issuing.crt"),
            issuing.pem().as_bytes(),
            Mode::Public,
        )?;
        let chain = format!("{}{}", issuing.pem(), root.pem());
        fsu::write_new(&dir.join("chain.pem"), chain.as_bytes(), Mode::Public)?;
        fsu::create_private_dir(&dir.join("issued"))?;
        // Made now, so that no later change (or failed change) adds a file.
        fsu::write_new(&dir.join(LOCK_FILE), b"", Mode::Private)?;
        let meta = CaMeta {
            format: FORMAT.into(),
            version: 1,
            kind: opts.kind,
            organization: org.into(),
            keystore,
            root_key,
            issuing_key,
            crl_number: 0,
            issued: Vec::new(),
            revoked: Vec::new(),
        };
        let mut ca = Ca {
            dir: dir.to_path_buf(),
            meta,
            store,
            root_der: root.der().to_vec(),
            issuing_der: issuing.der().to_vec(),
        };
        // Still the private staging directory: nobody else can see it yet.
        ca.write_crl(7)?;
        Ok(())
    }

    /// Opens an existing CA directory.
    pub fn open(dir: &Path) -> Result<Ca> {
        let meta = Self::read_meta(dir)?;
        let store = open_keystore(&meta.keystore, dir)?;
        let root_der = crate::read_cert_chain(&dir.join("root.crt"))?
            .remove(0)
            .to_vec();
        let issuing_der = crate::read_cert_chain(&dir.join("issuing.crt"))?
            .remove(0)
            .to_vec();
        Ok(Ca {
            dir: dir.to_path_buf(),
            meta,
            store,
            root_der,
            issuing_der,
        })
    }

    fn read_meta(dir: &Path) -> Result<CaMeta> {
        let not_ca = |reason: String| PkiError::NotACa {
            path: dir.to_path_buf(),
            reason,
        };
        let meta_path = dir.join("ca.json");
        if !meta_path.exists() {
            return Err(not_ca("ca.json is missing".into()));
        }
        let meta: CaMeta = serde_json::from_slice(&fsu::read(&meta_path)?)
            .map_err(|e| not_ca(format!("ca.json: {e}")))?;
        if meta.format != FORMAT || meta.version != 1 {
            return Err(not_ca(format!(
                "unsupported format {} v{}",
                meta.format, meta.version
            )));
        }
        Ok(meta)
    }

    /// Runs one change under the directory's exclusive lock, on `ca.json`
    /// as it is now (another process may have changed it since `open`).
    fn locked<T>(&mut self, change: impl FnOnce(&mut Ca) -> Result<T>) -> Result<T> {
        let _lock = DirLock::acquire(&self.dir)?;
        let meta = Self::read_meta(&self.dir)?;
        if meta.kind != self.meta.kind
            || meta.root_key != self.meta.root_key
            || meta.issuing_key != self.meta.issuing_key
        {
            return Err(PkiError::NotACa {
                path: self.dir.clone(),
                reason: "ca.json now names other keys than when the CA was opened".into(),
            });
        }
        self.meta = meta;
        change(self)
    }

    fn save_meta(&self) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(&self.meta).map_err(|e| PkiError::Invalid(e.to_string()))?;
        fsu::write_atomic(&self.dir.join("ca.json"), &json, Mode::Public)?;
        Ok(())
    }

    /// The CA's kind.
    pub fn kind(&self) -> CaKind {
        self.meta.kind
    }

    /// The CA's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The organisation.
    pub fn organization(&self) -> &str {
        &self.meta.organization
    }

    /// The keystore backend holding the CA keys.
    pub fn keystore_backend(&self) -> &'static str {
        self.store.backend()
    }

    /// The root certificate (DER): the trust anchor to distribute.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// The issuing CA certificate (DER).
    pub fn issuing_der(&self) -> &[u8] {
        &self.issuing_der
    }

    /// Path of root.crt.
    pub fn root_path(&self) -> PathBuf {
        self.dir.join("root.crt")
    }

    /// Path of chain.pem (issuing + root).
    pub fn chain_path(&self) -> PathBuf {
        self.dir.join("chain.pem")
    }

    /// Path of crl.pem.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    /// Serials of every certificate this CA issued (lower-case hex).
    pub fn issued_serials(&self) -> Vec<String> {
        self.meta.issued.iter().map(|r| r.serial.clone()).collect()
    }

    /// Serials of revoked certificates.
    pub fn revoked_serials(&self) -> Vec<String> {
        self.meta.revoked.iter().map(|r| r.serial.clone()).collect()
    }

    fn subject_public_key(key: &SubjectKey) -> Result<PublicKey> {
        let (source, pem) = match key {
            SubjectKey::Public(pk) => return Ok(pk.clone()),
            SubjectKey::CsrFile(p) => (
                p.display().to_string(),
                String::from_utf8(fsu::read(p)?).map_err(|_| PkiError::BadInput {
                    path: p.clone(),
                    reason: "not a text (PEM) file".into(),
                })?,
            ),
            SubjectKey::CsrPem { source, pem } => (source.clone(), pem.clone()),
        };
        let bad = |reason: String| PkiError::BadInput {
            path: PathBuf::from(&source),
            reason,
        };
        // The key's type comes from its own SubjectPublicKeyInfo, named
        // before the signature is checked: rcgen infers it from the
        // signature algorithm, which misnames a P-384 key signed with
        // SHA-256 and cannot verify a P-521 one at all.
        let alg = match csr_key_algorithm(&pem) {
            Some(Ok(alg)) => Some(alg),
            Some(Err(what)) => {
                return Err(bad(format!(
                    "the CSR's key is {what}; this CA certifies only ECDSA P-256 and Ed25519 keys \
                     (make an ECDSA key on P-256, e.g. openssl req -newkey ec -pkeyopt \
                     ec_paramgen_curve:P-256)"
                )));
            }
            None => None,
        };
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&pem).map_err(|e| {
            bad(match e {
                rcgen::Error::InvalidCertificationRequestSignature => {
                    "the CSR's signature does not verify (proof of possession failed)".into()
                }
                rcgen::Error::CouldNotParseCertificationRequest => {
                    "not a PEM certificate signing request".into()
                }
                other => format!("unusable CSR: {other}"),
            })
        })?;
        use rcgen::PublicKeyData;
        let alg = alg.ok_or_else(|| bad("the CSR's public key cannot be read".into()))?;
        PublicKey::from_raw(alg, csr.public_key.der_bytes().to_vec())
            .map_err(|e| bad(e.to_string()))
    }

    fn leaf_params(&self, profile: &Profile) -> Result<CertificateParams> {
        let org = self.meta.organization.as_str();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, org);
        let serial_dn = |dn: &mut DistinguishedName, sn: &str| -> Result<()> {
            let v = rcgen::string::PrintableString::try_from(sn)
                .map_err(|_| PkiError::Invalid(format!("serial number '{sn}' is not printable")))?;
            dn.push(
                DnType::CustomDnType(vec![2, 5, 4, 5]),
                DnValue::PrintableString(v),
            );
            Ok(())
        };
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = now() - Duration::hours(1);
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = KeyIdMethod::Sha256;
        p.is_ca = IsCa::ExplicitNoCa;
        let days = |d: i64| -> Result<OffsetDateTime> {
            if !(1..=36500).contains(&d) {
                return Err(PkiError::Invalid(format!(
                    "validity of {d} days is out of range 1..36500"
                )));
            }
            Ok(now() + Duration::days(d))
        };
        match (self.meta.kind, profile) {
            (
                CaKind::Manufacturer,
                Profile::IdevId {
                    serial_number,
                    model,
                },
            ) => {
                check_token("serial number", serial_number, b"-", 64)?;
                check_token("model", model, b"-_. ", 64)?;
                dn.push(DnType::OrganizationalUnitName, "IDevID");
                dn.push(DnType::CommonName, format!("{model} {serial_number}"));
                serial_dn(&mut dn, serial_number)?;
                p.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ClientAuth,
                    ExtendedKeyUsagePurpose::ServerAuth,
                ];
                p.subject_alt_names = vec![SanType::URI(ia5(&format!(
                    "urn:drivesec:device:{serial_number}"
                ))?)];
                p.not_after = time::macros::datetime!(9999-12-31 23:59:59 UTC);
            }
            (
                CaKind::Oem,
                Profile::LdevId {
                    serial_number,
                    device_name,
                    ip_addresses,
                    days: d,
                },
            ) => {
                check_token("serial number", serial_number, b"-", 64)?;
                check_dns(device_name)?;
                dn.push(DnType::OrganizationalUnitName, "LDevID");
                dn.push(DnType::CommonName, device_name.as_str());
                serial_dn(&mut dn, serial_number)?;
                p.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
                let mut sans = vec![SanType::DnsName(ia5(device_name)?)];
                sans.extend(ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
                sans.push(SanType::URI(ia5(&format!(
                    "urn:drivesec:device:{serial_number}"
                ))?));
                p.subject_alt_names = sans;
                p.not_after = days(*d)?;
            }
            (
                CaKind::Oem,
                Profile::Client {
                    name,
                    role,
                    days: d,
                },
            ) => {
                check_token("client name", name, b"-_.@", 64)?;
                dn.push(DnType::OrganizationalUnitName, "Clients");
                dn.push(DnType::CommonName, name.as_str());
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                p.subject_alt_names =
                    vec![SanType::URI(ia5(&format!("urn:drivesec:client:{name}"))?)];
                if let Some(role) = role {
                    p.custom_extensions.push(role.extension());
                }
                p.not_after = days(*d)?;
            }
            (
                CaKind::Oem,
                Profile::Server {
                    dns_names,
                    ip_addresses,
                    days: d,
                },
            ) => {
                if dns_names.is_empty() && ip_addresses.is_empty() {
                    return Err(PkiError::Invalid(
                        "a server certificate needs a DNS name or an IP address".into(),
                    ));
                }
                let mut sans = Vec::new();
                for n in dns_names {
                    check_dns(n)?;
                    sans.push(SanType::DnsName(ia5(n)?));
                }
                sans.extend(ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
                let cn = dns_names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| ip_addresses[0].to_string());
                dn.push(DnType::OrganizationalUnitName, "Servers");
                dn.push(DnType::CommonName, cn);
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                p.subject_alt_names = sans;
                p.not_after = days(*d)?;
            }
            (kind, profile) => {
                return Err(PkiError::WrongCaKind {
                    ca: kind.as_str(),
                    profile: profile.name(),
                });
            }
        }
        p.distinguished_name = dn;
        p.serial_number = None;
        Ok(p)
    }

    fn issuer(&self) -> Result<Issuer<'static, CertSigningKey>> {
        self.issuer_of(&self.issuing_der, &self.meta.issuing_key)
    }

    /// One of this CA's two certificates as an rcgen issuer signing with
    /// its key in the keystore.
    fn issuer_of(
        &self,
        cert_der: &[u8],
        key: &KeyHandle,
    ) -> Result<Issuer<'static, CertSigningKey>> {
        let key = CertSigningKey::new(self.store.clone(), key)?;
        Ok(Issuer::from_ca_cert_der(&cert_der.to_vec().into(), key)?)
    }

    /// Issues a certificate and files it under `issued/`.
    pub fn issue(&mut self, req: &IssueRequest) -> Result<Issued> {
        self.locked(|ca| ca.issue_inner(req, None))
    }

    fn issue_inner(
        &mut self,
        req: &IssueRequest,
        validity: Option<(OffsetDateTime, OffsetDateTime)>,
    ) -> Result<Issued> {
        let mut params = self.leaf_params(&req.profile)?;
        if let Some((nb, na)) = validity {
            params.not_before = nb;
            params.not_after = na;
        }
        let public = Self::subject_public_key(&req.key)?;
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        let not_after = params.not_after;
        let cert = params.signed_by(&CertPublicKey(public), &self.issuer()?)?;
        let subject = crate::inspect::summarize(cert.der())?.subject;
        let pem = cert.pem();
        let path = self.dir.join("issued").join(format!("{serial_hex}.crt"));
        fsu::write_new(&path, pem.as_bytes(), Mode::Public)?;
        self.meta.issued.push(IssuedRecord {
            serial: serial_hex.clone(),
            profile: req.profile.name().into(),
            subject,
            not_after: rfc3339(not_after),
        });
        self.save_meta()?;
        let chain_pem = format!("{pem}{}", pem_of("CERTIFICATE", &self.issuing_der));
        Ok(Issued {
            serial: serial_hex,
            der: cert.der().to_vec(),
            pem,
            chain_pem,
            path,
        })
    }

    /// Issues a certificate with a validity window chosen by the caller,
    /// including one entirely in the past. Dangerous: for testing that
    /// verifiers refuse expired or not-yet-valid certificates, never for
    /// production issuance.
    pub fn dangerous_issue_with_validity(
        &mut self,
        req: &IssueRequest,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued> {
        self.locked(|ca| ca.issue_inner(req, Some((not_before, not_after))))
    }

    /// Revokes an issued certificate and publishes a fresh CRL.
    pub fn revoke(&mut self, serial_hex: &str, reason: &str) -> Result<PathBuf> {
        self.locked(|ca| ca.revoke_inner(serial_hex, reason))
    }

    fn revoke_inner(&mut self, serial_hex: &str, reason: &str) -> Result<PathBuf> {
        let serial = serial_hex
            .trim()
            .to_ascii_lowercase()
            .trim_start_matches("0x")
            .replace(':', "");
        if !self.meta.issued.iter().any(|r| r.serial == serial) {
            return Err(PkiError::UnknownSerial(serial_hex.into()));
        }
        if self.meta.revoked.iter().any(|r| r.serial == serial) {
            return Err(PkiError::Invalid(format!(
                "serial {serial} is already revoked"
            )));
        }
        parse_reason(reason)?;
        self.meta.revoked.push(RevokedRecord {
            serial,
            revoked_at: rfc3339(now()),
            reason: reason.into(),
        });
        // write_crl() records the revocation and the CRL number it takes in
        // ca.json first, then publishes the CRL: stopped in between, the
        // record keeps the revocation and the number is never used twice;
        // the next `ca crl` publishes it.
        let result = self.write_crl(7);
        if result.is_err() {
            self.meta.revoked.pop();
        }
        result.map(|p| p.path)
    }

    /// Signs a new CRL (next update in `days`), writes `crl.pem`, returns its path.
    pub fn crl(&mut self, days: i64) -> Result<PathBuf> {
        self.publish_crl(days).map(|p| p.path)
    }

    /// Signs a new CRL (next update in `days`) with the next cRLNumber,
    /// writes `crl.pem`, and returns what it wrote.
    pub fn publish_crl(&mut self, days: i64) -> Result<PublishedCrl> {
        self.locked(|ca| ca.write_crl(days))
    }

    /// The CRL number last published, as this handle last read or wrote it.
    pub fn crl_number(&self) -> u64 {
        self.meta.crl_number
    }

    /// [`Ca::publish_crl`] without taking the lock (the caller holds it).
    fn write_crl(&mut self, days: i64) -> Result<PublishedCrl> {
        if !(1..=365).contains(&days) {
            return Err(PkiError::Invalid(format!(
                "CRL validity of {days} days is out of range 1..365"
            )));
        }
        // One above both the number recorded and the one published (a
        // crl.pem from a change that stopped before ca.json was saved, by an
        // older version that wrote the CRL first, still counts).
        let path = self.crl_path();
        let number = self.meta.crl_number.max(published_crl_number(&path)) + 1;
        // The record first: the revocations and the number this CRL takes.
        self.meta.crl_number = number;
        self.save_meta()?;
        let pem = self.signed_crl(
            number,
            now() - Duration::minutes(5),
            now() + Duration::days(days),
            |r| OffsetDateTime::parse(&r.revoked_at, &Rfc3339).unwrap_or_else(|_| now()),
        )?;
        fsu::write_atomic(&path, pem.as_bytes(), Mode::Public)?;
        Ok(PublishedCrl { path, number, pem })
    }

    /// A CRL of the issuing CA listing every revoked record (its
    /// revocationDate from `revoked_at`), signed, as PEM; nothing written.
    fn signed_crl(
        &self,
        number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        revoked_at: impl Fn(&RevokedRecord) -> OffsetDateTime,
    ) -> Result<String> {
        let mut revoked = Vec::new();
        for r in &self.meta.revoked {
            let bytes = hex::decode(&r.serial)
                .map_err(|_| PkiError::Invalid(format!("bad serial {}", r.serial)))?;
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: revoked_at(r),
                reason_code: Some(parse_reason(&r.reason)?),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer()?)?.pem()?)
    }
}

impl Ca {
    /// Signs a CRL of the issuing CA with a caller-chosen number and
    /// thisUpdate/nextUpdate (including ones in the past), listing the
    /// revoked serials, and returns it as PEM without writing `crl.pem` or
    /// changing `ca.json`. Dangerous: for testing that devices refuse an
    /// older CRL and survive a stale one, never for publishing.
    pub fn dangerous_crl(
        &self,
        number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String> {
        // Every entry revoked at thisUpdate, which may lie before the
        // recorded revocation time.
        self.signed_crl(number, this_update, next_update, |_| this_update)
    }

    /// The root CA as an rcgen issuer (its key stays in the keystore).
    /// Dangerous: the root signs only CA certificates and the root's CRL;
    /// for tests that build a second issuing CA or revoke the first.
    pub fn dangerous_root_issuer(&self) -> Result<Issuer<'static, CertSigningKey>> {
        self.issuer_of(&self.root_der, &self.meta.root_key)
    }
}

/// The algorithm of the key in a PEM CSR, read from its
/// SubjectPublicKeyInfo: `Ok` for the two this CA certifies, `Err` naming
/// any other; `None` when the CSR does not parse (the caller's parser then
/// says why).
fn csr_key_algorithm(pem_text: &str) -> Option<std::result::Result<KeyAlgorithm, String>> {
    use x509_parser::prelude::FromDer;
    let block = pem::parse(pem_text).ok()?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(block.contents())
            .ok()?;
    let spki = &csr.certification_request_info.subject_pki.algorithm;
    let curve = || {
        spki.parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string())
    };
    Some(match spki.algorithm.to_id_string().as_str() {
        "1.3.101.112" => Ok(KeyAlgorithm::Ed25519),
        "1.2.840.10045.2.1" => match curve().as_deref() {
            Some("1.2.840.10045.3.1.7") => Ok(KeyAlgorithm::EcdsaP256),
            Some("1.3.132.0.34") => Err("ECDSA P-384".into()),
            Some("1.3.132.0.35") => Err("ECDSA P-521".into()),
            Some("1.3.132.0.10") => Err("ECDSA secp256k1".into()),
            Some(other) => Err(format!("ECDSA on the curve {other}")),
            None => Err("ECDSA without a named curve".into()),
        },
        "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => Err("RSA".into()),
        "1.3.101.113" => Err("Ed448".into()),
        "1.2.840.10040.4.1" => Err("DSA".into()),
        other => Err(format!("of algorithm {other}")),
    })
}

/// Parses a revocation reason name (RFC 5280 §5.3.1, kebab-case).
pub fn parse_reason(s: &str) -> Result<RevocationReason> {
    Ok(match s {
        "unspecified" => RevocationReason::Unspecified,
        "key-compromise" => RevocationReason::KeyCompromise,
        "ca-compromise" => RevocationReason::CaCompromise,
        "affiliation-changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation-of-operation" => RevocationReason::CessationOfOperation,
        "certificate-hold" => RevocationReason::CertificateHold,
        "privilege-withdrawn" => RevocationReason::PrivilegeWithdrawn,
        other => {
            return Err(PkiError::Invalid(format!(
                "unknown revocation reason '{other}' (use unspecified, key-compromise, ca-compromise, \
                 affiliation-changed, superseded, cessation-of-operation, certificate-hold, privilege-withdrawn)"
            )));
        }
    })
}

/// The cRLNumber of the CRL published at `path` (0 when there is none or it
/// does not parse: the number in ca.json then rules).
fn published_crl_number(path: &Path) -> u64 {
    let Ok(bytes) = std::fs::read(path) else {
        return 0;
    };
    let Ok(ders) = crate::crl::parse_crls(&bytes) else {
        return 0;
    };
    ders.iter()
        .filter_map(|d| x509_parser::parse_x509_crl(d.as_ref()).ok())
        .filter_map(|(_, c)| c.crl_number().and_then(|n| u64::try_from(n.clone()).ok()))
        .max()
        .unwrap_or(0)
}
