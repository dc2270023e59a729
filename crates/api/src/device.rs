//! The device operations: its identity and this document.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::route::{Body, Method, Route, any_object, schema_of};

/// Where the device is in its life: as shipped, or owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LifeCycle {
    /// As shipped (or after a factory reset): IDevID and the one-time
    /// factory credential; only commissioning is served.
    Factory,
    /// Owned: LDevID, the owner's trust anchors and CRL, accounts.
    Commissioned,
}

/// The version of the device API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum ApiVersion {
    /// `v1`: the paths under `/api/v1/`.
    #[serde(rename = "v1")]
    V1,
}

/// The answer of `GET /api/v1/info`: who the device is, where it is in its
/// life, and the system use notification to show before login (SR 1.12).
/// Served to any client with a TLS client certificate, also in factory
/// state and after the tamper response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceInfo {
    /// The serial number (as in the device's certificates' subject
    /// serialNumber). Informational: a client identifies a device by its
    /// certificate, never by this answer.
    pub serial_number: String,
    /// The model.
    pub model: String,
    /// The manufacturer's organisation.
    pub manufacturer: String,
    /// Factory or commissioned.
    pub state: LifeCycle,
    /// The DNS name given at commissioning (in its LDevID); null before.
    #[schema(required)]
    pub device_name: Option<String>,
    /// The system use notification (`access.banner`).
    pub banner: String,
    /// The version of the drivesecd software answering.
    pub firmware_version: String,
    /// The API version, `v1`.
    pub api: ApiVersion,
    /// Whether the tamper response has run: keys destroyed, only status
    /// reads are served (423 `tampered` to everything else).
    pub tampered: bool,
}

/// The device operations.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::Get,
            "/api/v1/openapi.json",
            "This document",
            Body::Json(any_object),
        )
        .tag("device")
        .tls_only(),
        Route::new(
            Method::Get,
            "/api/v1/info",
            "Device identity, life-cycle state and system use banner (any client with a TLS client certificate)",
            Body::Json(schema_of::<DeviceInfo>),
        )
        .tag("device")
        .tls_only(),
    ]
}
