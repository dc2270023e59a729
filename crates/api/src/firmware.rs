//! The firmware operations: status, update, reboot into the boot stage,
//! trust rotation and attestation (docs/image-format.md).
//!
//! Answer fields are declared in alphabetical order: the device wrote
//! these answers as JSON objects whose keys come out sorted, and the
//! types keep the same bytes on the wire.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::route::{Body, Method, Route, schema_of};

/// The `kind` of the attestation statement the device signs today
/// (docs/image-format.md, "Attestation").
pub const ATTESTATION_KIND: &str = "drivesec-attestation/v2";

/// One of the two firmware slots (A/B). The answers carry slots as strings
/// so that a client keeps reading an answer naming a slot it does not know;
/// this type names the values the device sends today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareSlot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl FirmwareSlot {
    /// The slot's name on the wire: `a` or `b`.
    pub fn as_str(self) -> &'static str {
        match self {
            FirmwareSlot::A => "a",
            FirmwareSlot::B => "b",
        }
    }
}

impl std::fmt::Display for FirmwareSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The firmware image the device runs, as the boot stage verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunningFirmware {
    /// The hash-tree root of its payload, hex (the manifest's `root`).
    pub root: String,
    /// Its security counter (anti-rollback).
    #[schema(minimum = 0)]
    pub security_counter: u64,
    /// The key ids whose signatures over its manifest the trust store
    /// counted.
    pub signers: Vec<String>,
    /// The slot it runs from (`a` or `b`).
    #[schema(value_type = FirmwareSlot)]
    pub slot: String,
    /// Whether it runs on trial: booted from the pending slot and not yet
    /// confirmed by the health check.
    pub trial: bool,
    /// Its version.
    pub version: String,
}

/// The A/B boot state (the device's `boot.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FirmwareBootState {
    /// The confirmed slot (`a` or `b`).
    #[schema(value_type = FirmwareSlot)]
    pub active: String,
    /// Trial boot attempts left for the pending image (3 when it is
    /// staged; counted before each attempt, so a crash loop exhausts them
    /// and reverts).
    #[schema(minimum = 0)]
    pub attempts_left: u32,
    /// The anti-rollback counter: the security counter of the last
    /// confirmed image; only a confirmed trial raises it.
    #[schema(minimum = 0)]
    pub counter: u64,
    /// Why the last pending image was abandoned (reverted); null when none
    /// was.
    #[schema(required)]
    pub last_revert: Option<String>,
    /// The slot holding a verified update waiting for a trial boot; null
    /// when nothing is pending.
    #[schema(required, value_type = Option<FirmwareSlot>)]
    pub pending: Option<String>,
}

/// A key in the firmware trust store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FirmwareTrustedKey {
    /// Its key id: 16 hex digits derived from the public key.
    pub kid: String,
    /// The P-256 public key, SEC1 uncompressed, 130 lowercase hex digits.
    pub public_key: String,
    /// Whether it is revoked: images it signs are refused.
    pub revoked: bool,
    /// The role its signatures count for (`vendor`, `oem`, ...; `root` for
    /// the root of trust). An open set: the trust store's policy names the
    /// roles.
    pub role: String,
}

/// How many valid signatures from distinct keys of one role an image needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FirmwareSignatureRequirement {
    /// The minimum number of distinct signers of the role.
    #[schema(minimum = 0)]
    pub min: u64,
    /// The role.
    pub role: String,
}

/// The device's firmware trust store: which keys may sign images, in which
/// role, which are revoked, and how many signatures an image needs. It
/// changes only through a rotation statement signed by its root
/// (`PUT /api/v1/firmware/trust`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FirmwareTrust {
    /// The image signing keys, revoked ones included.
    pub keys: Vec<FirmwareTrustedKey>,
    /// The signatures an image needs, per role.
    pub policy: Vec<FirmwareSignatureRequirement>,
    /// The root of trust: signs rotation statements, never images.
    pub root: FirmwareTrustedKey,
    /// The store's version: raised by one with every applied rotation.
    #[schema(minimum = 0)]
    pub version: u64,
}

/// The answer of `GET /api/v1/firmware`: one consistent snapshot (a reboot
/// in progress finishes first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FirmwareStatus {
    /// The A/B boot state; null on a device without firmware slots.
    #[schema(required)]
    pub boot_state: Option<FirmwareBootState>,
    /// What runs; null when no image runs from a verified slot.
    #[schema(required)]
    pub running: Option<RunningFirmware>,
    /// The firmware trust store; null on a device without firmware slots.
    #[schema(required)]
    pub trust: Option<FirmwareTrust>,
}

/// The answer of `POST /api/v1/firmware`: the image verified and is
/// pending in the inactive slot; `POST /api/v1/firmware/reboot` boots it on
/// trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FirmwareUploadAnswer {
    /// Always true: the image is pending.
    pub pending: bool,
    /// The staged image's security counter.
    #[schema(minimum = 0)]
    pub security_counter: u64,
    /// The staged image's version.
    pub staged: String,
}

/// The answer of `POST /api/v1/firmware/reboot`: what runs after the boot
/// stage (and the health check of a trial) and the boot state it left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FirmwareRebootAnswer {
    /// The boot state after the boot stage (`last_revert` says why a
    /// pending image was abandoned); null on a device without firmware
    /// slots.
    #[schema(required)]
    pub boot_state: Option<FirmwareBootState>,
    /// What runs now (`trial` false once the health check confirmed a
    /// new image); null when no image runs from a verified slot.
    #[schema(required)]
    pub running: Option<RunningFirmware>,
}

/// `PUT /api/v1/firmware/trust`: a trust rotation statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustRotationRequest {
    /// The rotation statement: a COSE_Sign1 signed by the current root of
    /// trust (docs/image-format.md), base64 (standard alphabet, padded;
    /// surrounding whitespace is ignored). Its version must be the store's
    /// version + 1.
    #[schema(format = Byte)]
    pub statement: String,
}

/// The answer of `PUT /api/v1/firmware/trust`: the rotation applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrustRotationAnswer {
    /// The trust store now in force (written before the answer).
    pub trust: FirmwareTrust,
}

/// `POST /api/v1/attest`: the caller's nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttestRequest {
    /// A fresh random nonce of 16 to 64 bytes, hex; the statement carries
    /// it as sent, so a verifier recognises a replayed answer.
    #[schema(pattern = "^([0-9a-fA-F]{2}){16,64}$")]
    pub nonce: String,
}

/// The answer of `POST /api/v1/attest`. The signature is over the exact
/// bytes that `statement` encodes: a verifier decodes `statement`, checks
/// `signature` over those bytes, and only then parses them (as an
/// `AttestationStatement` of the drivesec-api crate); it never serialises
/// a parsed statement again to check it. A verifier must check the
/// signature against the certificate the device presented in the TLS
/// handshake of the connection the answer came over, not against one the
/// answer carries (docs/image-format.md, "Attestation").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttestAnswer {
    /// The signing certificate (the device's LDevID once commissioned, its
    /// IDevID before) and its issuing chain, PEM, leaf first. Its first
    /// certificate must be byte for byte the one the connection
    /// authenticated.
    pub certificate_chain: String,
    /// ECDSA P-256 with SHA-256 over the statement's bytes, DER, base64
    /// (standard alphabet, padded), made inside the device keystore.
    #[schema(format = Byte)]
    pub signature: String,
    /// The signed statement: UTF-8 JSON (an `AttestationStatement`, `kind`
    /// `drivesec-attestation/v2`), base64 (standard alphabet, padded).
    #[schema(format = Byte)]
    pub statement: String,
}

/// The certificate an attestation statement was signed under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttestedCertificate {
    /// Its serial number, lowercase hex of the DER INTEGER's content bytes.
    pub serial: String,
    /// SHA-256 of its DER, lowercase hex.
    pub sha256: String,
}

/// What an attestation answer's `statement` decodes to (docs/image-format.md,
/// "Attestation"), for reading a statement whose signature has been
/// checked over the decoded bytes. The signature covers those bytes, not
/// this type: serialising a parsed statement again need not give the same
/// bytes (a newer device may add fields, which this type ignores), so never
/// verify a signature over a re-serialised statement. Check `kind` first:
/// another kind may mean other fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttestationStatement {
    /// The certificate whose key signed: the one the device presents in its
    /// TLS handshakes.
    pub certificate: AttestedCertificate,
    /// The DNS name given at commissioning; null before.
    #[schema(required)]
    pub device_name: Option<String>,
    /// What runs.
    pub firmware: RunningFirmware,
    /// The statement kind, [`ATTESTATION_KIND`] (`drivesec-attestation/v2`)
    /// today; a verifier refuses a kind it does not know.
    pub kind: String,
    /// The caller's nonce, hex, exactly as sent.
    pub nonce: String,
    /// The device serial number (the `serialNumber` of the signing
    /// certificate's subject).
    pub serial_number: String,
    /// When the device made the statement, UTC, RFC 3339 (the device's
    /// clock).
    pub time: String,
}

impl AttestationStatement {
    /// Parses the bytes of a statement (base64-decoded from
    /// [`AttestAnswer::statement`]) after their signature verified.
    pub fn from_signed_bytes(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }
}

/// The firmware operations.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::Get,
            "/api/v1/firmware",
            "The running firmware (version, security counter, root, signers, slot, trial), the A/B boot state and the firmware trust store",
            Body::Json(schema_of::<FirmwareStatus>),
        )
        .tag("firmware")
        .permission("read-info"),
        Route::new(
            Method::Post,
            "/api/v1/firmware",
            "Upload a firmware image (docs/image-format.md) as application/octet-stream; it is streamed, decrypted and verified chunk by chunk into the inactive slot and marked pending",
            Body::Json(schema_of::<FirmwareUploadAnswer>),
        )
        .tag("firmware")
        .permission("update-firmware")
        .describe("400 with nothing staged when any check fails (signature, approval, rollback, device binding, chunk tag); 408 `timeout` when no image data arrives for 30 s; 413 `too-large` above 1 GiB; 409 when another firmware operation is in progress or the device has no firmware slots. Without a session the body is not read: the refusal is answered at once and the connection closes.")
        .request(Body::Bytes("application/octet-stream"))
        .error(408),
        Route::new(
            Method::Post,
            "/api/v1/firmware/reboot",
            "Restart into the boot stage: a pending image boots on trial and is confirmed by the health check, or the device reverts to the previous slot",
            Body::Json(schema_of::<FirmwareRebootAnswer>),
        )
        .tag("firmware")
        .permission("update-firmware")
        .describe("409 when another firmware operation is in progress. The boot stage runs to its end even if the client goes away."),
        Route::new(
            Method::Post,
            "/api/v1/attest",
            "Signed attestation of the running firmware with the device identity key (LDevID once commissioned, else IDevID) over a caller nonce of 16 to 64 bytes (hex)",
            Body::Json(schema_of::<AttestAnswer>),
        )
        .tag("firmware")
        .permission("read-info")
        .describe("The statement (`drivesec-attestation/v2`, docs/image-format.md) names the nonce, the signing certificate (the one the device presents in its TLS handshakes), the device and the running image; verify the signature over the statement's bytes as sent, with the key of the certificate the connection authenticated. 400 when the nonce is not 16 to 64 bytes of hex; 409 when no firmware runs from a verified slot.")
        .request(Body::Json(schema_of::<AttestRequest>)),
        Route::new(
            Method::Put,
            "/api/v1/firmware/trust",
            "Apply a firmware trust rotation statement (COSE_Sign1 signed by the current root of trust, docs/image-format.md): adds or revokes signing keys, replaces the policy or the root",
            Body::Json(schema_of::<TrustRotationAnswer>),
        )
        .tag("firmware")
        .permission("manage-trust")
        .describe("The statement version must be the store version + 1 (replays refused). 400 with nothing changed when it does not verify; 409 when another firmware operation is in progress or the device has no firmware slots.")
        .request(Body::Json(schema_of::<TrustRotationRequest>)),
    ]
}
