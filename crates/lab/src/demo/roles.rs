//! Chapter 2: on every running device, each role logs in over its own
//! certificate, takes one action it may and one it may not.

use std::io::Write;

use drivesec_client::client::{ClientIdentity, DeviceClient, Versions};
use serde::Serialize;

use super::mark;
use crate::manifest::LabManifest;
use crate::{LabError, Result};

/// One role's session on a running device.
#[derive(Debug, Clone, Serialize)]
pub struct RoleReport {
    /// Device.
    pub device: String,
    /// Role.
    pub role: String,
    /// Login succeeded over the role's client certificate.
    pub login_ok: bool,
    /// An action the role may take, and the status it got.
    pub allowed: (String, u16),
    /// An action the role may not take, and the status it got (403 expected).
    pub denied: (String, u16),
}

/// A request of the role story: method, path and body (the route's request
/// type), whose answer's status is what the story shows.
type Action = (&'static str, &'static str, Option<ActionBody>);

/// The request body of an [`Action`].
#[derive(Serialize)]
#[serde(untagged)]
enum ActionBody {
    /// `PUT /api/v1/params/{name}`.
    Param(drivesec_api::drive::ParamWriteRequest),
    /// `POST /api/v1/users`.
    User(drivesec_api::accounts::NewUserRequest),
}

/// Per device and role: log in, one allowed action, one denied action.
pub(super) fn role_story(lab: &LabManifest, out: &mut dyn Write) -> Result<Vec<RoleReport>> {
    use drivesec_api::accounts::NewUserRequest;
    use drivesec_api::drive::ParamWriteRequest;
    let param = |value| Some(ActionBody::Param(ParamWriteRequest { value }));
    let plan: [(&str, Action, Action); 5] = [
        (
            "viewer",
            ("GET", "/api/v1/params", None),
            ("PUT", "/api/v1/params/speed-reference", param(100.0)),
        ),
        (
            "operator",
            ("PUT", "/api/v1/params/speed-reference", param(600.0)),
            ("PUT", "/api/v1/params/max-speed", param(1400.0)),
        ),
        (
            "engineer",
            ("PUT", "/api/v1/params/accel-time", param(4.0)),
            ("GET", "/api/v1/users", None),
        ),
        (
            "security-admin",
            ("GET", "/api/v1/users", None),
            ("PUT", "/api/v1/params/speed-reference", param(0.0)),
        ),
        (
            "auditor",
            ("GET", "/api/v1/audit?limit=5", None),
            (
                "POST",
                "/api/v1/users",
                Some(ActionBody::User(NewUserRequest {
                    username: "mallory".into(),
                    role: "engineer".into(),
                    password: "Aa1-aaaaaaaaaaaaaa".into(),
                })),
            ),
        ),
    ];
    let call = |c: &DeviceClient, (method, path, body): &Action| match body {
        Some(b) => c.call_with(method, path, b),
        None => c.call(method, path, None),
    };
    let _ = writeln!(
        out,
        "\nRoles on the running devices (mutual TLS with each role's certificate, then a login):"
    );
    let mut reports = Vec::new();
    for d in &lab.devices {
        let (Some(api), Some(_)) = (&d.api, &d.device_name) else {
            continue;
        };
        let addr = api
            .trim_start_matches("https://")
            .parse()
            .map_err(|_| LabError::BadAddress(format!("bad api address {api}")))?;
        for (role, allowed, denied) in &plan {
            let files = lab
                .clients
                .get(*role)
                .ok_or_else(|| LabError::Incomplete(format!("no client for {role}")))?;
            let user = lab
                .users
                .get(*role)
                .ok_or_else(|| LabError::Incomplete(format!("no account for {role}")))?;
            let id = ClientIdentity::from_files(&files.cert, &files.key)?;
            let trust = lab.device_trust(d)?;
            let mut c = DeviceClient::new(addr, Some(&id), &trust, Versions::Default)?;
            let login_ok = c.login(&user.username, &user.password).is_ok();
            let a = call(&c, allowed)?;
            let dn = call(&c, denied)?;
            let _ = c.logout();
            let _ = writeln!(
                out,
                "  {:<9} {:<15} login {}  {} {} -> {}  {} {} -> {}",
                d.name,
                role,
                mark(login_ok),
                allowed.0,
                allowed.1,
                a.status,
                denied.0,
                denied.1,
                dn.status
            );
            reports.push(RoleReport {
                device: d.name.clone(),
                role: role.to_string(),
                login_ok,
                allowed: (format!("{} {}", allowed.0, allowed.1), a.status),
                denied: (format!("{} {}", denied.0, denied.1), dn.status),
            });
        }
    }
    Ok(reports)
}
