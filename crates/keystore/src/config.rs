use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::pkcs11::{Pkcs11KeyStore, Pkcs11Uri};
use crate::soft::{DeviceSecret, SoftKeyStore};
use crate::{KeyStore, Result};

/// Where a component's keys live, as stored in its configuration files.
///
/// Relative paths (including a relative `pin-source`) resolve against the
/// directory of the file that holds the configuration, so a state directory
/// can be moved as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum KeystoreConfig {
    /// The software chip: an encrypted key directory and its device secret.
    Soft {
        /// The store directory.
        dir: PathBuf,
        /// The 32-byte device secret file (0600).
        secret_file: PathBuf,
    },
    /// A PKCS#11 token, selected by an RFC 7512 URI that names its PIN source.
    Pkcs11 {
        /// The `pkcs11:` URI (never with `pin-value`; use `pin-source`).
        uri: String,
    },
}

impl KeystoreConfig {
    /// The backend's short name.
    pub fn backend(&self) -> &'static str {
        match self {
            KeystoreConfig::Soft { .. } => "soft",
            KeystoreConfig::Pkcs11 { .. } => "pkcs11",
        }
    }

    /// Creates a new soft store at `base/dir` with a fresh secret at `base/secret_file`.
    pub fn create_soft(
        base: &Path,
        dir: &str,
        secret_file: &str,
    ) -> Result<(Self, Arc<dyn KeyStore>)> {
        let secret = DeviceSecret::generate();
        secret.save_new(&base.join(secret_file))?;
        let store = SoftKeyStore::create(&base.join(dir), &secret)?
            .with_secret_file(&base.join(secret_file));
        Ok((
            KeystoreConfig::Soft {
                dir: dir.into(),
                secret_file: secret_file.into(),
            },
            Arc::new(store),
        ))
    }
}

/// Opens the keystore a configuration names; relative paths resolve against `base`.
pub fn open_keystore(cfg: &KeystoreConfig, base: &Path) -> Result<Arc<dyn KeyStore>> {
    match cfg {
        KeystoreConfig::Soft { dir, secret_file } => {
            let secret_path = base.join(secret_file);
            // After the tamper response's crypto-erase the secret is gone
            // and so is every key: the store opens, empty and unusable, so
            // the device can still start and report its state.
            if !secret_path.exists()
                && let Some(erased) = SoftKeyStore::open_erased(&base.join(dir))?
            {
                return Ok(Arc::new(erased));
            }
            let secret = DeviceSecret::load(&secret_path)?;
            Ok(Arc::new(
                SoftKeyStore::open(&base.join(dir), &secret)?
                    .with_secret_file(&base.join(secret_file)),
            ))
        }
        KeystoreConfig::Pkcs11 { uri } => Ok(Arc::new(Pkcs11KeyStore::open(
            &Pkcs11Uri::parse(uri)?,
            base,
        )?)),
    }
}
