//! The device side of firmware: the boot stage at start, updates through the
//! API, trial boots confirmed by a health check, and attestation.

use std::path::Path;
use std::sync::Arc;

use drivesec_firmware::image::Header;
use drivesec_firmware::slots::{BootDecision, BootState, Slots};
use drivesec_firmware::storage::DirStorage;
use drivesec_firmware::trust::TrustStore;
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeyStore};
use serde::Serialize;

use crate::state::{StateDir, files};
use crate::{DeviceError, Result};

/// Handle of the device firmware key (content keys are wrapped to it).
pub(crate) const FIRMWARE_KEY: &str = "firmware";

/// What is running.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Running {
    /// Slot.
    pub(crate) slot: String,
    /// Version.
    pub(crate) version: String,
    /// Security counter of the running image.
    pub(crate) security_counter: u64,
    /// Hash-tree root of its payload.
    pub(crate) root: String,
    /// Key ids that signed it.
    pub(crate) signers: Vec<String>,
    /// Whether it runs on trial (not yet confirmed).
    pub(crate) trial: bool,
}

/// Generates the firmware key in the device keystore and writes its public half.
pub fn create_firmware_key(
    dir: &Path,
    store: &dyn KeyStore,
) -> Result<drivesec_keystore::PublicKey> {
    let info = store.generate(&KeyHandle::new(FIRMWARE_KEY)?, KeyAlgorithm::EcdsaP256)?;
    drivesec_fsutil::write_atomic(
        &dir.join(files::FIRMWARE_KEY_PUB),
        info.public_key.spki_pem().as_bytes(),
        drivesec_fsutil::Mode::Public,
    )?;
    Ok(info.public_key)
}

/// The anti-rollback floor of a state directory before its first image: the
/// counter of the device it replaces (`reprovisioned.json`), else 0.
pub fn security_counter_floor(dir: &std::path::Path) -> Result<u64> {
    let p = dir.join(files::REPROVISIONED);
    if !p.exists() {
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_slice(&drivesec_fsutil::read(&p)?)
        .map_err(|e| DeviceError::Invalid(format!("{}: {e}", p.display())))?;
    v["security_counter_floor"].as_u64().ok_or_else(|| {
        DeviceError::Invalid(format!("{}: no security_counter_floor number", p.display()))
    })
}

/// Factory: installs the firmware trust store and the first image (slot A).
/// The image must be at least the directory's `security_counter_floor`.
pub fn install_factory(st: &StateDir, trust: &TrustStore, image: &[u8]) -> Result<()> {
    let floor = security_counter_floor(&st.dir)?;
    let json = serde_json::to_vec_pretty(trust).map_err(|e| DeviceError::Invalid(e.to_string()))?;
    drivesec_fsutil::write_atomic(
        &st.path(files::FIRMWARE_TRUST),
        &json,
        drivesec_fsutil::Mode::Public,
    )?;
    let storage = DirStorage::new(&st.path(files::FIRMWARE))
        .map_err(|e| DeviceError::Invalid(e.to_string()))?;
    let key = KeyHandle::new(FIRMWARE_KEY)?;
    Slots::new(
        &storage,
        trust,
        &st.file.model,
        &st.file.hw_class,
        st.store.as_ref(),
        &key,
    )
    .install_initial_at_least(&mut &image[..], floor)
    .map_err(fw)
}

/// What the image or statement says is the client's problem (400); the
/// device's own keystore and file system failing is not (500).
pub(crate) fn fw(e: drivesec_firmware::FirmwareError) -> DeviceError {
    use drivesec_firmware::FirmwareError as F;
    match e {
        // The image's ephemeral key is the client's.
        F::Keystore(k @ drivesec_keystore::KeystoreError::InvalidPeerKey(_)) => {
            DeviceError::Invalid(format!("the image's key agreement: {k}"))
        }
        F::Keystore(k) => DeviceError::Keystore(k),
        F::Fs(f) => DeviceError::Fs(f),
        other => DeviceError::Invalid(other.to_string()),
    }
}

/// The firmware side of a state directory, if it has one. Cheap to clone:
/// handlers work on a clone so the shared lock is never held across I/O.
#[derive(Clone)]
pub(crate) struct Firmware {
    dir: std::path::PathBuf,
    trust_path: std::path::PathBuf,
    storage: DirStorage,
    trust: TrustStore,
    product: String,
    hw_class: String,
    store: Arc<dyn KeyStore>,
    key: KeyHandle,
}

impl Firmware {
    /// Opens it, or `None` when the device was provisioned without firmware slots.
    pub(crate) fn open(st: &StateDir) -> Result<Option<Firmware>> {
        let trust_path = st.path(files::FIRMWARE_TRUST);
        if !trust_path.exists() || !st.path(files::FIRMWARE).join("boot.json").exists() {
            return Ok(None);
        }
        let trust: TrustStore = serde_json::from_slice(&drivesec_fsutil::read(&trust_path)?)
            .map_err(|e| DeviceError::State {
                path: trust_path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Some(Firmware {
            dir: st.path(files::FIRMWARE),
            trust_path,
            storage: DirStorage::new(&st.path(files::FIRMWARE))
                .map_err(|e| DeviceError::Invalid(e.to_string()))?,
            trust,
            product: st.file.model.clone(),
            hw_class: st.file.hw_class.clone(),
            store: st.store.clone(),
            key: KeyHandle::new(FIRMWARE_KEY)?,
        }))
    }

    fn slots(&self) -> Slots<'_> {
        Slots::new(
            &self.storage,
            &self.trust,
            &self.product,
            &self.hw_class,
            self.store.as_ref(),
            &self.key,
        )
    }

    /// The firmware trust store in force.
    pub(crate) fn trust(&self) -> &TrustStore {
        &self.trust
    }

    /// Applies a rotation statement signed by the current root of trust
    /// (keys added or revoked, policy or root replaced). The new store is
    /// written atomically; on any error nothing changes.
    pub(crate) fn rotate_trust(&mut self, statement: &[u8]) -> Result<&TrustStore> {
        let next = self.trust.rotate(statement).map_err(fw)?;
        let json =
            serde_json::to_vec_pretty(&next).map_err(|e| DeviceError::Invalid(e.to_string()))?;
        drivesec_fsutil::write_atomic(&self.trust_path, &json, drivesec_fsutil::Mode::Public)?;
        self.trust = next;
        Ok(&self.trust)
    }

    /// The boot state.
    pub(crate) fn state(&self) -> Result<BootState> {
        self.slots().state().map_err(fw)
    }

    /// Receives an update into the inactive slot (verified chunk by chunk).
    pub(crate) fn stage(
        &self,
        image: &mut (impl std::io::Read + Send),
    ) -> Result<drivesec_firmware::manifest::Manifest> {
        self.slots().stage(image).map_err(fw)
    }

    /// The boot stage, then the health check and confirmation of a trial.
    /// Returns what runs and the revert reason if one happened now.
    pub(crate) fn boot(&self, healthy: impl Fn() -> bool) -> Result<(Running, Option<String>)> {
        let before = self.state()?;
        let mut slots = self.slots();
        let decision = slots.boot().map_err(fw)?;
        let (slot, trial) = match &decision {
            BootDecision::Trial { slot, .. } => (*slot, true),
            BootDecision::Confirmed { slot, .. } => (*slot, false),
        };
        let mut trial_now = trial;
        if trial && healthy() {
            slots.confirm().map_err(fw)?;
            trial_now = false;
        }
        let after = self.state()?;
        let reverted = (after.last_revert != before.last_revert)
            .then(|| after.last_revert.clone())
            .flatten();
        let header = Header::read_file(&self.dir.join(slot.file())).map_err(fw)?;
        let signers = header
            .signatures
            .iter()
            .map(drivesec_firmware::sign::kid_of)
            .collect();
        let m = header.manifest;
        Ok((
            Running {
                slot: format!("{slot:?}").to_lowercase(),
                version: m.version,
                security_counter: m.security_counter,
                root: m.root,
                signers,
                trial: trial_now,
            },
            reverted,
        ))
    }
}
