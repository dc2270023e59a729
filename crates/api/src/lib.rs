//! The drivesecd device API contract.
//!
//! Every operation of the device's HTTPS API has an entry in [`routes`]
//! with its request and answer types, which live here too. The device's
//! handlers and every client use these types, so neither side builds or
//! reads the API's JSON by hand, and docs/openapi.json is generated from
//! them ([`openapi::document_json`]; a test keeps the checked-in file
//! equal to it).

pub mod error;
pub mod openapi;
pub mod route;

pub mod accounts;
pub mod audit;
pub mod commissioning;
pub mod device;
pub mod drive;
pub mod firmware;
pub mod identity;
pub mod modbus;
pub mod provisioning;
pub mod security;
pub mod sessions;

pub use error::ErrorBody;
pub use route::{Method, Route};

/// Every operation of the API, in the order the document lists them.
pub fn routes() -> Vec<Route> {
    [
        device::routes(),
        commissioning::routes(),
        sessions::routes(),
        accounts::routes(),
        drive::routes(),
        audit::routes(),
        security::routes(),
        firmware::routes(),
        modbus::routes(),
        provisioning::routes(),
        identity::routes(),
    ]
    .concat()
}
