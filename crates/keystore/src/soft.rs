//! The software crypto chip: key files encrypted at rest under a device secret.
//!
//! Layout of a store directory (all files written atomically):
//!
//! ```text
//! store.json          {"format":"drivesec-soft-keystore","version":1,"salt":B64,"check":B64}
//! keys/HANDLE.key     {"version":1,"handle":..,"algorithm":..,"public_key":B64,"nonce":B64,"ciphertext":B64}  (0600)
//! counters/NAME.ctr   {"version":1,"name":..,"nonce":B64,"ciphertext":B64}  (0600)
//! ```
//!
//! The key-encryption key is HKDF-SHA256(ikm = device secret, salt = store
//! salt, info = "drivesec soft keystore v1 kek"). Each private key (the P-256
//! scalar or the Ed25519 seed, 32 bytes) is sealed with AES-256-GCM under a
//! fresh 96-bit nonce; the associated data binds the handle, algorithm and
//! public key, so a key file cannot be renamed or re-labelled unnoticed.
//! `check` is the seal of a fixed string, so a wrong secret is reported as
//! such instead of as a damaged key.
//!
//! A counter's value (8 bytes, big-endian) is sealed the same way, with its
//! name as associated data: nobody without the device secret can forge a
//! value or move one to another name. An older copy of a counter file (or of
//! the whole directory) is still authentic, though, so putting one back
//! rolls the counter back; only a counter outside the directory (a PKCS#11
//! token, a TPM NV index) closes that.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use drivesec_fsutil::{self as fsu, Mode};
use p256::ecdsa::signature::Signer;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::{KeyAlgorithm, KeyHandle, KeyInfo, KeyStore, KeystoreError, PublicKey, Result};

const FORMAT: &str = "drivesec-soft-keystore";
const KEK_INFO: &[u8] = b"drivesec soft keystore v1 kek";
const CHECK_PLAINTEXT: &[u8] = b"drivesec soft keystore v1 check";
const COUNTER_AAD: &[u8] = b"drivesec-soft-counter/v1\0";

/// The per-device secret the store's encryption key is derived from.
///
/// On a real control unit this comes from fuses or a PUF; here it is a
/// 32-byte file readable only by its owner.
pub struct DeviceSecret(Zeroizing<[u8; 32]>);

impl DeviceSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        let mut s = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(s.as_mut());
        DeviceSecret(s)
    }

    /// Wraps 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DeviceSecret(Zeroizing::new(bytes))
    }

    /// Reads a secret file: exactly 32 bytes, mode 0600 (not group/other readable).
    pub fn load(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| fsu::FsError::io("stat", path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeystoreError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let bytes = Zeroizing::new(fsu::read(path)?);
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeystoreError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("a device secret is 32 bytes, this file has {}", bytes.len()),
            })?;
        Ok(DeviceSecret(Zeroizing::new(arr)))
    }

    /// Writes the secret to a new 0600 file (refuses to overwrite).
    pub fn save_new(&self, path: &Path) -> Result<()> {
        fsu::write_new(path, self.0.as_ref(), Mode::Private)?;
        Ok(())
    }
}

impl std::fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceSecret(<redacted>)")
    }
}

#[derive(Serialize, Deserialize)]
struct StoreFile {
    format: String,
    version: u32,
    salt: String,
    check: String,
}

#[derive(Serialize, Deserialize)]
struct CounterFile {
    version: u32,
    name: String,
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    handle: KeyHandle,
    algorithm: KeyAlgorithm,
    public_key: String,
    nonce: String,
    ciphertext: String,
}

/// A private key in memory; both inner types zeroize themselves on drop.
enum Loaded {
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl Loaded {
    fn generate(alg: KeyAlgorithm) -> Self {
        match alg {
            KeyAlgorithm::EcdsaP256 => Loaded::P256(p256::ecdsa::SigningKey::random(&mut OsRng)),
            KeyAlgorithm::Ed25519 => {
                Loaded::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng))
            }
        }
    }

    fn from_secret(alg: KeyAlgorithm, secret: &[u8]) -> Option<Self> {
        match alg {
            KeyAlgorithm::EcdsaP256 => p256::ecdsa::SigningKey::from_slice(secret)
                .ok()
                .map(Loaded::P256),
            KeyAlgorithm::Ed25519 => {
                let mut seed: [u8; 32] = secret.try_into().ok()?;
                let k = ed25519_dalek::SigningKey::from_bytes(&seed);
                seed.zeroize();
                Some(Loaded::Ed25519(k))
            }
        }
    }

    fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        match self {
            Loaded::P256(k) => Zeroizing::new(k.to_bytes().to_vec()),
            Loaded::Ed25519(k) => Zeroizing::new(k.to_bytes().to_vec()),
        }
    }

    fn public(&self) -> Result<PublicKey> {
        match self {
            Loaded::P256(k) => PublicKey::from_raw(
                KeyAlgorithm::EcdsaP256,
                k.verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec(),
            ),
            Loaded::Ed25519(k) => {
                PublicKey::from_raw(KeyAlgorithm::Ed25519, k.verifying_key().to_bytes().to_vec())
            }
        }
    }
}

struct Inner {
    /// Decrypted keys, loaded on first use and zeroized when dropped.
    cache: BTreeMap<KeyHandle, Loaded>,
    /// The key-encryption key; gone (zeroized) after `destroy_all`.
    kek: Option<Zeroizing<[u8; 32]>>,
}

impl Inner {
    fn kek(&self) -> Result<&Zeroizing<[u8; 32]>> {
        self.kek.as_ref().ok_or_else(|| {
            KeystoreError::Crypto(
                "the store was crypto-erased (tamper response): no key can be used".into(),
            )
        })
    }
}

/// A keystore in a directory, encrypted at rest under a [`DeviceSecret`].
pub struct SoftKeyStore {
    dir: PathBuf,
    /// The device secret's file, shredded by `destroy_all` (crypto-erase).
    secret_file: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// Serialises counter advances (and the erase of counters) on this
    /// directory within the process; taken before `inner`, never after.
    counters: Arc<Mutex<()>>,
}

impl std::fmt::Debug for SoftKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftKeyStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn derive_kek(secret: &DeviceSecret, salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), secret.0.as_ref());
    let mut kek = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
    let _ = hk.expand(KEK_INFO, kek.as_mut());
    kek
}

/// The process-wide counter lock of the store in `dir` (keyed by its
/// canonical path, so two spellings of one directory share it).
fn counters_lock(dir: &Path) -> Arc<Mutex<()>> {
    let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    crate::counter::store_lock(format!("soft:{}", key.display()))
}

fn counter_aad(name: &str) -> Vec<u8> {
    let mut a = COUNTER_AAD.to_vec();
    a.extend_from_slice(name.as_bytes());
    a
}

fn b64d(path: &Path, field: &str, s: &str) -> Result<Vec<u8>> {
    B64.decode(s).map_err(|_| KeystoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("field '{field}' is not base64"),
    })
}

impl SoftKeyStore {
    /// Creates a new, empty store in `dir` (created 0700; must not hold a store yet).
    pub fn create(dir: &Path, secret: &DeviceSecret) -> Result<Self> {
        fsu::create_private_dir(&dir.join("keys"))?;
        fsu::create_private_dir(dir)?;
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        let kek = derive_kek(secret, &salt);
        let check = seal(&kek, CHECK_PLAINTEXT, b"check")?;
        let file = StoreFile {
            format: FORMAT.into(),
            version: 1,
            salt: B64.encode(salt),
            check: B64.encode(check),
        };
        let json =
            serde_json::to_vec_pretty(&file).map_err(|e| KeystoreError::Crypto(e.to_string()))?;
        fsu::write_new(&dir.join("store.json"), &json, Mode::Public)?;
        Ok(SoftKeyStore {
            dir: dir.to_path_buf(),
            secret_file: None,
            inner: Mutex::new(Inner {
                cache: BTreeMap::new(),
                kek: Some(kek),
            }),
            counters: counters_lock(dir),
        })
    }

    /// A store whose device secret was destroyed (crypto-erase): `Some`
    /// only when `dir` is a store and holds no key file any more. Every
    /// key operation on it fails; listing finds nothing.
    pub fn open_erased(dir: &Path) -> Result<Option<Self>> {
        if !dir.join("store.json").exists() {
            return Ok(None);
        }
        let keys = dir.join("keys");
        let rd = match std::fs::read_dir(&keys) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fsu::FsError::io("list", &keys, e).into()),
        };
        for entry in rd {
            let entry = entry.map_err(|e| fsu::FsError::io("list", &keys, e))?;
            if entry.path().extension().is_some_and(|e| e == "key") {
                return Ok(None);
            }
        }
        Ok(Some(SoftKeyStore {
            dir: dir.to_path_buf(),
            secret_file: None,
            inner: Mutex::new(Inner {
                cache: BTreeMap::new(),
                kek: None,
            }),
            counters: counters_lock(dir),
        }))
    }

    /// Names the device secret's file, so that `destroy_all` shreds it too
    /// (crypto-erase).
    pub fn with_secret_file(mut self, path: &Path) -> Self {
        self.secret_file = Some(path.to_path_buf());
        self
    }

    /// Opens an existing store; fails with [`KeystoreError::WrongSecret`] if the
    /// secret does not belong to it.
    pub fn open(dir: &Path, secret: &DeviceSecret) -> Result<Self> {
        let path = dir.join("store.json");
        let raw = fsu::read(&path)?;
        let file: StoreFile = serde_json::from_slice(&raw).map_err(|e| KeystoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if file.format != FORMAT || file.version != 1 {
            return Err(KeystoreError::Corrupt {
                path,
                reason: format!(
                    "unsupported format {} version {}",
                    file.format, file.version
                ),
            });
        }
        let salt = b64d(&path, "salt", &file.salt)?;
        let kek = derive_kek(secret, &salt);
        let check = b64d(&path, "check", &file.check)?;
        match open_sealed(&kek, &check, b"check") {
            Some(pt) if pt.as_slice() == CHECK_PLAINTEXT => {}
            _ => {
                return Err(KeystoreError::WrongSecret {
                    path: dir.to_path_buf(),
                });
            }
        }
        Ok(SoftKeyStore {
            dir: dir.to_path_buf(),
            secret_file: None,
            inner: Mutex::new(Inner {
                cache: BTreeMap::new(),
                kek: Some(kek),
            }),
            counters: counters_lock(dir),
        })
    }

    fn counter_path(&self, name: &str) -> PathBuf {
        self.dir.join("counters").join(format!("{name}.ctr"))
    }

    /// A copy of the key-encryption key, or the crypto-erased error.
    fn kek_copy(&self) -> Result<Zeroizing<[u8; 32]>> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| KeystoreError::Crypto("keystore lock poisoned".into()))?;
        Ok(inner.kek()?.clone())
    }

    /// Whether the store was crypto-erased (its counters died with the secret).
    fn erased(&self) -> Result<bool> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| KeystoreError::Crypto("keystore lock poisoned".into()))?;
        Ok(inner.kek.is_none())
    }

    /// Reads and authenticates a counter file; `None` when there is none.
    fn read_counter(&self, kek: &[u8; 32], name: &str) -> Result<Option<u64>> {
        let path = self.counter_path(name);
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fsu::FsError::io("read", &path, e).into()),
        };
        let corrupt = |reason: String| KeystoreError::CorruptCounter {
            name: name.to_string(),
            location: path.display().to_string(),
            reason,
        };
        let cf: CounterFile = serde_json::from_slice(&raw).map_err(|e| corrupt(e.to_string()))?;
        if cf.version != 1 || cf.name != name {
            return Err(corrupt("the file does not belong to this counter".into()));
        }
        let b64 = |field: &str, v: &str| {
            B64.decode(v)
                .map_err(|_| corrupt(format!("field '{field}' is not base64")))
        };
        let nonce = b64("nonce", &cf.nonce)?;
        let ct = b64("ciphertext", &cf.ciphertext)?;
        let pt = open_with_nonce(kek, &nonce, &ct, &counter_aad(name)).ok_or_else(|| {
            corrupt(
                "authentication failed: the file was modified or belongs to another store".into(),
            )
        })?;
        let value: [u8; 8] = pt
            .as_slice()
            .try_into()
            .map_err(|_| corrupt(format!("the value is {} bytes, not 8", pt.len())))?;
        Ok(Some(u64::from_be_bytes(value)))
    }

    /// Seals `value` under the counter's name and replaces its file atomically.
    fn write_counter(&self, kek: &[u8; 32], name: &str, value: u64) -> Result<()> {
        let dir = self.dir.join("counters");
        if !dir.is_dir() {
            // Stores made before counters existed have no directory yet; its
            // entry in the store directory must be durable before the file.
            fsu::create_private_dir(&dir)?;
            fsu::sync_dir(&self.dir)?;
        }
        let sealed = seal(kek, &value.to_be_bytes(), &counter_aad(name))?;
        let cf = CounterFile {
            version: 1,
            name: name.to_string(),
            nonce: B64.encode(&sealed[..12]),
            ciphertext: B64.encode(&sealed[12..]),
        };
        let json =
            serde_json::to_vec_pretty(&cf).map_err(|e| KeystoreError::Crypto(e.to_string()))?;
        fsu::write_atomic(&self.counter_path(name), &json, Mode::Private)?;
        Ok(())
    }

    fn key_path(&self, handle: &KeyHandle) -> PathBuf {
        self.dir.join("keys").join(format!("{handle}.key"))
    }

    fn not_found(&self, handle: &KeyHandle) -> KeystoreError {
        KeystoreError::NotFound {
            handle: handle.to_string(),
            location: self.location(),
        }
    }

    fn read_key_file(&self, handle: &KeyHandle) -> Result<(PathBuf, KeyFile)> {
        let path = self.key_path(handle);
        if !path.exists() {
            return Err(self.not_found(handle));
        }
        let raw = fsu::read(&path)?;
        let kf: KeyFile = serde_json::from_slice(&raw).map_err(|e| KeystoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if kf.version != 1 || &kf.handle != handle {
            return Err(KeystoreError::Corrupt {
                path,
                reason: "the file does not belong to this handle".into(),
            });
        }
        Ok((path, kf))
    }

    /// Runs `f` with the decrypted key, loading it into the cache on first use.
    fn with_key<T>(&self, handle: &KeyHandle, f: impl FnOnce(&Loaded) -> Result<T>) -> Result<T> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| KeystoreError::Crypto("keystore lock poisoned".into()))?;
        if !inner.cache.contains_key(handle) {
            let (path, kf) = self.read_key_file(handle)?;
            let public = b64d(&path, "public_key", &kf.public_key)?;
            let nonce = b64d(&path, "nonce", &kf.nonce)?;
            let ct = b64d(&path, "ciphertext", &kf.ciphertext)?;
            let aad = aad(handle, kf.algorithm, &public);
            let secret = open_with_nonce(inner.kek()?, &nonce, &ct, &aad).ok_or_else(|| {
                KeystoreError::Corrupt {
                    path: path.clone(),
                    reason:
                        "authentication failed: the file was modified or belongs to another store"
                            .into(),
                }
            })?;
            let loaded = Loaded::from_secret(kf.algorithm, &secret).ok_or_else(|| {
                KeystoreError::Corrupt {
                    path: path.clone(),
                    reason: "decrypted key is not a valid private key".into(),
                }
            })?;
            if loaded.public()?.raw() != public.as_slice() {
                return Err(KeystoreError::Corrupt {
                    path,
                    reason: "private and public key do not match".into(),
                });
            }
            inner.cache.insert(handle.clone(), loaded);
        }
        match inner.cache.get(handle) {
            Some(k) => f(k),
            None => Err(self.not_found(handle)),
        }
    }
}

fn aad(handle: &KeyHandle, alg: KeyAlgorithm, public: &[u8]) -> Vec<u8> {
    let mut a = b"drivesec-soft-key/v1\0".to_vec();
    a.extend_from_slice(handle.as_str().as_bytes());
    a.push(0);
    a.extend_from_slice(alg.as_str().as_bytes());
    a.push(0);
    a.extend_from_slice(public);
    a
}

fn seal(kek: &[u8; 32], pt: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(kek.into());
    let ct = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: pt, aad })
        .map_err(|_| KeystoreError::Crypto("AES-GCM seal failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_sealed(kek: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < 12 {
        return None;
    }
    open_with_nonce(kek, &sealed[..12], &sealed[12..], aad)
}

fn open_with_nonce(
    kek: &[u8; 32],
    nonce: &[u8],
    ct: &[u8],
    aad: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let nonce: [u8; 12] = nonce.try_into().ok()?;
    let cipher = Aes256Gcm::new(kek.into());
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad })
        .ok()
        .map(Zeroizing::new)
}

impl KeyStore for SoftKeyStore {
    fn backend(&self) -> &'static str {
        "soft"
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn supports(&self, _alg: KeyAlgorithm) -> bool {
        true
    }

    fn generate(&self, handle: &KeyHandle, alg: KeyAlgorithm) -> Result<KeyInfo> {
        let path = self.key_path(handle);
        if path.exists() {
            return Err(KeystoreError::AlreadyExists {
                handle: handle.to_string(),
                location: self.location(),
            });
        }
        let key = Loaded::generate(alg);
        let public = key.public()?;
        let secret = key.secret_bytes();
        let aad = aad(handle, alg, public.raw());
        let sealed = {
            let inner = self
                .inner
                .lock()
                .map_err(|_| KeystoreError::Crypto("keystore lock poisoned".into()))?;
            seal(inner.kek()?, &secret, &aad)?
        };
        let kf = KeyFile {
            version: 1,
            handle: handle.clone(),
            algorithm: alg,
            public_key: B64.encode(public.raw()),
            nonce: B64.encode(&sealed[..12]),
            ciphertext: B64.encode(&sealed[12..]),
        };
        let json =
            serde_json::to_vec_pretty(&kf).map_err(|e| KeystoreError::Crypto(e.to_string()))?;
        fsu::write_new(&path, &json, Mode::Private).map_err(|e| match e {
            fsu::FsError::AlreadyExists { .. } => KeystoreError::AlreadyExists {
                handle: handle.to_string(),
                location: self.location(),
            },
            other => other.into(),
        })?;
        if let Ok(mut inner) = self.inner.lock() {
            inner.cache.insert(handle.clone(), key);
        }
        Ok(KeyInfo {
            handle: handle.clone(),
            public_key: public,
        })
    }

    fn sign(&self, handle: &KeyHandle, msg: &[u8]) -> Result<Vec<u8>> {
        self.with_key(handle, |k| {
            Ok(match k {
                Loaded::P256(sk) => {
                    let sig: p256::ecdsa::Signature = sk.sign(msg);
                    sig.to_der().as_bytes().to_vec()
                }
                Loaded::Ed25519(sk) => sk.sign(msg).to_bytes().to_vec(),
            })
        })
    }

    fn ecdh(&self, handle: &KeyHandle, peer_sec1: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.with_key(handle, |k| match k {
            Loaded::P256(sk) => {
                let peer = p256::PublicKey::from_sec1_bytes(peer_sec1)
                    .map_err(|_| KeystoreError::InvalidPeerKey("not a P-256 SEC1 point".into()))?;
                let shared = p256::ecdh::diffie_hellman(sk.as_nonzero_scalar(), peer.as_affine());
                Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
            }
            Loaded::Ed25519(_) => Err(KeystoreError::Unsupported {
                backend: "soft",
                what: "ECDH with an Ed25519 key".into(),
            }),
        })
    }

    fn info(&self, handle: &KeyHandle) -> Result<KeyInfo> {
        // Decrypting authenticates the stored public key (it is AEAD data),
        // so a swapped public key in the file is caught here, not at first use.
        let public_key = self.with_key(handle, |k| k.public())?;
        Ok(KeyInfo {
            handle: handle.clone(),
            public_key,
        })
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        let keys = self.dir.join("keys");
        let rd = std::fs::read_dir(&keys).map_err(|e| fsu::FsError::io("list", &keys, e))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| fsu::FsError::io("list", &keys, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".key")
                && let Ok(h) = KeyHandle::new(stem)
            {
                out.push(self.info(&h)?);
            }
        }
        out.sort_by(|a, b| a.handle.cmp(&b.handle));
        Ok(out)
    }

    fn destroy(&self, handle: &KeyHandle) -> Result<()> {
        let path = self.key_path(handle);
        if !path.exists() {
            return Err(self.not_found(handle));
        }
        if let Ok(mut inner) = self.inner.lock() {
            inner.cache.remove(handle);
        }
        fsu::shred(&path)?;
        Ok(())
    }

    fn destroy_all(&self) -> Result<usize> {
        // No advance may write a counter file while (or after) they go.
        let _counters = crate::counter::lock(&self.counters);
        // Forget the in-memory copies first: they zeroize on drop, and so
        // does the key-encryption key.
        if let Ok(mut inner) = self.inner.lock() {
            inner.cache.clear();
            inner.kek = None;
        }
        // Crypto-erase: without the device secret no copy of a key file
        // that survived on the medium can be decrypted.
        if let Some(secret) = &self.secret_file
            && secret.exists()
        {
            fsu::shred(secret)?;
        }
        let keys = self.dir.join("keys");
        let rd = std::fs::read_dir(&keys).map_err(|e| fsu::FsError::io("list", &keys, e))?;
        let mut n = 0;
        for entry in rd {
            let entry = entry.map_err(|e| fsu::FsError::io("list", &keys, e))?;
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "key") {
                n += 1;
            }
            fsu::shred(&p)?;
        }
        // Counters died with the secret (nothing can authenticate them any
        // more); their files go too, so the erased store reads them as unset.
        let counters = self.dir.join("counters");
        match std::fs::read_dir(&counters) {
            Ok(rd) => {
                for entry in rd {
                    let entry = entry.map_err(|e| fsu::FsError::io("list", &counters, e))?;
                    fsu::shred(&entry.path())?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fsu::FsError::io("list", &counters, e).into()),
        }
        Ok(n)
    }

    fn counter(&self, name: &str) -> Result<Option<u64>> {
        crate::check_counter_name(name)?;
        // After the crypto-erase every counter reads as never set.
        if self.erased()? {
            return Ok(None);
        }
        let kek = self.kek_copy()?;
        self.read_counter(&kek, name)
    }

    fn advance_counter(&self, name: &str, to: u64) -> Result<u64> {
        crate::check_counter_name(name)?;
        let _guard = crate::counter::lock(&self.counters)?;
        let kek = self.kek_copy()?;
        match self.read_counter(&kek, name)? {
            Some(held) if held >= to => Ok(held),
            _ => {
                self.write_counter(&kek, name, to)?;
                Ok(to)
            }
        }
    }
}
