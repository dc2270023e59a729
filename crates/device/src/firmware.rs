//! The device side of firmware: the boot stage at start, updates through the
//! API, trial boots confirmed by a health check, and attestation. The
//! factory's part (firmware key, first image) is drivesec-state's.

use std::sync::Arc;

use drivesec_firmware::image::Header;
use drivesec_firmware::slots::{BootDecision, BootState, Slots};
use drivesec_firmware::storage::DirStorage;
use drivesec_firmware::trust::TrustStore;
use drivesec_keystore::{KeyHandle, KeyStore};
use drivesec_state::firmware::FIRMWARE_KEY;
use drivesec_state::{StateDir, files};
use serde::Serialize;

use crate::{DeviceError, Result};

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

/// What the image or statement says is the client's problem (400); the
/// device's own keystore and file system failing is not (500): drivesec-state's
/// classification, which the factory's first image goes through too.
pub(crate) fn fw(e: drivesec_firmware::FirmwareError) -> DeviceError {
    drivesec_state::StateError::from(e).into()
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
