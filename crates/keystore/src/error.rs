use std::path::PathBuf;

/// What went wrong in the crypto chip, with what a user needs to act on it.
///
/// No variant ever carries key material or a PIN.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// No key with this handle exists.
    #[error("no key '{handle}' in {location}")]
    NotFound {
        /// The handle asked for.
        handle: String,
        /// The store searched.
        location: String,
    },
    /// A key with this handle already exists.
    #[error("a key '{handle}' already exists in {location}")]
    AlreadyExists {
        /// The handle asked for.
        handle: String,
        /// The store.
        location: String,
    },
    /// The handle is not a valid key name.
    #[error("invalid key handle '{handle}': {reason}")]
    InvalidHandle {
        /// The rejected handle.
        handle: String,
        /// Why.
        reason: &'static str,
    },
    /// The name is not a valid counter name (1 to 64 characters of `[a-z0-9-]`).
    #[error("invalid counter name {name:?}: {reason}")]
    InvalidCounterName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A stored counter is damaged or forged: it does not authenticate, or
    /// does not hold one 8-byte value.
    #[error("corrupt counter '{name}' at {location}: {reason}")]
    CorruptCounter {
        /// The counter's name.
        name: String,
        /// Where it is stored: the soft backend's file, or the token.
        location: String,
        /// Why.
        reason: String,
    },
    /// The backend cannot do this.
    #[error("the {backend} keystore does not support {what}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// The operation or algorithm.
        what: String,
    },
    /// The PKCS#11 user PIN was rejected.
    #[error("wrong PIN for PKCS#11 token '{token}'")]
    WrongPin {
        /// Token label.
        token: String,
    },
    /// The PKCS#11 token is locked after too many wrong PINs.
    #[error("PKCS#11 token '{token}' is locked (too many wrong PINs)")]
    PinLocked {
        /// Token label.
        token: String,
    },
    /// No token matches the URI.
    #[error("no PKCS#11 token matches {uri} (module {module})")]
    TokenNotFound {
        /// The URI (secrets redacted).
        uri: String,
        /// The module searched.
        module: String,
    },
    /// The PKCS#11 module could not be loaded or initialised.
    #[error("cannot load PKCS#11 module {module}: {reason}")]
    Module {
        /// Module path.
        module: String,
        /// Why.
        reason: String,
    },
    /// A `pkcs11:` URI is malformed.
    #[error("invalid PKCS#11 URI: {reason}")]
    InvalidUri {
        /// Why.
        reason: String,
    },
    /// The soft keystore's device secret does not open this store.
    #[error("the device secret does not open the keystore at {path} (wrong or damaged secret)")]
    WrongSecret {
        /// The store directory.
        path: PathBuf,
    },
    /// A stored file is damaged or not what it claims to be.
    #[error("corrupt keystore file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A secret file is readable by others than its owner.
    #[error(
        "{path} is accessible to group or others (mode {mode:o}); only its owner may have access (0600)"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// A peer's public key is not a valid point.
    #[error("invalid peer public key: {0}")]
    InvalidPeerKey(String),
    /// A PKCS#11 call failed.
    #[error("PKCS#11 {op} failed: {source}")]
    Pkcs11 {
        /// What was being done.
        op: &'static str,
        /// The token's answer.
        #[source]
        source: cryptoki::error::Error,
    },
    /// A file operation failed.
    #[error(transparent)]
    Fs(#[from] drivesec_fsutil::FsError),
    /// A cryptographic operation failed unexpectedly.
    #[error("crypto failure: {0}")]
    Crypto(String),
}
