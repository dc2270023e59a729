//! The identity operations: LDevID renewal in two steps, the new key made
//! on the device and never leaving its keystore.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::route::{Body, Method, Route, schema_of};

/// The answer of `POST /api/v1/identity/renew` (step 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenewalCsr {
    /// A PEM `CERTIFICATE REQUEST` for the new key, signed by it in the
    /// device's keystore, for the device's name. The CA takes only its
    /// public key; subject, usages and validity come from the CA's LDevID
    /// profile.
    pub csr_pem: String,
}

/// The body of `PUT /api/v1/identity/ldevid` (step 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallLdevid {
    /// The new LDevID and the CAs above it, PEM `CERTIFICATE` blocks,
    /// leaf first: for the key of step 1, chaining to the owner's trust
    /// anchors.
    pub chain_pem: String,
}

/// The answer of `PUT /api/v1/identity/ldevid`: the LDevID now in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LdevidInstalled {
    /// Its serial number, lower-case hex (null if the device could not read
    /// it back).
    #[schema(required = true)]
    pub serial: Option<String>,
    /// The end of its validity, RFC 3339 (null if the device could not read
    /// it back).
    #[schema(required = true)]
    pub not_after: Option<String>,
}

/// The identity operations.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::Post, "/api/v1/identity/renew", "LDevID renewal, step 1: the device generates a new key in its keystore (under the LDevID handle not in use) and answers `csr_pem` for the same device name", Body::Json(schema_of::<RenewalCsr>))
            .tag("identity")
            .permission("manage-trust")
            ,
        Route::new(Method::Put, "/api/v1/identity/ldevid", "LDevID renewal, step 2: install `chain_pem`, which must be for the key of step 1 and chain to the owner's trust anchors; the certificate and device.json switch in one journalled transaction, TLS follows, the old key is destroyed (409 without a renewal in progress)", Body::Json(schema_of::<LdevidInstalled>))
            .tag("identity")
            .permission("manage-trust")
            .request(Body::Json(schema_of::<InstallLdevid>))
            .error(422)
            ,
    ]
}
