//! The PKCS#11 crypto chip: keys generated and used on a token.
//!
//! Private keys are created with `CKA_TOKEN=true`, `CKA_PRIVATE=true`,
//! `CKA_SENSITIVE=true` and `CKA_EXTRACTABLE=false`; the token therefore never
//! releases them, and the process only ever holds object handles. A key's
//! [`KeyHandle`] is stored as both `CKA_LABEL` and `CKA_ID` on the private and
//! the public object.
//!
//! ECDSA signs with `CKM_ECDSA` over a SHA-256 digest computed here (the
//! token returns `r || s`, converted to DER); Ed25519 uses `CKM_EDDSA` where
//! the token lists it; ECDH uses `CKM_ECDH1_DERIVE` with the null KDF into a
//! session-only generic secret that is read once and destroyed.
//!
//! A named counter is a private token data object (`CKO_DATA`) labelled
//! `drivesec-counter:NAME` whose `CKA_VALUE` is the value as 8 big-endian
//! bytes. It lives on the token, outside the state directory, so copying an
//! old state directory back does not roll it back. A key handle cannot
//! contain `:`, so no key operation ever meets a counter's label.

mod uri;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use uri::{Pkcs11Uri, default_module};

use crate::{KeyAlgorithm, KeyHandle, KeyInfo, KeyStore, KeystoreError, PublicKey, Result};

/// DER of the OID prime256v1 (1.2.840.10045.3.1.7).
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the OID id-Ed25519 (1.3.101.112).
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// `CKA_LABEL` of a counter's data object is this prefix and its name.
pub const COUNTER_LABEL_PREFIX: &str = "drivesec-counter:";

fn ck(op: &'static str) -> impl Fn(CkError) -> KeystoreError {
    move |source| KeystoreError::Pkcs11 { op, source }
}

/// One initialised context per module per process: PKCS#11 allows a single
/// `C_Initialize` per application, so every store on a module shares it.
fn context(module: &Path) -> Result<Arc<Pkcs11>> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Arc<Pkcs11>>>> = OnceLock::new();
    let map = CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map
        .lock()
        .map_err(|_| KeystoreError::Crypto("PKCS#11 context lock poisoned".into()))?;
    if let Some(c) = map.get(module) {
        return Ok(c.clone());
    }
    let module_err = |reason: String| KeystoreError::Module {
        module: module.display().to_string(),
        reason,
    };
    if !module.exists() {
        return Err(module_err("file not found (is softhsm2 installed?)".into()));
    }
    let ctx = Pkcs11::new(module).map_err(|e| module_err(e.to_string()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(module_err(e.to_string())),
    }
    let ctx = Arc::new(ctx);
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

fn trim_label(raw: &str) -> String {
    raw.trim_end_matches([' ', '\0']).to_string()
}

/// Lists slots, retrying a few times on CKR_GENERAL_ERROR: SoftHSM2 reports
/// it while another process creates or deletes a token in the same token
/// directory (many test processes share one); a device owns its token alone.
fn list_slots(
    f: impl Fn() -> std::result::Result<Vec<Slot>, CkError>,
) -> std::result::Result<Vec<Slot>, CkError> {
    let mut tries = 0;
    loop {
        match f() {
            Err(CkError::Pkcs11(RvError::GeneralError, _)) if tries < 5 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20 * tries));
            }
            other => return other,
        }
    }
}

/// Serialises every walk of a module's slots in the process. SoftHSM2
/// rescans its token directory on `C_GetSlotList` and aborts the process
/// (an assertion in `SlotManager::insertToken`) when two threads rescan at
/// once and both find the same new token.
fn slot_lock() -> Result<std::sync::MutexGuard<'static, ()>> {
    static SLOTS: Mutex<()> = Mutex::new(());
    SLOTS
        .lock()
        .map_err(|_| KeystoreError::Crypto("PKCS#11 slot lock poisoned".into()))
}

fn find_slot(ctx: &Pkcs11, uri: &Pkcs11Uri, module: &Path) -> Result<(Slot, String)> {
    let _slots = slot_lock()?;
    let slots =
        list_slots(|| ctx.get_slots_with_initialized_token()).map_err(ck("C_GetSlotList"))?;
    for slot in slots {
        if let Some(id) = uri.slot_id
            && slot.id() != id
        {
            continue;
        }
        // A token another process is creating or deleting right now is not ours.
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let label = trim_label(info.label());
        let matches = uri.token.as_ref().is_none_or(|t| *t == label)
            && uri
                .manufacturer
                .as_ref()
                .is_none_or(|m| *m == trim_label(info.manufacturer_id()))
            && uri
                .serial
                .as_ref()
                .is_none_or(|s| *s == trim_label(info.serial_number()))
            && uri
                .model
                .as_ref()
                .is_none_or(|m| *m == trim_label(info.model()));
        if matches {
            return Ok((slot, label));
        }
    }
    Err(KeystoreError::TokenNotFound {
        uri: uri.to_string(),
        module: module.display().to_string(),
    })
}

fn login(session: &Session, pin: &AuthPin, token: &str) -> Result<()> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
            Err(KeystoreError::WrongPin {
                token: token.into(),
            })
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(KeystoreError::PinLocked {
            token: token.into(),
        }),
        Err(e) => Err(ck("C_Login")(e)),
    }
}

/// Initialises a fresh token on the module's first free slot (as SoftHSM2
/// always offers one) with the given label, SO PIN and user PIN.
///
/// Fails if a token with the label already exists.
pub fn init_token(module: &Path, label: &str, so_pin: &str, user_pin: &str) -> Result<()> {
    // Two threads must not both claim the same free slot.
    let ctx = context(module)?;
    let _slots = slot_lock()?;
    for slot in
        list_slots(|| ctx.get_slots_with_initialized_token()).map_err(ck("C_GetSlotList"))?
    {
        // A token another process is creating or deleting right now is not ours.
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if trim_label(info.label()) == label {
            return Err(KeystoreError::AlreadyExists {
                handle: label.into(),
                location: format!("PKCS#11 module {}", module.display()),
            });
        }
    }
    let mut free = None;
    for slot in list_slots(|| ctx.get_slots_with_token()).map_err(ck("C_GetSlotList"))? {
        // A token another process is creating or deleting right now is not ours.
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            free = Some(slot);
            break;
        }
    }
    let slot = free.ok_or_else(|| KeystoreError::Module {
        module: module.display().to_string(),
        reason: "no free slot to initialise a token in".into(),
    })?;
    let so = AuthPin::new(so_pin.into());
    ctx.init_token(slot, &so, label)
        .map_err(ck("C_InitToken"))?;
    let session = ctx.open_rw_session(slot).map_err(ck("C_OpenSession"))?;
    session
        .login(UserType::So, Some(&so))
        .map_err(ck("C_Login(SO)"))?;
    session
        .init_pin(&AuthPin::new(user_pin.into()))
        .map_err(ck("C_InitPIN"))?;
    session.logout().map_err(ck("C_Logout"))?;
    Ok(())
}

fn counter_label(name: &str) -> Vec<u8> {
    format!("{COUNTER_LABEL_PREFIX}{name}").into_bytes()
}

/// The mechanisms [`Pkcs11KeyStore`] needs for keys of `alg`.
fn mechanisms_for(alg: KeyAlgorithm) -> &'static [MechanismType] {
    match alg {
        KeyAlgorithm::EcdsaP256 => &[
            MechanismType::ECC_KEY_PAIR_GEN,
            MechanismType::ECDSA,
            MechanismType::ECDH1_DERIVE,
        ],
        KeyAlgorithm::Ed25519 => &[
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            MechanismType::EDDSA,
        ],
    }
}

/// The mechanisms of [`mechanisms_for`] the token offers, asked one by one
/// (`C_GetMechanismInfo`). Not `C_GetMechanismList`: cryptoki converts every
/// type that list holds and logs each one it has no name for (SoftHSM2 has
/// about 30, vendor-defined and newer ones) at ERROR level, so every open
/// of a keystore wrote that many false errors to the daemon's log. A type
/// the token does not offer is simply absent here.
fn needed_mechanisms(ctx: &Pkcs11, slot: Slot) -> Vec<MechanismType> {
    [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519]
        .into_iter()
        .flat_map(mechanisms_for)
        .copied()
        .filter(|m| ctx.get_mechanism_info(slot, *m).is_ok())
        .collect()
}

/// A keystore on one PKCS#11 token, logged in as the user.
pub struct Pkcs11KeyStore {
    uri: Pkcs11Uri,
    token: String,
    slot: Slot,
    mechanisms: Vec<MechanismType>,
    session: Mutex<Session>,
    /// Serialises counter reads and advances on this token within the
    /// process; taken before `session`, never after.
    counters: Arc<Mutex<()>>,
    _ctx: Arc<Pkcs11>,
}

impl std::fmt::Debug for Pkcs11KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11KeyStore")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl Pkcs11KeyStore {
    /// Opens the token the URI selects and logs in with its PIN
    /// (`pin-source`, resolved against `base`, or `pin-value`).
    pub fn open(uri: &Pkcs11Uri, base: &Path) -> Result<Self> {
        let module = uri.module();
        let ctx = context(&module)?;
        let (slot, token) = find_slot(&ctx, uri, &module)?;
        let pin = uri.pin(base)?.ok_or_else(|| KeystoreError::InvalidUri {
            reason: format!("{uri} names no PIN (add pin-source=FILE)"),
        })?;
        let mechanisms = needed_mechanisms(&ctx, slot);
        let session = ctx.open_rw_session(slot).map_err(ck("C_OpenSession"))?;
        login(&session, &AuthPin::new(pin.as_str().into()), &token)?;
        let counters = crate::counter::store_lock(format!(
            "pkcs11:{}:{}:{token}",
            module.display(),
            slot.id()
        ));
        Ok(Pkcs11KeyStore {
            uri: uri.clone(),
            token,
            slot,
            mechanisms,
            session: Mutex::new(session),
            counters,
            _ctx: ctx,
        })
    }

    /// Parses `uri` and opens it.
    pub fn open_uri(uri: &str, base: &Path) -> Result<Self> {
        Self::open(&Pkcs11Uri::parse(uri)?, base)
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.token
    }

    /// The id of the slot the token was found in when the store was opened.
    pub fn slot_id(&self) -> u64 {
        self.slot.id()
    }

    /// The RFC 7512 URI of one key's private object on this token
    /// (`...;object=HANDLE;type=private`), without any `pin-value`.
    pub fn key_uri(&self, handle: &KeyHandle) -> String {
        let mut u = self.uri.clone();
        u.pin_value = None;
        u.token = Some(self.token.clone());
        u.object = Some(handle.to_string());
        u.object_type = Some("private".into());
        u.to_string()
    }

    /// Opens the token a key URI names and returns it with the key's handle
    /// (the URI's `object` attribute), checking that the key exists.
    pub fn open_key(uri: &str, base: &Path) -> Result<(Self, KeyHandle)> {
        let u = Pkcs11Uri::parse(uri)?;
        if u.object_type.as_deref().is_some_and(|t| t != "private") {
            return Err(KeystoreError::InvalidUri {
                reason: format!(
                    "{u} names a {} object, not a private key",
                    u.object_type.as_deref().unwrap_or("")
                ),
            });
        }
        let object = u.object.clone().ok_or_else(|| KeystoreError::InvalidUri {
            reason: format!("{u} names no key (add object=HANDLE)"),
        })?;
        let handle = KeyHandle::new(object)?;
        let store = Self::open(&u, base)?;
        store.info(&handle)?;
        Ok((store, handle))
    }

    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>> {
        self.session
            .lock()
            .map_err(|_| KeystoreError::Crypto("PKCS#11 session lock poisoned".into()))
    }

    fn find(
        &self,
        s: &Session,
        class: ObjectClass,
        handle: &KeyHandle,
    ) -> Result<Option<ObjectHandle>> {
        let objs = s
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Token(true),
                Attribute::Label(handle.as_str().as_bytes().to_vec()),
            ])
            .map_err(ck("C_FindObjects"))?;
        Ok(objs.into_iter().next())
    }

    fn require(&self, s: &Session, class: ObjectClass, handle: &KeyHandle) -> Result<ObjectHandle> {
        self.find(s, class, handle)?
            .ok_or_else(|| KeystoreError::NotFound {
                handle: handle.to_string(),
                location: self.location(),
            })
    }

    fn public_of(&self, s: &Session, handle: &KeyHandle) -> Result<PublicKey> {
        let obj = self.require(s, ObjectClass::PUBLIC_KEY, handle)?;
        let attrs = s
            .get_attributes(
                obj,
                &[
                    AttributeType::KeyType,
                    AttributeType::EcPoint,
                    AttributeType::EcParams,
                ],
            )
            .map_err(ck("C_GetAttributeValue"))?;
        let mut kt = None;
        let mut point = None;
        let mut params = None;
        for a in attrs {
            match a {
                Attribute::KeyType(k) => kt = Some(k),
                Attribute::EcPoint(p) => point = Some(p),
                Attribute::EcParams(p) => params = Some(p),
                _ => {}
            }
        }
        let (alg, want) = match (kt, params.as_deref()) {
            (Some(KeyType::EC), Some(P256_PARAMS)) => (KeyAlgorithm::EcdsaP256, 65),
            (Some(KeyType::EC_EDWARDS), Some(ED25519_PARAMS)) => (KeyAlgorithm::Ed25519, 32),
            // Some tokens name the Edwards curve by PrintableString.
            (Some(KeyType::EC_EDWARDS), Some(b"\x13\x0cedwards25519")) => {
                (KeyAlgorithm::Ed25519, 32)
            }
            (kt, params) => {
                return Err(KeystoreError::Unsupported {
                    backend: "pkcs11",
                    what: format!("key '{handle}' of type {kt:?} on curve {params:02x?}"),
                });
            }
        };
        let point = point.unwrap_or_default();
        // CKA_EC_POINT is a DER OCTET STRING around the point on most tokens.
        let raw = if point.len() == want + 2 && point[0] == 0x04 && usize::from(point[1]) == want {
            point[2..].to_vec()
        } else {
            point
        };
        PublicKey::from_raw(alg, raw)
    }

    /// Every data object of the counter (more than one only after a
    /// replacement was cut short) with its value. An object that vanishes
    /// between the search and the read was replaced by another session (the
    /// new object is created first), so the search is simply repeated.
    fn counter_objects(&self, s: &Session, name: &str) -> Result<Vec<(ObjectHandle, u64)>> {
        let mut tries = 0;
        loop {
            match self.counter_objects_once(s, name) {
                Err(KeystoreError::Pkcs11 {
                    source: CkError::Pkcs11(RvError::ObjectHandleInvalid, _),
                    ..
                }) if tries < 5 => tries += 1,
                other => return other,
            }
        }
    }

    fn counter_objects_once(&self, s: &Session, name: &str) -> Result<Vec<(ObjectHandle, u64)>> {
        let objs = s
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Label(counter_label(name)),
            ])
            .map_err(ck("C_FindObjects"))?;
        let mut out = Vec::with_capacity(objs.len());
        for obj in objs {
            let attrs = s
                .get_attributes(obj, &[AttributeType::Value])
                .map_err(ck("C_GetAttributeValue"))?;
            let value = match attrs.into_iter().next() {
                Some(Attribute::Value(v)) => v,
                _ => Vec::new(),
            };
            let value: [u8; 8] =
                value
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeystoreError::CorruptCounter {
                        name: name.to_string(),
                        location: self.location(),
                        reason: format!(
                            "its data object holds {} bytes, not an 8-byte value",
                            value.len()
                        ),
                    })?;
            out.push((obj, u64::from_be_bytes(value)));
        }
        Ok(out)
    }

    fn private_algorithm(&self, s: &Session, obj: ObjectHandle) -> Result<KeyAlgorithm> {
        let attrs = s
            .get_attributes(obj, &[AttributeType::KeyType])
            .map_err(ck("C_GetAttributeValue"))?;
        match attrs.first() {
            Some(Attribute::KeyType(KeyType::EC)) => Ok(KeyAlgorithm::EcdsaP256),
            Some(Attribute::KeyType(KeyType::EC_EDWARDS)) => Ok(KeyAlgorithm::Ed25519),
            other => Err(KeystoreError::Unsupported {
                backend: "pkcs11",
                what: format!("private key type {other:?}"),
            }),
        }
    }
}

impl KeyStore for Pkcs11KeyStore {
    fn backend(&self) -> &'static str {
        "pkcs11"
    }

    fn location(&self) -> String {
        let mut u = self.uri.clone();
        u.pin_value = None;
        u.to_string()
    }

    fn supports(&self, alg: KeyAlgorithm) -> bool {
        mechanisms_for(alg)
            .iter()
            .all(|m| self.mechanisms.contains(m))
    }

    fn generate(&self, handle: &KeyHandle, alg: KeyAlgorithm) -> Result<KeyInfo> {
        if !self.supports(alg) {
            return Err(KeystoreError::Unsupported {
                backend: "pkcs11",
                what: format!("{alg} keys on token '{}'", self.token),
            });
        }
        let s = self.session()?;
        if self.find(&s, ObjectClass::PRIVATE_KEY, handle)?.is_some()
            || self.find(&s, ObjectClass::PUBLIC_KEY, handle)?.is_some()
        {
            return Err(KeystoreError::AlreadyExists {
                handle: handle.to_string(),
                location: self.location(),
            });
        }
        let label = handle.as_str().as_bytes().to_vec();
        let (mech, params, derive) = match alg {
            KeyAlgorithm::EcdsaP256 => (Mechanism::EccKeyPairGen, P256_PARAMS, true),
            KeyAlgorithm::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, ED25519_PARAMS, false),
        };
        let public_tpl = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::EcParams(params.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(label.clone()),
        ];
        let private_tpl = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(derive),
            Attribute::Label(label.clone()),
            Attribute::Id(label),
        ];
        s.generate_key_pair(&mech, &public_tpl, &private_tpl)
            .map_err(ck("C_GenerateKeyPair"))?;
        let public_key = self.public_of(&s, handle)?;
        Ok(KeyInfo {
            handle: handle.clone(),
            public_key,
        })
    }

    fn sign(&self, handle: &KeyHandle, msg: &[u8]) -> Result<Vec<u8>> {
        let s = self.session()?;
        let key = self.require(&s, ObjectClass::PRIVATE_KEY, handle)?;
        match self.private_algorithm(&s, key)? {
            KeyAlgorithm::EcdsaP256 => {
                let digest = Sha256::digest(msg);
                let rs = s
                    .sign(&Mechanism::Ecdsa, key, &digest)
                    .map_err(ck("C_Sign"))?;
                let sig = p256::ecdsa::Signature::from_slice(&rs).map_err(|_| {
                    KeystoreError::Crypto("token returned a malformed ECDSA signature".into())
                })?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            KeyAlgorithm::Ed25519 => s
                .sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    key,
                    msg,
                )
                .map_err(ck("C_Sign")),
        }
    }

    fn ecdh(&self, handle: &KeyHandle, peer_sec1: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let s = self.session()?;
        let key = self.require(&s, ObjectClass::PRIVATE_KEY, handle)?;
        if self.private_algorithm(&s, key)? != KeyAlgorithm::EcdsaP256 {
            return Err(KeystoreError::Unsupported {
                backend: "pkcs11",
                what: "ECDH with an Ed25519 key".into(),
            });
        }
        p256::PublicKey::from_sec1_bytes(peer_sec1)
            .map_err(|_| KeystoreError::InvalidPeerKey("not a P-256 SEC1 point".into()))?;
        let params = Ecdh1DeriveParams::new(EcKdf::null(), peer_sec1);
        let tpl = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::ValueLen(32.into()),
        ];
        let secret = s
            .derive_key(&Mechanism::Ecdh1Derive(params), key, &tpl)
            .map_err(ck("C_DeriveKey"))?;
        let value = s.get_attributes(secret, &[AttributeType::Value]);
        let destroyed = s.destroy_object(secret);
        let value = value.map_err(ck("C_GetAttributeValue"))?;
        destroyed.map_err(ck("C_DestroyObject"))?;
        match value.into_iter().next() {
            Some(Attribute::Value(v)) => Ok(Zeroizing::new(v)),
            _ => Err(KeystoreError::Crypto(
                "token returned no shared secret".into(),
            )),
        }
    }

    fn info(&self, handle: &KeyHandle) -> Result<KeyInfo> {
        let s = self.session()?;
        self.require(&s, ObjectClass::PRIVATE_KEY, handle)?;
        Ok(KeyInfo {
            handle: handle.clone(),
            public_key: self.public_of(&s, handle)?,
        })
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        let s = self.session()?;
        let objs = s
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Token(true),
            ])
            .map_err(ck("C_FindObjects"))?;
        let mut out = Vec::new();
        for obj in objs {
            let attrs = s
                .get_attributes(obj, &[AttributeType::Label])
                .map_err(ck("C_GetAttributeValue"))?;
            if let Some(Attribute::Label(l)) = attrs.first()
                && let Ok(h) = KeyHandle::new(String::from_utf8_lossy(l).into_owned())
            {
                let public_key = self.public_of(&s, &h)?;
                out.push(KeyInfo {
                    handle: h,
                    public_key,
                });
            }
        }
        out.sort_by(|a, b| a.handle.cmp(&b.handle));
        Ok(out)
    }

    fn destroy(&self, handle: &KeyHandle) -> Result<()> {
        let s = self.session()?;
        let objs = s
            .find_objects(&[
                Attribute::Token(true),
                Attribute::Label(handle.as_str().as_bytes().to_vec()),
            ])
            .map_err(ck("C_FindObjects"))?;
        if objs.is_empty() {
            return Err(KeystoreError::NotFound {
                handle: handle.to_string(),
                location: self.location(),
            });
        }
        for o in objs {
            s.destroy_object(o).map_err(ck("C_DestroyObject"))?;
        }
        Ok(())
    }

    fn destroy_all(&self) -> Result<usize> {
        let s = self.session()?;
        let private = s
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Token(true),
            ])
            .map_err(ck("C_FindObjects"))?
            .len();
        // Every token object visible to the user goes: keys, certificates,
        // data, and with them the counters (as on the soft backend, whose
        // counters die with the device secret).
        let all = s
            .find_objects(&[Attribute::Token(true)])
            .map_err(ck("C_FindObjects"))?;
        for o in all {
            s.destroy_object(o).map_err(ck("C_DestroyObject"))?;
        }
        Ok(private)
    }

    fn counter(&self, name: &str) -> Result<Option<u64>> {
        crate::check_counter_name(name)?;
        // Reads take the lock too: SoftHSM2 fails a C_CreateObject with
        // CKR_GENERAL_ERROR while another session of the process searches.
        let _guard = crate::counter::lock(&self.counters)?;
        let s = self.session()?;
        Ok(self
            .counter_objects(&s, name)?
            .into_iter()
            .map(|(_, v)| v)
            .max())
    }

    fn advance_counter(&self, name: &str, to: u64) -> Result<u64> {
        crate::check_counter_name(name)?;
        let _guard = crate::counter::lock(&self.counters)?;
        // One session lock from the read to the write: the advance is atomic.
        let s = self.session()?;
        let objs = self.counter_objects(&s, name)?;
        if let Some(held) = objs.iter().map(|(_, v)| *v).max()
            && held >= to
        {
            return Ok(held);
        }
        let value = Attribute::Value(to.to_be_bytes().to_vec());
        // In place when the token allows it (SoftHSM2 does not: CKA_VALUE of
        // a data object is read-only there); then any duplicates a cut-short
        // replacement left are lower than the kept object and can go.
        if let Some(((keep, _), rest)) = objs.split_first()
            && s.update_attributes(*keep, std::slice::from_ref(&value))
                .is_ok()
        {
            for (o, _) in rest {
                let _ = s.destroy_object(*o);
            }
            return Ok(to);
        }
        // Otherwise the new object first, then the old ones: a crash in
        // between leaves duplicates, and reads take their maximum.
        s.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Modifiable(true),
            Attribute::Label(counter_label(name)),
            value,
        ])
        .map_err(ck("C_CreateObject"))?;
        for (o, _) in objs {
            // Best effort: a leftover holds a lower value, which reads ignore.
            let _ = s.destroy_object(o);
        }
        Ok(to)
    }
}
