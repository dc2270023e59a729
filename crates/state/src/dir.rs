//! The device's state directory (docs/device-state.md): what the factory
//! wrote, what commissioning adds, and the checks that refuse a corrupt or
//! inconsistent directory before anything starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drivesec_fsutil::{self as fsu, Mode};
use drivesec_keystore::adapters::CertSigningKey;
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeyStore, KeystoreConfig, open_keystore};
use drivesec_pki::crl::{CrlError, CrlInfo};
use drivesec_pki::inspect::public_key;
use drivesec_pki::read_certs_pem;
use drivesec_pki::verify::{CrlPolicy, Usage, VerifyOptions, verify_chain, verify_chain_with};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Result, StateError, credential, files, journal};

/// Handle of the LDevID key.
const LDEVID_KEY: &str = "ldevid";
/// The other LDevID handle: a renewal makes its new key under whichever of
/// the two is not in use.
const LDEVID_KEY_NEXT: &str = "ldevid-next";

/// Life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LifeCycle {
    /// As shipped: IDevID, one-time factory credential, commissioning endpoints only.
    Factory,
    /// Owned: LDevID, owner trust anchors, accounts.
    Commissioned,
}

/// `device.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceFile {
    /// Always `drivesec-device`.
    pub format: String,
    /// Format version, 1.
    pub version: u32,
    /// Serial number.
    pub serial_number: String,
    /// Model.
    pub model: String,
    /// Manufacturer organisation.
    pub manufacturer: String,
    /// Life-cycle state.
    pub state: LifeCycle,
    /// The crypto chip.
    pub keystore: KeystoreConfig,
    /// Handle of the IDevID key.
    pub idevid_key: KeyHandle,
    /// DNS name given at commissioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// Handle of the LDevID key, once commissioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldevid_key: Option<KeyHandle>,
    /// When it was commissioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commissioned_at: Option<String>,
    /// Hardware class (firmware images must name it).
    #[serde(default = "default_hw_class")]
    pub hw_class: String,
}

fn default_hw_class() -> String {
    "ctrl-a".into()
}

impl DeviceFile {
    /// Reads `DIR/device.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(files::DEVICE);
        let f: DeviceFile =
            serde_json::from_slice(&fsu::read(&path)?).map_err(|e| StateError::State {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if f.format != "drivesec-device" || f.version != 1 {
            return Err(StateError::State {
                path,
                reason: format!("unsupported format {} version {}", f.format, f.version),
            });
        }
        Ok(f)
    }

    /// Writes `DIR/device.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| StateError::Invalid(e.to_string()))?;
        fsu::write_atomic(&dir.join(files::DEVICE), &json, Mode::Public)?;
        Ok(())
    }
}

/// A loaded, checked state directory. Made only by [`StateDir::load`] and
/// the operations that return the next state.
#[derive(Clone)]
#[non_exhaustive]
pub struct StateDir {
    /// The directory.
    pub dir: PathBuf,
    /// `device.json`.
    pub file: DeviceFile,
    /// The crypto chip.
    pub store: Arc<dyn KeyStore>,
    /// IDevID chain (leaf first).
    pub idevid_chain: Vec<CertificateDer<'static>>,
    /// LDevID chain, once commissioned.
    pub ldevid_chain: Option<Vec<CertificateDer<'static>>>,
    /// Owner trust anchors, once commissioned.
    pub trust_anchors: Vec<CertificateDer<'static>>,
    /// Owner CRLs, one per issuer, each checked (parse, issuer, signature)
    /// at installation and again at load.
    pub crls: Vec<CrlInfo>,
    /// How far the staleness of the CRLs was reported (0 not, 1 overdue,
    /// 2 past the grace period): each stage is recorded once per loaded state.
    pub crl_reported: Arc<std::sync::atomic::AtomicU8>,
    /// The tamper response ran: the keys are gone (`tampered.json`).
    pub tampered: bool,
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDir")
            .field("dir", &self.dir)
            .field("state", &self.file.state)
            .finish_non_exhaustive()
    }
}

fn inconsistent(dir: &Path, reason: impl Into<String>) -> StateError {
    StateError::State {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// Refuses a directory without `device.json` (not a provisioned device
/// state directory), as [`StateDir::load`] and
/// [`crate::StateLock::acquire`] both do.
pub(crate) fn require_device_file(dir: &Path) -> Result<()> {
    if dir.join(files::DEVICE).exists() {
        return Ok(());
    }
    Err(inconsistent(
        dir,
        "device.json is missing: not a provisioned device state directory",
    ))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    Ok(read_certs_pem(path, &fsu::read(path)?)?)
}

fn check_key(
    store: &dyn KeyStore,
    handle: &KeyHandle,
    chain: &[CertificateDer<'_>],
    what: &str,
    dir: &Path,
) -> Result<()> {
    let key = store
        .info(handle)
        .map_err(|e| inconsistent(dir, format!("{what} key '{handle}': {e}")))?;
    let cert_key = public_key(&chain[0])?;
    if cert_key != key.public_key {
        return Err(inconsistent(
            dir,
            format!("{what} certificate does not match the '{handle}' key in the keystore"),
        ));
    }
    Ok(())
}

/// The CAs whose CRLs a device with these trust anchors and this LDevID
/// chain takes ([`StateDir::crl_issuers`]).
fn crl_issuers(
    anchors: &[CertificateDer<'static>],
    ldevid_chain: &[CertificateDer<'static>],
) -> Vec<CertificateDer<'static>> {
    drivesec_pki::crl::known_issuers(anchors, ldevid_chain.get(1..).unwrap_or(&[]))
}

impl StateDir {
    /// Loads and checks a state directory; refuses a corrupt or inconsistent one.
    pub fn load(dir: &Path) -> Result<StateDir> {
        require_device_file(dir)?;
        // A provisioning transaction past its commit point is finished first.
        journal::roll_forward(dir)?;
        let file = DeviceFile::load(dir)?;
        let store = open_keystore(&file.keystore, dir)?;
        let idevid_chain = certs(&dir.join(files::IDEVID))?;
        // After the tamper response the keys are gone on purpose: load what
        // is left so the device can still report its state.
        let tampered = dir.join(files::TAMPERED).exists();
        if !tampered {
            check_key(
                store.as_ref(),
                &file.idevid_key,
                &idevid_chain,
                "IDevID",
                dir,
            )?;
        }
        let mut s = StateDir {
            dir: dir.to_path_buf(),
            file,
            store,
            idevid_chain,
            ldevid_chain: None,
            trust_anchors: Vec::new(),
            crls: Vec::new(),
            crl_reported: Arc::default(),
            tampered,
        };
        match s.file.state {
            LifeCycle::Factory => {
                if !dir.join(files::CREDENTIAL).exists() {
                    return Err(inconsistent(
                        dir,
                        "factory state without factory-credential.hash: the device cannot be commissioned (factory-reset it locally)",
                    ));
                }
            }
            LifeCycle::Commissioned => {
                let handle = s.file.ldevid_key.clone().ok_or_else(|| {
                    inconsistent(dir, "commissioned but device.json names no LDevID key")
                })?;
                for f in [files::LDEVID, files::TRUST, files::ACCOUNTS] {
                    if !dir.join(f).exists() {
                        return Err(inconsistent(
                            dir,
                            format!("commissioned but {f} is missing"),
                        ));
                    }
                }
                let chain = certs(&dir.join(files::LDEVID))?;
                if !tampered {
                    check_key(s.store.as_ref(), &handle, &chain, "LDevID", dir)?;
                }
                s.ldevid_chain = Some(chain);
                s.trust_anchors = certs(&dir.join(files::TRUST))?;
                if dir.join(files::CRL).exists() {
                    let path = dir.join(files::CRL);
                    s.crls = drivesec_pki::crl::verify_crls(&fsu::read(&path)?, &s.crl_issuers())
                        .map_err(|e| {
                        inconsistent(
                            &path,
                            format!("{e} (remove the file locally and install a good CRL)"),
                        )
                    })?;
                }
                // A crash between the commit point and removing the credential: finish the job.
                if dir.join(files::CREDENTIAL).exists() {
                    fsu::shred(&dir.join(files::CREDENTIAL))?;
                }
            }
        }
        Ok(s)
    }

    /// Path of a file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CAs whose CRLs the device takes: the owner's trust anchors and
    /// the CA certificates of the LDevID chain that chain to them (the
    /// owner's issuing CA, which issues the client certificates).
    fn crl_issuers(&self) -> Vec<CertificateDer<'static>> {
        crl_issuers(
            &self.trust_anchors,
            self.ldevid_chain.as_deref().unwrap_or(&[]),
        )
    }

    /// The installed CRLs, DER, for the verifiers.
    pub fn crl_ders(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.crls.iter().map(|c| c.der.clone()).collect()
    }

    /// Checks a CRL body (PEM with one or more `X509 CRL` blocks, or one
    /// DER CRL) against this state without changing anything: each CRL
    /// parses, comes from a CA that issues the client certificates, and
    /// its number is greater than the installed CRL of the same issuer.
    /// Returns the set that would be installed (the issuers not named keep
    /// their CRLs).
    pub fn check_crl(&self, body: &[u8]) -> std::result::Result<Vec<CrlInfo>, CrlError> {
        if self.file.state != LifeCycle::Commissioned {
            return Err(CrlError::Malformed(
                "the device is not commissioned: no owner CA to check a CRL against".into(),
            ));
        }
        let new = drivesec_pki::crl::verify_crls(body, &self.crl_issuers())?;
        drivesec_pki::crl::merge(&self.crls, new)
    }

    /// This state with `crls` installed, in memory only.
    pub fn with_crls(&self, crls: Vec<CrlInfo>) -> StateDir {
        StateDir {
            crls,
            crl_reported: Arc::default(),
            ..self.clone()
        }
    }

    /// Writes this state's CRL set to `crl.pem` (atomic replace). Call after the
    /// set was checked ([`StateDir::check_crl`]) and the configuration
    /// built from it, and before adopting it.
    pub fn write_crls(&self) -> Result<()> {
        fsu::write_atomic(
            &self.path(files::CRL),
            drivesec_pki::crl::to_pem(&self.crls).as_bytes(),
            Mode::Public,
        )?;
        Ok(())
    }

    /// Checks a factory credential against the stored hash (factory state only).
    pub fn check_factory_credential(&self, candidate: &str) -> Result<bool> {
        if self.file.state != LifeCycle::Factory {
            return Ok(false);
        }
        let hash = fsu::read_to_string(&self.path(files::CREDENTIAL))?;
        Ok(credential::verify(candidate, hash.trim()))
    }

    /// Commissioning step 1: a fresh LDevID key inside the keystore and a CSR for it.
    pub fn ldevid_csr(&self, device_name: &str) -> Result<String> {
        let handle = KeyHandle::new(LDEVID_KEY)?;
        if self.store.info(&handle).is_ok() {
            // Left over from an unfinished commissioning: never reuse it.
            self.store.destroy(&handle)?;
        }
        self.store.generate(&handle, KeyAlgorithm::EcdsaP256)?;
        let signer = CertSigningKey::new(self.store.clone(), &handle)?;
        let mut p = rcgen::CertificateParams::new(vec![device_name.to_string()])
            .map_err(|e| StateError::Invalid(format!("device name '{device_name}': {e}")))?;
        p.distinguished_name
            .push(rcgen::DnType::CommonName, device_name);
        let csr = p
            .serialize_request(&signer)
            .and_then(|c| c.pem())
            .map_err(|e| StateError::Invalid(format!("CSR: {e}")))?;
        Ok(csr)
    }

    /// Renewal step 1: a fresh key in the keystore under the unused LDevID
    /// handle, and a CSR for the same device name.
    pub fn renewal_csr(&self) -> Result<(KeyHandle, String)> {
        let bad = |m: &str| StateError::Invalid(m.into());
        let current = self
            .file
            .ldevid_key
            .clone()
            .ok_or_else(|| bad("not commissioned: nothing to renew"))?;
        let name = self
            .file
            .device_name
            .clone()
            .ok_or_else(|| bad("commissioned without a device name"))?;
        let next = KeyHandle::new(if current.as_str() == LDEVID_KEY {
            LDEVID_KEY_NEXT
        } else {
            LDEVID_KEY
        })?;
        if self.store.info(&next).is_ok() {
            // Left over from an unfinished renewal: never reuse it.
            self.store.destroy(&next)?;
        }
        self.store.generate(&next, KeyAlgorithm::EcdsaP256)?;
        let signer = CertSigningKey::new(self.store.clone(), &next)?;
        let mut p = rcgen::CertificateParams::new(vec![name.clone()])
            .map_err(|e| StateError::Invalid(format!("device name '{name}': {e}")))?;
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let csr = p
            .serialize_request(&signer)
            .and_then(|c| c.pem())
            .map_err(|e| StateError::Invalid(format!("CSR: {e}")))?;
        Ok((next, csr))
    }

    /// Renewal step 2: the new chain must be for the key step 1 made, name
    /// the same device and chain to the owner's trust anchors; then the
    /// certificate and `device.json` switch together (one journalled
    /// transaction) and the old key is destroyed.
    pub fn install_renewed(&self, next: &KeyHandle, chain_pem: &str) -> Result<StateDir> {
        let chain = read_certs_pem(Path::new("ldevid_chain_pem"), chain_pem.as_bytes())?;
        check_key(self.store.as_ref(), next, &chain, "LDevID", &self.dir).map_err(|_| {
            StateError::Invalid(
                "the certificate is not for the key this device generated for the renewal".into(),
            )
        })?;
        verify_chain_with(
            &chain[0],
            &VerifyOptions {
                roots: &self.trust_anchors,
                intermediates: chain.get(1..).unwrap_or(&[]),
                crls: &self.crl_ders(),
                usage: drivesec_pki::verify::Usage::Server,
                time: None,
            },
            CrlPolicy::Device,
        )
        .map_err(|e| {
            StateError::Invalid(format!(
                "the renewed LDevID does not chain to the owner: {e}"
            ))
        })?;
        // The installed CRLs must stay verifiable with the CAs the renewed
        // state knows, or the directory would not load again.
        let issuers = crl_issuers(&self.trust_anchors, &chain);
        for (i, crl) in self.crls.iter().enumerate() {
            drivesec_pki::crl::verify_crl(&crl.der, &issuers, i + 1).map_err(|e| {
                StateError::Invalid(format!(
                    "after this renewal the installed CRL could no longer be checked ({e}): include the issuing CA of the CRL in the chain"
                ))
            })?;
        }
        let old = self.file.ldevid_key.clone();
        let mut file = self.file.clone();
        file.ldevid_key = Some(next.clone());
        let json = String::from_utf8(
            serde_json::to_vec_pretty(&file).map_err(|e| StateError::Invalid(e.to_string()))?,
        )
        .map_err(|e| StateError::Invalid(e.to_string()))?;
        journal::commit_files(
            &self.dir,
            vec![
                (files::LDEVID.to_string(), chain_pem.to_string(), false),
                (files::DEVICE.to_string(), json, false),
            ],
        )?;
        if let Some(h) = old
            && &h != next
        {
            let _ = self.store.destroy(&h);
        }
        StateDir::load(&self.dir)
    }

    /// Commissioning step 2: checks and installs the LDevID, trust anchors, CRL
    /// and the accounts store, then commits the new state. Returns the new state.
    ///
    /// Everything that can be refused is checked before the first write:
    /// the chain, the names, the CRL (parse, issuer among the owner's CAs,
    /// signature) and whatever `precheck` checks of the commissioned state
    /// as it will be loaded, in memory (drivesecd builds its TLS
    /// configurations from it). A refusal leaves the device in factory
    /// state with its credential. `precheck` and `accounts` fail with a
    /// [`StateError`]; [`StateDir::install_ownership_with`] takes the
    /// caller's own error type.
    pub fn install_ownership(
        &self,
        device_name: &str,
        ldevid_chain_pem: &str,
        trust_pem: &str,
        crl_pem: Option<&str>,
        precheck: impl FnOnce(&StateDir) -> Result<()>,
        accounts: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<StateDir> {
        self.install_ownership_with(
            device_name,
            ldevid_chain_pem,
            trust_pem,
            crl_pem,
            precheck,
            accounts,
        )
    }

    /// [`StateDir::install_ownership`], with `precheck` and `accounts`
    /// failing with the caller's error type `E`, returned as it is.
    pub fn install_ownership_with<E: From<StateError>>(
        &self,
        device_name: &str,
        ldevid_chain_pem: &str,
        trust_pem: &str,
        crl_pem: Option<&str>,
        precheck: impl FnOnce(&StateDir) -> Result<(), E>,
        accounts: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<StateDir, E> {
        let owned = self.owned(device_name, ldevid_chain_pem, trust_pem, crl_pem)?;
        precheck(&owned)?;
        let acc = self.write_ownership(&owned, ldevid_chain_pem, trust_pem, crl_pem.is_some())?;
        accounts(&acc)?;
        // The commit point.
        Ok(self.commit_ownership(&owned)?)
    }

    /// Commissioning step 2's checks: the commissioned state as it will be
    /// loaded, in memory, nothing written.
    fn owned(
        &self,
        device_name: &str,
        ldevid_chain_pem: &str,
        trust_pem: &str,
        crl_pem: Option<&str>,
    ) -> Result<StateDir> {
        let handle = KeyHandle::new(LDEVID_KEY)?;
        let chain = read_certs_pem(Path::new("ldevid_chain_pem"), ldevid_chain_pem.as_bytes())?;
        let anchors = read_certs_pem(Path::new("trust_anchors_pem"), trust_pem.as_bytes())?;
        check_key(self.store.as_ref(), &handle, &chain, "LDevID", &self.dir).map_err(|_| {
            StateError::Invalid(
                "the LDevID certificate is not for the key this device generated".into(),
            )
        })?;
        verify_chain(
            &chain[0],
            &VerifyOptions {
                roots: &anchors,
                intermediates: &chain[1..],
                crls: &[],
                usage: Usage::Server,
                time: None,
            },
        )
        .map_err(|e| {
            StateError::Invalid(format!(
                "the LDevID does not chain to the trust anchors given: {e}"
            ))
        })?;
        let summary = drivesec_pki::inspect::summarize(&chain[0])?;
        if !summary
            .subject_alt_names
            .iter()
            .any(|s| s == &format!("DNS:{device_name}"))
        {
            return Err(StateError::Invalid(format!(
                "the LDevID does not name {device_name}"
            )));
        }
        // The commissioned state, in memory: its CRLs checked against the
        // CAs it will trust, its TLS configurations built by the caller.
        let mut file = self.file.clone();
        file.state = LifeCycle::Commissioned;
        file.device_name = Some(device_name.to_string());
        file.ldevid_key = Some(handle);
        file.commissioned_at = Some(now_rfc3339());
        let crls = match crl_pem {
            Some(crl) => {
                drivesec_pki::crl::verify_crls(crl.as_bytes(), &crl_issuers(&anchors, &chain))
                    .map_err(drivesec_pki::PkiError::from)?
            }
            None => Vec::new(),
        };
        Ok(StateDir {
            file,
            ldevid_chain: Some(chain),
            trust_anchors: anchors,
            crls,
            crl_reported: Arc::default(),
            ..self.clone()
        })
    }

    /// Commissioning step 2's files before the commit point: the LDevID
    /// chain, the trust anchors, the CRLs; any old accounts store removed.
    /// Returns where the accounts store goes.
    fn write_ownership(
        &self,
        owned: &StateDir,
        ldevid_chain_pem: &str,
        trust_pem: &str,
        crl: bool,
    ) -> Result<PathBuf> {
        fsu::write_atomic(
            &self.path(files::LDEVID),
            ldevid_chain_pem.as_bytes(),
            Mode::Public,
        )?;
        fsu::write_atomic(&self.path(files::TRUST), trust_pem.as_bytes(), Mode::Public)?;
        if crl {
            owned.write_crls()?;
        } else {
            let _ = std::fs::remove_file(self.path(files::CRL));
        }
        let acc = self.path(files::ACCOUNTS);
        if acc.exists() {
            std::fs::remove_file(&acc).map_err(|e| fsu::FsError::io("remove", &acc, e))?;
        }
        Ok(acc)
    }

    /// Commissioning step 2's commit point: `device.json` says commissioned,
    /// the factory credential is shredded, and the new state is loaded.
    fn commit_ownership(&self, owned: &StateDir) -> Result<StateDir> {
        owned.file.save(&self.dir)?;
        fsu::shred(&self.path(files::CREDENTIAL))?;
        StateDir::load(&self.dir)
    }

    /// Back to factory state: the LDevID key is destroyed, the ownership
    /// files, accounts, the owner's settings and the drive parameters
    /// (`params.json`) are shredded, the audit trail is moved under
    /// `audit-archive/`, and a new one-time factory credential is made.
    /// Returns the credential. The API's reset and the offline one
    /// (`drivesecd factory-reset`) both run this.
    pub fn factory_reset(&self) -> Result<Zeroizing<String>> {
        if self.tampered {
            return Err(StateError::Invalid(
                "the device is tampered: its IDevID key was destroyed, so it must be re-provisioned by the manufacturer (drivesec factory reprovision) before it can be commissioned again".into(),
            ));
        }
        // The drive parameters first, as the runtime's reset always did:
        // a reset that fails at its first erasure leaves the owner's
        // device whole (identity, trust, accounts, settings).
        let params = self.path(files::PARAMS);
        if params.exists() {
            fsu::shred(&params)?;
        }
        // Both LDevID handles (renewal alternates between them).
        for name in [LDEVID_KEY, LDEVID_KEY_NEXT] {
            if let Ok(h) = KeyHandle::new(name)
                && self.store.info(&h).is_ok()
            {
                self.store.destroy(&h)?;
            }
        }
        for f in [
            files::LDEVID,
            files::TRUST,
            files::CRL,
            files::ACCOUNTS,
            files::FORWARDING,
            files::ACCESS_POLICY,
            files::MODBUS_RIGHTS,
            files::TLS_POLICY,
            files::MODBUS_SETTINGS,
            files::PROFILE,
        ] {
            let p = self.path(f);
            if p.exists() {
                fsu::shred(&p)?;
            }
        }
        // The trail is kept, not erased: sealed by its last checkpoint (the
        // caller signs one first) and moved under `audit-archive/`, where
        // it still verifies against the IDevID (docs/device-state.md).
        let audit = self.path(files::AUDIT);
        if audit.exists() {
            let archive = self.path(files::AUDIT_ARCHIVE);
            fsu::create_private_dir(&archive)?;
            let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
            let to = archive.join(format!("{stamp}"));
            std::fs::rename(&audit, &to).map_err(|e| fsu::FsError::io("rename", &audit, e))?;
            fsu::sync_dir(&archive)?;
            fsu::sync_dir(&self.dir)?;
            // The new trail carries on from the archived one behind a
            // signed anchor, so no sequence number is given out twice and
            // the keystore's checkpoint counter never has to go back
            // (docs/audit.md, "Factory reset keeps the trail"). Without it
            // the next start reports the trail as rewound, which is loud
            // but not fatal: the reset goes on.
            let signer = drivesec_audit::Signer {
                store: self.store.clone(),
                handle: self.file.idevid_key.clone(),
            };
            if let Err(e) = drivesec_audit::continue_after(&audit, &to, &signer) {
                tracing::error!(error = %e, "factory reset: the new audit trail could not be anchored to the archived one");
            }
        }
        let cred = credential::generate();
        let hash = credential::hash(&cred)?;
        fsu::write_atomic(
            &self.path(files::CREDENTIAL),
            hash.as_bytes(),
            Mode::Private,
        )?;
        let mut file = self.file.clone();
        file.state = LifeCycle::Factory;
        file.device_name = None;
        file.ldevid_key = None;
        file.commissioned_at = None;
        file.save(&self.dir)?;
        Ok(cred)
    }
}

impl StateDir {
    /// Records that the tamper response ran (atomically; idempotent).
    pub fn mark_tampered(&self, record: &serde_json::Value) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(record).map_err(|e| StateError::Invalid(e.to_string()))?;
        fsu::write_atomic(&self.path(files::TAMPERED), &json, Mode::Public)?;
        Ok(())
    }
}

/// Now, UTC, RFC 3339.
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_directory_without_device_json_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let e = StateDir::load(d.path()).unwrap_err();
        assert!(matches!(e, StateError::State { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "refusing the state directory {}: device.json is missing: not a provisioned device state directory",
                d.path().display()
            )
        );
    }
}
