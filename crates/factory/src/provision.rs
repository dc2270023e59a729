//! Provisioning one device: the station's run.
//!
//! It creates the device's state directory (see docs/device-state.md):
//!
//! ```text
//! device.json                  identity and keystore configuration (no secrets)
//! idevid.crt                   IDevID + manufacturer issuing CA (PEM chain)
//! manufacturer-root.crt        the manufacturer's trust anchor
//! factory-credential.hash      Argon2id PHC hash of the one-time credential (0600)
//! keystore/, device-secret     soft backend only
//! pin                          PKCS#11 backend only: the token user PIN (0600)
//! ```
//!
//! The directory is assembled under a hidden sibling name and renamed into
//! place, so a failed station run leaves no half-provisioned device; keys
//! already generated on a token are destroyed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drivesec_fsutil::{self as fsu, Mode};
use drivesec_keystore::pkcs11::{Pkcs11Uri, init_token};
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeyStore, KeystoreConfig, open_keystore};
use drivesec_pki::{Ca, CaKind, IssueRequest, Profile, SubjectKey};
use drivesec_state::{credential, files};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::{FactoryError, Result};

/// The handle of the device identity key in every device keystore.
pub const IDEVID_KEY: &str = "idevid";

/// Which crypto chip the device has.
#[derive(Debug, Clone)]
pub enum DeviceKeystore {
    /// The software chip, inside the device directory.
    Soft,
    /// An existing PKCS#11 token (URI with a `pin-source`).
    Pkcs11 {
        /// The token URI.
        uri: String,
    },
    /// An existing token whose user PIN the station holds (re-provisioning a
    /// zeroized chip): the PIN goes to `DEVICE/pin` and the stored URI names
    /// it with `pin-source=file:pin`.
    Pkcs11Token {
        /// The token URI (its `pin-source`/`pin-value` are replaced).
        uri: String,
        /// The token's user PIN.
        user_pin: Zeroizing<String>,
    },
    /// A fresh token initialised on `module` for this device (SoftHSM2 style:
    /// the module offers a free slot). Random SO and user PINs are generated;
    /// the user PIN goes to `DEVICE/pin`, the SO PIN to `so_pin_file`.
    Pkcs11NewToken {
        /// The module.
        module: PathBuf,
        /// Where to keep the SO PIN (outside the device directory).
        so_pin_file: PathBuf,
    },
}

/// What the station is asked to do.
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    /// The device state directory to create.
    pub device_dir: PathBuf,
    /// The device's serial number.
    pub serial_number: String,
    /// The product model.
    pub model: String,
    /// The crypto chip.
    pub keystore: DeviceKeystore,
}

pub use drivesec_state::{DeviceFile, LifeCycle};

/// The station's result. The credential is shown once and never stored in clear.
#[derive(Debug)]
pub struct Provisioned {
    /// The device directory.
    pub device_dir: PathBuf,
    /// Serial number.
    pub serial_number: String,
    /// IDevID certificate serial (hex).
    pub idevid_serial: String,
    /// Path of the IDevID chain.
    pub idevid_path: PathBuf,
    /// The keystore backend used.
    pub backend: &'static str,
    /// The PKCS#11 token URI (no secrets), for token-backed devices.
    pub pkcs11_uri: Option<String>,
    /// The RFC 7512 URI of the IDevID private key on the token.
    pub idevid_key_uri: Option<String>,
    /// The one-time factory credential, to hand to the owner out of band.
    pub factory_credential: Zeroizing<String>,
}

/// `n` uniformly random decimal digits (rejection sampling, no modulo bias).
fn rand_digits(n: usize) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(n));
    let mut b = [0u8; 1];
    while out.len() < n {
        OsRng.fill_bytes(&mut b);
        if b[0] < 250 {
            out.push(char::from(b'0' + b[0] % 10));
        }
    }
    out
}

fn check_serial(s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(FactoryError::BadSerial {
            serial: s.to_string(),
        });
    }
    Ok(())
}

/// Provisions one device with the manufacturer CA.
pub fn provision(mfg: &mut Ca, opts: &ProvisionOptions) -> Result<Provisioned> {
    provision_with(mfg, opts, &[])
}

pub(crate) fn check_manufacturer(mfg: &Ca) -> Result<()> {
    if mfg.kind() != CaKind::Manufacturer {
        return Err(FactoryError::NotManufacturerCa {
            dir: mfg.dir().to_path_buf(),
            kind: mfg.kind().as_str().to_string(),
        });
    }
    Ok(())
}

/// `provision`, with `extra` files written into the directory before it is
/// renamed into place (so they appear with it or not at all).
pub(crate) fn provision_with(
    mfg: &mut Ca,
    opts: &ProvisionOptions,
    extra: &[(&str, &[u8])],
) -> Result<Provisioned> {
    check_manufacturer(mfg)?;
    check_serial(&opts.serial_number)?;
    let staged = fsu::StagedDir::new(&opts.device_dir).map_err(|e| match e {
        fsu::FsError::AlreadyExists { path } => FactoryError::Exists { path },
        other => other.into(),
    })?;
    let mut key: Option<(Arc<dyn KeyStore>, KeyHandle)> = None;
    let built = build(mfg, opts, staged.path(), &mut key).and_then(|p| {
        for (name, bytes) in extra {
            fsu::write_new(&staged.path().join(name), bytes, Mode::Public)?;
        }
        Ok(p)
    });
    match built.and_then(|p| Ok((p, staged.commit()?))) {
        Ok((mut p, dir)) => {
            p.idevid_path = dir.join(files::IDEVID);
            p.device_dir = dir;
            Ok(p)
        }
        Err(e) => {
            if let Some((store, h)) = key {
                let _ = store.destroy(&h);
            }
            Err(e)
        }
    }
}

fn build(
    mfg: &mut Ca,
    opts: &ProvisionOptions,
    dir: &Path,
    created: &mut Option<(Arc<dyn KeyStore>, KeyHandle)>,
) -> Result<Provisioned> {
    let (config, store, uri) = match &opts.keystore {
        DeviceKeystore::Soft => {
            let (cfg, store) = KeystoreConfig::create_soft(dir, "keystore", "device-secret")?;
            (cfg, store, None)
        }
        DeviceKeystore::Pkcs11 { uri } => {
            let cwd = std::env::current_dir()
                .map_err(|e| fsu::FsError::io("read current directory", Path::new("."), e))?;
            let uri = Pkcs11Uri::parse(uri)?.for_storage(&cwd)?.to_string();
            let cfg = KeystoreConfig::Pkcs11 { uri: uri.clone() };
            let store = open_keystore(&cfg, dir)?;
            (cfg, store, Some(uri))
        }
        DeviceKeystore::Pkcs11Token { uri, user_pin } => {
            fsu::write_new(&dir.join("pin"), user_pin.as_bytes(), Mode::Private)?;
            let mut u = Pkcs11Uri::parse(uri)?;
            u.pin_value = None;
            u.pin_source = Some("file:pin".into());
            let cfg = KeystoreConfig::Pkcs11 { uri: u.to_string() };
            let store = open_keystore(&cfg, dir)?;
            (cfg, store, Some(u.to_string()))
        }
        DeviceKeystore::Pkcs11NewToken {
            module,
            so_pin_file,
        } => {
            let mut tag = [0u8; 3];
            OsRng.fill_bytes(&mut tag);
            // PKCS#11 token labels hold at most 32 bytes.
            let short: String = opts.serial_number.chars().take(16).collect();
            let label = format!("ds-{short}-{}", hex::encode(tag));
            let user_pin = rand_digits(12);
            let so_pin = rand_digits(12);
            fsu::write_new(&dir.join("pin"), user_pin.as_bytes(), Mode::Private)?;
            fsu::write_new(so_pin_file, so_pin.as_bytes(), Mode::Private)?;
            init_token(module, &label, &so_pin, &user_pin)?;
            let u = Pkcs11Uri {
                token: Some(label),
                module_path: Some(module.clone()),
                pin_source: Some("file:pin".into()),
                ..Pkcs11Uri::default()
            };
            let cfg = KeystoreConfig::Pkcs11 { uri: u.to_string() };
            let store = open_keystore(&cfg, dir)?;
            (cfg, store, Some(u.to_string()))
        }
    };
    let handle = KeyHandle::new(IDEVID_KEY)?;
    let info = store.generate(&handle, KeyAlgorithm::EcdsaP256)?;
    *created = Some((store.clone(), handle.clone()));
    // The firmware key: vendors wrap image content keys to it.
    drivesec_state::firmware::create_firmware_key(dir, store.as_ref())?;

    let issued = mfg.issue(&IssueRequest {
        profile: Profile::IdevId {
            serial_number: opts.serial_number.clone(),
            model: opts.model.clone(),
        },
        key: SubjectKey::Public(info.public_key),
    })?;
    fsu::write_new(
        &dir.join(files::IDEVID),
        issued.chain_pem.as_bytes(),
        Mode::Public,
    )?;
    let root = fsu::read(&mfg.root_path())?;
    fsu::write_new(&dir.join("manufacturer-root.crt"), &root, Mode::Public)?;

    let cred = credential::generate();
    let hash = credential::hash(&cred)?;
    fsu::write_new(&dir.join(files::CREDENTIAL), hash.as_bytes(), Mode::Private)?;

    let file = DeviceFile {
        format: "drivesec-device".into(),
        version: 1,
        serial_number: opts.serial_number.clone(),
        model: opts.model.clone(),
        manufacturer: mfg.organization().into(),
        state: LifeCycle::Factory,
        keystore: config,
        idevid_key: handle,
        device_name: None,
        ldevid_key: None,
        commissioned_at: None,
        hw_class: "ctrl-a".into(),
    };
    file.save(dir)
        .map_err(|e| FactoryError::DeviceFile(e.to_string()))?;
    let idevid_key_uri = match &uri {
        Some(u) => {
            let mut k = Pkcs11Uri::parse(u)?;
            k.pin_value = None;
            k.object = Some(IDEVID_KEY.into());
            k.object_type = Some("private".into());
            Some(k.to_string())
        }
        None => None,
    };
    Ok(Provisioned {
        device_dir: dir.to_path_buf(),
        serial_number: opts.serial_number.clone(),
        idevid_serial: issued.serial,
        idevid_path: dir.join(files::IDEVID),
        backend: store.backend(),
        pkcs11_uri: uri,
        idevid_key_uri,
        factory_credential: cred,
    })
}

/// Checks a candidate factory credential against a device's stored hash.
pub fn check_factory_credential(device_dir: &Path, candidate: &str) -> Result<bool> {
    let hash = fsu::read_to_string(&device_dir.join(files::CREDENTIAL))?;
    Ok(credential::verify(candidate, hash.trim()))
}
