//! The firmware side of a new state directory, as the factory writes it:
//! the device firmware key (vendors wrap content keys to its public half),
//! the firmware trust store and the first image in slot A, at least the
//! anti-rollback floor a re-provisioned directory carries over.

use std::path::Path;

use drivesec_firmware::slots::Slots;
use drivesec_firmware::storage::DirStorage;
use drivesec_firmware::trust::TrustStore;
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeyStore};

use crate::{Result, StateDir, StateError, files};

/// Handle of the device firmware key (content keys are wrapped to it).
pub const FIRMWARE_KEY: &str = "firmware";

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
pub fn security_counter_floor(dir: &Path) -> Result<u64> {
    let p = dir.join(files::REPROVISIONED);
    if !p.exists() {
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_slice(&drivesec_fsutil::read(&p)?)
        .map_err(|e| StateError::Invalid(format!("{}: {e}", p.display())))?;
    v["security_counter_floor"].as_u64().ok_or_else(|| {
        StateError::Invalid(format!("{}: no security_counter_floor number", p.display()))
    })
}

/// Factory: installs the firmware trust store and the first image (slot A).
/// The image must be at least the directory's `security_counter_floor`.
pub fn install_factory(st: &StateDir, trust: &TrustStore, image: &[u8]) -> Result<()> {
    let floor = security_counter_floor(&st.dir)?;
    let json = serde_json::to_vec_pretty(trust).map_err(|e| StateError::Invalid(e.to_string()))?;
    drivesec_fsutil::write_atomic(
        &st.path(files::FIRMWARE_TRUST),
        &json,
        drivesec_fsutil::Mode::Public,
    )?;
    let storage = DirStorage::new(&st.path(files::FIRMWARE))
        .map_err(|e| StateError::Invalid(e.to_string()))?;
    let key = KeyHandle::new(FIRMWARE_KEY)?;
    Ok(Slots::new(
        &storage,
        trust,
        &st.file.model,
        &st.file.hw_class,
        st.store.as_ref(),
        &key,
    )
    .install_initial_at_least(&mut &image[..], floor)?)
}
