//! The commissioning operations: taking ownership of a factory-state
//! device.
//!
//! The fields of the answer types are in alphabetical order: the order the
//! device has always written them in.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::route::{Body, Method, Route, schema_of};

/// The start of commissioning (`POST /api/v1/commission/begin`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommissionBeginRequest {
    /// The one-time factory credential handed over with the device (401
    /// `invalid-credentials` when wrong; repeated failures back off per
    /// client certificate and source address, 403 `locked`).
    pub factory_credential: String,
    /// The name the device will carry: the subject common name and DNS
    /// name of its LDevID certificate (400 when it cannot be one).
    pub device_name: String,
}

impl std::fmt::Debug for CommissionBeginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommissionBeginRequest")
            .field("factory_credential", &"<redacted>")
            .field("device_name", &self.device_name)
            .finish()
    }
}

/// The answer of `POST /api/v1/commission/begin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommissionBeginAnswer {
    /// A PKCS#10 certificate signing request (PEM) for the LDevID key the
    /// device just generated in its keystore, for `device_name`.
    pub csr_pem: String,
    /// The device name the CSR is for (as requested).
    pub device_name: String,
}

/// The end of commissioning (`POST /api/v1/commission/complete`), over the
/// client certificate that began it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommissionCompleteRequest {
    /// The one-time factory credential again (checked and backed off as in
    /// `begin`).
    pub factory_credential: String,
    /// The LDevID certificate issued for the CSR of `begin`, followed by
    /// its issuing CA certificates (PEM).
    pub ldevid_chain_pem: String,
    /// The owner's trust anchors (PEM): client certificates must chain to
    /// one of them once the device is commissioned.
    pub trust_anchors_pem: String,
    /// A CRL (PEM) to install with the trust anchors, with the same checks
    /// and 400 codes as `PUT /api/v1/security/crl`; absent or null for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_pem: Option<String>,
    /// The account name of the first security administrator: 1 to 32
    /// characters from `a-z`, `0-9`, `.`, `_` and `-`, starting with a
    /// letter or digit.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,31}$")]
    pub admin_username: String,
    /// The first security administrator's password, checked against the
    /// password policy.
    pub admin_password: String,
}

impl std::fmt::Debug for CommissionCompleteRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommissionCompleteRequest")
            .field("factory_credential", &"<redacted>")
            .field("ldevid_chain_pem", &self.ldevid_chain_pem)
            .field("trust_anchors_pem", &self.trust_anchors_pem)
            .field("crl_pem", &self.crl_pem)
            .field("admin_username", &self.admin_username)
            .field("admin_password", &"<redacted>")
            .finish()
    }
}

/// The device's life-cycle state after commissioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CommissionedState {
    /// Commissioned: owned, with its LDevID, the owner's trust anchors and
    /// a security administrator; the factory credential is gone.
    Commissioned,
}

/// The answer of `POST /api/v1/commission/complete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommissionCompleteAnswer {
    /// The device name, as given to `begin`.
    pub device_name: String,
    /// Always `commissioned`.
    pub state: CommissionedState,
}

/// The commissioning operations.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::Post, "/api/v1/commission/begin", "Factory state only: check the one-time factory credential and have the device generate its LDevID key; returns a CSR", Body::Json(schema_of::<CommissionBeginAnswer>))
            .tag("commissioning")
            .tls_only()
            .request(Body::Json(schema_of::<CommissionBeginRequest>))
            ,
        Route::new(Method::Post, "/api/v1/commission/complete", "Factory state only, same client certificate as begin: install the LDevID chain, owner trust anchors, optional CRL and the first security administrator; the factory credential dies", Body::Json(schema_of::<CommissionCompleteAnswer>))
            .tag("commissioning")
            .describe("Everything (chain, device name, `crl_pem` with the same checks and 400 codes as `PUT /api/v1/security/crl`, the TLS configuration of the commissioned state) is checked before the first file is written: a refusal leaves the device in factory state with its credential. Wrong factory credentials back off per client certificate and source address (403 `locked` with the wait), never for everyone.")
            .tls_only()
            .request(Body::Json(schema_of::<CommissionCompleteRequest>))
            ,
    ]
}
