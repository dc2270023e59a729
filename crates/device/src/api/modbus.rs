//! The Modbus/TCP Security rights table over HTTPS: read with
//! `read-security-settings`, replaced as a whole with
//! `write-security-settings` (checked first; a bad table changes nothing).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use drivesec_access::Permission;
use drivesec_api::modbus::{ModbusRights, ModbusRightsSet, ModbusRule};
use drivesec_audit::Outcome;
use drivesec_modbus::{Rights, Rule};
use drivesec_pki::role::Role;
use serde_json::json;

use super::{ApiError, Body, Caller, ConnInfo, Device, reply, settings_change};

/// The wire form of the device's rights table.
fn to_wire(r: &Rights) -> ModbusRights {
    ModbusRights {
        roles: r
            .roles
            .iter()
            .map(|(role, rules)| {
                let rules = rules
                    .iter()
                    .map(|x| ModbusRule {
                        functions: x.functions.clone(),
                        start: x.start,
                        end: x.end,
                    })
                    .collect();
                (role.as_str().to_string(), rules)
            })
            .collect(),
    }
}

/// The device's rights table from its wire form. A role name that cannot
/// be one is a malformed body (422), as when the table was parsed straight
/// into the device's type; the table's rules are checked when it is set.
fn from_wire(r: ModbusRights) -> Result<Rights, ApiError> {
    let mut roles = BTreeMap::new();
    for (name, rules) in r.roles {
        let role = Role::new(name).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad-json",
                format!("roles: {e}"),
            )
        })?;
        let rules = rules
            .into_iter()
            .map(|x| Rule {
                functions: x.functions,
                start: x.start,
                end: x.end,
            })
            .collect();
        roles.insert(role, rules);
    }
    Ok(Rights { roles })
}

pub(crate) async fn get_rights(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadSecuritySettings, "modbus.rights.read")?;
    dev.commissioned()?;
    Ok(reply(to_wire(&dev.modbus_rights())))
}

pub(crate) async fn set_rights(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(rights): Body<ModbusRights>,
) -> Result<Response, ApiError> {
    // A malformed body is answered before a missing session.
    let rights = from_wire(rights)?;
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(&c, Permission::WriteSecuritySettings, "modbus.rights.write")?;
    dev.commissioned()?;
    let old = dev.modbus_rights();
    let rec = dev.reserve("modbus.rights.write")?;
    if let Err(e) = dev.set_modbus_rights(rights.clone()) {
        let e = ApiError::from(e);
        rec.record(
            Device::event(&c, "modbus.rights.write", Outcome::Failure).details(
                json!({"certificate": c.conn.fingerprint, "role": c.role, "reason": e.message()}),
            ),
        )?;
        return Err(e);
    }
    rec.record(
        Device::event(&c, "modbus.rights.write", Outcome::Success).details(
            json!({"certificate": c.conn.fingerprint, "role": c.role, "old": &*old, "new": rights}),
        ),
    )?;
    Ok(reply(ModbusRightsSet {
        roles: rights.roles.len() as u64,
    }))
}
