//! The device's firmware trust store: which keys may sign images, in which
//! role, which are revoked, and how many signatures of each role an image
//! needs. It changes only through a rotation statement signed by its root key.

use std::collections::{BTreeMap, BTreeSet};

use coset::{
    CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana,
};
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeyStore, PublicKey};
use serde::{Deserialize, Serialize};

use crate::sign::{self, key_id};
use crate::{FirmwareError, Result};

/// A key the device knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKey {
    /// Key id.
    pub kid: String,
    /// Role its signatures count for (`vendor`, `oem`, ...).
    pub role: String,
    /// P-256 public key, SEC1 uncompressed, hex.
    pub public_key: String,
    /// Revoked keys are rejected.
    #[serde(default)]
    pub revoked: bool,
}

impl TrustedKey {
    /// A trusted key for `pk` in `role`.
    pub fn new(pk: &PublicKey, role: &str) -> Self {
        TrustedKey {
            kid: key_id(pk),
            role: role.into(),
            public_key: hex::encode(pk.raw()),
            revoked: false,
        }
    }

    fn public(&self) -> Result<PublicKey> {
        let raw = hex::decode(&self.public_key)
            .map_err(|_| FirmwareError::Malformed(format!("key {} is not hex", self.kid)))?;
        Ok(PublicKey::from_raw(KeyAlgorithm::EcdsaP256, raw)?)
    }

    /// [`Self::checked`], as a trust store error.
    fn well_formed(&self) -> Result<()> {
        let raw = hex::decode(&self.public_key).ok();
        if !crate::manifest::is_lower_hex(&self.public_key, 130)
            || raw.as_ref().is_none_or(|r| r.first() != Some(&0x04))
        {
            return Err(FirmwareError::InvalidTrustStore(format!(
                "key {}: public_key is not 130 lowercase hex digits of an uncompressed SEC1 point",
                self.kid
            )));
        }
        self.checked().map_err(|e| match e {
            FirmwareError::Rotation(m) => FirmwareError::InvalidTrustStore(m),
            FirmwareError::Keystore(k) => {
                FirmwareError::InvalidTrustStore(format!("key {}: {k}", self.kid))
            }
            other => other,
        })
    }

    /// Checks the key parses and its `kid` is the one derived from it (so a
    /// key cannot be registered twice under two ids and count twice).
    fn checked(&self) -> Result<()> {
        let pk = self.public()?;
        if key_id(&pk) != self.kid {
            return Err(FirmwareError::Rotation(format!(
                "key id {} does not belong to its public key",
                self.kid
            )));
        }
        Ok(())
    }
}

/// How many valid signatures from distinct keys of a role an image needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// Role.
    pub role: String,
    /// Minimum distinct signers.
    pub min: usize,
}

/// The trust store. Deserializing one validates it
/// ([`TrustStore::validate`]): a store that is read is a store that passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedTrustStore")]
pub struct TrustStore {
    /// Increases with every applied rotation.
    pub version: u64,
    /// The root of trust: signs rotation statements, never images.
    pub root: TrustedKey,
    /// Image signing keys.
    pub keys: Vec<TrustedKey>,
    /// Required signatures.
    pub policy: Vec<Requirement>,
}

/// A trust store as read, before [`TrustStore::validate`].
#[derive(Deserialize)]
struct UncheckedTrustStore {
    version: u64,
    root: TrustedKey,
    keys: Vec<TrustedKey>,
    policy: Vec<Requirement>,
}

impl TryFrom<UncheckedTrustStore> for TrustStore {
    type Error = FirmwareError;

    fn try_from(u: UncheckedTrustStore) -> Result<TrustStore> {
        let t = TrustStore {
            version: u.version,
            root: u.root,
            keys: u.keys,
            policy: u.policy,
        };
        t.validate()?;
        Ok(t)
    }
}

/// A change to the trust store, signed by the current root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// Must be the store's version + 1.
    pub version: u64,
    /// Keys to add.
    #[serde(default)]
    pub add: Vec<TrustedKey>,
    /// Key ids to revoke.
    #[serde(default)]
    pub revoke: Vec<String>,
    /// A new policy, if it changes.
    #[serde(default)]
    pub policy: Option<Vec<Requirement>>,
    /// A new root, if it changes (signed by the old one).
    #[serde(default)]
    pub new_root: Option<TrustedKey>,
}

impl TrustStore {
    /// Checks an image's signatures against the keys and the policy; returns
    /// the key ids that signed. Any signature by an unknown or revoked key,
    /// or one that does not verify, rejects the image.
    pub fn check(&self, manifest: &[u8], sigs: &[CoseSign1]) -> Result<Vec<String>> {
        // A store built in code has not been through `validate`: a policy
        // that requires nothing must not let an unsigned image through.
        if self.requires_nothing() {
            return Err(FirmwareError::EmptyPolicy);
        }
        let mut by_role: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let mut signers: Vec<String> = Vec::new();
        for (i, s) in sigs.iter().enumerate() {
            if s.payload.is_some() {
                return Err(FirmwareError::AttachedPayload(i));
            }
            let kid = sign::kid_of(s);
            if signers.contains(&kid) {
                return Err(FirmwareError::DuplicateSigner(kid));
            }
            let key = self
                .keys
                .iter()
                .find(|k| k.kid == kid)
                .ok_or_else(|| FirmwareError::UnknownKey(kid.clone()))?;
            if key.revoked {
                return Err(FirmwareError::RevokedKey(kid));
            }
            if !sign::verify_with(s, manifest, &key.public()?) {
                return Err(FirmwareError::BadSignature(kid));
            }
            // The role is in the signed header: checked once the signature is.
            let signed = sign::role_of(s).unwrap_or_default();
            if signed != key.role {
                return Err(FirmwareError::RoleMismatch {
                    kid,
                    signed,
                    trusted: key.role.clone(),
                });
            }
            by_role
                .entry(key.role.as_str())
                .or_default()
                .insert(kid.clone());
            signers.push(kid);
        }
        for req in &self.policy {
            let have = by_role
                .get(req.role.as_str())
                .map(BTreeSet::len)
                .unwrap_or(0);
            if have < req.min {
                return Err(FirmwareError::MissingApproval(format!(
                    "{} of {} '{}' signature(s)",
                    have, req.min, req.role
                )));
            }
        }
        Ok(signers)
    }

    /// Applies a rotation statement signed by the current root.
    pub fn rotate(&self, statement: &[u8]) -> Result<TrustStore> {
        let sig = CoseSign1::from_tagged_slice(statement)
            .or_else(|_| CoseSign1::from_slice(statement))
            .map_err(|e| FirmwareError::Rotation(format!("not a COSE_Sign1: {e}")))?;
        let payload = sig
            .payload
            .clone()
            .ok_or_else(|| FirmwareError::Rotation("no payload".into()))?;
        if sign::kid_of(&sig) != self.root.kid {
            return Err(FirmwareError::Rotation(format!(
                "signed by {}, not by the root {}",
                sign::kid_of(&sig),
                self.root.kid
            )));
        }
        let root_pk = self.root.public()?;
        let ok = sig
            .verify_signature(b"", |s, tbs| {
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_FIXED,
                    root_pk.raw(),
                )
                .verify(tbs, s)
                .map_err(|_| ())
            })
            .is_ok();
        if !ok {
            return Err(FirmwareError::Rotation(
                "the root's signature does not verify".into(),
            ));
        }
        let r: Rotation = ciborium::from_reader(payload.as_slice())
            .map_err(|e| FirmwareError::Rotation(format!("statement: {e}")))?;
        if r.version != self.version + 1 {
            return Err(FirmwareError::Rotation(format!(
                "statement version {} does not follow store version {} (replayed or skipped)",
                r.version, self.version
            )));
        }
        let mut next = self.clone();
        next.version = r.version;
        for k in r.add {
            k.checked()?;
            if next.keys.iter().any(|x| x.kid == k.kid) {
                return Err(FirmwareError::Rotation(format!(
                    "key {} is already known",
                    k.kid
                )));
            }
            next.keys.push(k);
        }
        for kid in r.revoke {
            let k = next.keys.iter_mut().find(|k| k.kid == kid).ok_or_else(|| {
                FirmwareError::Rotation(format!("cannot revoke unknown key {kid}"))
            })?;
            k.revoked = true;
        }
        if let Some(p) = r.policy {
            next.policy = p;
        }
        if let Some(root) = r.new_root {
            root.checked()?;
            next.root = root;
        }
        next.validate()?;
        Ok(next)
    }

    /// Whether the policy lets an image through with no signature at all
    /// (no requirement, or one of zero signatures).
    fn requires_nothing(&self) -> bool {
        self.policy.is_empty() || self.policy.iter().any(|q| q.min == 0)
    }

    /// Checks a trust store is one a device may use: a policy that
    /// requires something ([`FirmwareError::EmptyPolicy`]: no requirement,
    /// or one of zero signatures, would accept unsigned images), no role
    /// named twice in it, every key (the root too) a P-256 SEC1 uncompressed
    /// point whose `kid` is derived from it, no key id twice, the root not an
    /// image signing key, and every role non-empty.
    pub fn validate(&self) -> Result<()> {
        if self.requires_nothing() {
            return Err(FirmwareError::EmptyPolicy);
        }
        let bad = |m: String| Err(FirmwareError::InvalidTrustStore(m));
        let mut roles = BTreeSet::new();
        for q in &self.policy {
            if q.role.is_empty() || !roles.insert(q.role.as_str()) {
                return bad(format!("policy role '{}' is empty or named twice", q.role));
            }
        }
        let mut kids = BTreeSet::new();
        for k in std::iter::once(&self.root).chain(&self.keys) {
            k.well_formed()?;
            if k.role.is_empty() {
                return bad(format!("key {} has no role", k.kid));
            }
            if !kids.insert(k.kid.as_str()) {
                return bad(format!(
                    "key {} appears twice (the root signs no images)",
                    k.kid
                ));
            }
        }
        Ok(())
    }

    /// Reads a trust store from its JSON form and [validates](Self::validate) it.
    pub fn from_json(bytes: &[u8]) -> Result<TrustStore> {
        let u: UncheckedTrustStore = serde_json::from_slice(bytes)
            .map_err(|e| FirmwareError::InvalidTrustStore(e.to_string()))?;
        TrustStore::try_from(u)
    }
}

/// Signs a rotation statement with the root key (COSE_Sign1, ES256, embedded payload).
pub fn sign_rotation(r: &Rotation, store: &dyn KeyStore, root: &KeyHandle) -> Result<Vec<u8>> {
    let info = store.info(root)?;
    let mut payload = Vec::new();
    ciborium::into_writer(r, &mut payload).map_err(|e| FirmwareError::Rotation(e.to_string()))?;
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES256)
        .key_id(key_id(&info.public_key).into_bytes())
        .build();
    let mut err = None;
    let sig = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .create_signature(b"", |tbs| match store.sign(root, tbs) {
            Ok(der) => p256::ecdsa::Signature::from_der(&der)
                .map(|s| s.to_bytes().to_vec())
                .unwrap_or_default(),
            Err(e) => {
                err = Some(e);
                Vec::new()
            }
        })
        .build();
    if let Some(e) = err {
        return Err(e.into());
    }
    sig.to_tagged_vec()
        .map_err(|e| FirmwareError::Rotation(e.to_string()))
}
