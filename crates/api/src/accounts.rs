//! The accounts operations: accounts, their roles, locks and passwords, and
//! the roles themselves.
//!
//! The fields of the answer types are in alphabetical order: the order the
//! device has always written them in.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::route::{Body, Method, Route, schema_of};

/// One thing an account may be allowed to do on the device. A role is a
/// set of these; every operation requires at most one
/// (docs/permissions.md has the matrix of the built-in roles).
//
// The one definition: drivesec-access (roles, grant checks, the account
// store, whose file holds these names) uses it as `drivesec_access::Permission`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// Read device identity, firmware version and status.
    ReadInfo,
    /// Read drive parameters.
    ReadParams,
    /// Change operational parameters (set-points, ramps).
    WriteParamsOperation,
    /// Change protective limits (current, speed, torque).
    WriteParamsLimits,
    /// Change motor data and control-loop parameters.
    WriteParamsMotor,
    /// Start, stop and reset the drive.
    DriveControl,
    /// List accounts and their roles.
    ReadUsers,
    /// Create, remove and unlock accounts, reset passwords, assign roles.
    ManageUsers,
    /// Create, change and remove custom roles.
    ManageRoles,
    /// List active sessions.
    ReadSessions,
    /// Terminate other users' sessions.
    TerminateSessions,
    /// Read security settings (policies, trust configuration).
    ReadSecuritySettings,
    /// Change security settings.
    WriteSecuritySettings,
    /// Manage certificates, trust anchors and revocation lists.
    ManageTrust,
    /// Read and export the audit trail.
    ReadAudit,
    /// Configure forwarding of the audit trail to a remote collector.
    ConfigureAuditForwarding,
    /// Erase configuration, accounts and keys (factory reset).
    FactoryReset,
    /// Install firmware updates and restart into them.
    UpdateFirmware,
}

impl Permission {
    /// Every permission, in declaration order (the order the device lists
    /// them in).
    pub const ALL: [Permission; 18] = [
        Permission::ReadInfo,
        Permission::ReadParams,
        Permission::WriteParamsOperation,
        Permission::WriteParamsLimits,
        Permission::WriteParamsMotor,
        Permission::DriveControl,
        Permission::ReadUsers,
        Permission::ManageUsers,
        Permission::ManageRoles,
        Permission::ReadSessions,
        Permission::TerminateSessions,
        Permission::ReadSecuritySettings,
        Permission::WriteSecuritySettings,
        Permission::ManageTrust,
        Permission::ReadAudit,
        Permission::ConfigureAuditForwarding,
        Permission::FactoryReset,
        Permission::UpdateFirmware,
    ];

    /// The kebab-case name, as on the wire, in files and on the command
    /// line (`write-params-limits`).
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ReadInfo => "read-info",
            Permission::ReadParams => "read-params",
            Permission::WriteParamsOperation => "write-params-operation",
            Permission::WriteParamsLimits => "write-params-limits",
            Permission::WriteParamsMotor => "write-params-motor",
            Permission::DriveControl => "drive-control",
            Permission::ReadUsers => "read-users",
            Permission::ManageUsers => "manage-users",
            Permission::ManageRoles => "manage-roles",
            Permission::ReadSessions => "read-sessions",
            Permission::TerminateSessions => "terminate-sessions",
            Permission::ReadSecuritySettings => "read-security-settings",
            Permission::WriteSecuritySettings => "write-security-settings",
            Permission::ManageTrust => "manage-trust",
            Permission::ReadAudit => "read-audit",
            Permission::ConfigureAuditForwarding => "configure-audit-forwarding",
            Permission::FactoryReset => "factory-reset",
            Permission::UpdateFirmware => "update-firmware",
        }
    }

    /// One line saying what the permission allows (the description column
    /// of docs/permissions.md).
    pub fn describe(self) -> &'static str {
        match self {
            Permission::ReadInfo => "Read device identity, firmware version and status",
            Permission::ReadParams => "Read drive parameters",
            Permission::WriteParamsOperation => "Change operational parameters (set-points, ramps)",
            Permission::WriteParamsLimits => "Change protective limits (current, speed, torque)",
            Permission::WriteParamsMotor => "Change motor data and control-loop parameters",
            Permission::DriveControl => "Start, stop and reset the drive",
            Permission::ReadUsers => "List accounts and their roles",
            Permission::ManageUsers => {
                "Create, remove and unlock accounts, reset passwords, assign roles"
            }
            Permission::ManageRoles => "Create, change and remove custom roles",
            Permission::ReadSessions => "List active sessions",
            Permission::TerminateSessions => "Terminate other users' sessions",
            Permission::ReadSecuritySettings => {
                "Read security settings (password, lockout and session policy, trust)"
            }
            Permission::WriteSecuritySettings => "Change security settings",
            Permission::ManageTrust => "Manage certificates, trust anchors and revocation lists",
            Permission::ReadAudit => "Read and export the audit trail",
            Permission::ConfigureAuditForwarding => {
                "Configure audit forwarding to a remote collector"
            }
            Permission::FactoryReset => "Erase configuration, accounts and keys (factory reset)",
            Permission::UpdateFirmware => "Install approved firmware updates and restart into them",
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Permission {
    type Err = UnknownPermission;

    /// Parses the kebab-case name returned by [`Permission::as_str`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPermission(s.to_owned()))
    }
}

/// A name that is not one of [`Permission::ALL`]'s (the name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPermission(pub String);

impl std::fmt::Display for UnknownPermission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown permission: {}", self.0)
    }
}

impl std::error::Error for UnknownPermission {}

/// An account as listed to administrators (never its password hashes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserSummary {
    /// Logins from client certificates new to the account are refused
    /// (429 `login-delayed`) until then (RFC 3339), after too many failures
    /// over all certificates; null when they are not.
    #[schema(required)]
    pub delayed_until: Option<String>,
    /// Failed logins over all client certificates since the last success or
    /// unlock.
    #[schema(minimum = 0)]
    pub failed_attempts: u32,
    /// Locked (for some client certificate) until an administrator unlocks
    /// it (`POST /api/v1/users/{name}/unlock`).
    pub locked_by_admin_only: bool,
    /// SHA-256 fingerprints (hex) of the client certificates the account is
    /// locked for now.
    pub locked_certificates: Vec<String>,
    /// End of the latest running timed lock (RFC 3339), or null: the
    /// account is locked for the client certificates in
    /// `locked_certificates` until then.
    #[schema(required)]
    pub locked_until: Option<String>,
    /// When the password was last set (RFC 3339).
    pub password_changed: String,
    /// The password is older than the policy allows, or an administrator set
    /// it: it must be changed at the next login.
    pub password_expired: bool,
    /// The name of its role.
    pub role: String,
    /// When the account got its current role (RFC 3339), or null when not
    /// known.
    #[schema(required)]
    pub role_since: Option<String>,
    /// The account name.
    pub username: String,
}

/// The answer of `GET /api/v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserListAnswer {
    /// Every account, sorted by name.
    pub users: Vec<UserSummary>,
}

/// A new account (`POST /api/v1/users`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserRequest {
    /// The account name: 1 to 32 characters from `a-z`, `0-9`, `.`, `_`
    /// and `-`, starting with a letter or digit (400 otherwise).
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,31}$")]
    pub username: String,
    /// The name of an existing role (404 when there is none of that name).
    pub role: String,
    /// A temporary password, checked against the password policy (400 when
    /// it fails): the account must change it at its first login.
    pub password: String,
}

impl std::fmt::Debug for NewUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUserRequest")
            .field("username", &self.username)
            .field("role", &self.role)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The answer of `POST /api/v1/users`: the account made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserAddedAnswer {
    /// Always true: the password set by an administrator must be changed at
    /// the account's first login.
    pub must_change_password: bool,
    /// The account's role.
    pub role: String,
    /// The account name.
    pub username: String,
}

/// The answer of `DELETE /api/v1/users/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserRemovedAnswer {
    /// The account removed.
    pub removed: String,
    /// How many of its sessions ended with it.
    #[schema(minimum = 0)]
    pub sessions_ended: u64,
}

/// A new role for an account (`PUT /api/v1/users/{name}/role`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRoleRequest {
    /// The name of an existing role (404 when there is none of that name).
    pub role: String,
}

/// The answer of `PUT /api/v1/users/{name}/role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleSetAnswer {
    /// The account's new role.
    pub role: String,
    /// The account.
    pub username: String,
}

/// The answer of `POST /api/v1/users/{name}/unlock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserUnlockedAnswer {
    /// The account unlocked: its locks for every client certificate, its
    /// delay for new certificates and its failure count are gone.
    pub unlocked: String,
}

/// A password set by an administrator (`POST /api/v1/users/{name}/password`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    /// The new, temporary password, checked against the password policy
    /// (400 when it fails): the account must change it at its next login.
    pub password: String,
}

impl std::fmt::Debug for PasswordResetRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordResetRequest")
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The answer of `POST /api/v1/users/{name}/password`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PasswordResetAnswer {
    /// Always true: the account must change the password at its next login.
    pub must_change_password: bool,
    /// The account whose password was set.
    pub reset: String,
    /// How many of the account's sessions ended: every session made with
    /// the old password.
    #[schema(minimum = 0)]
    pub sessions_ended: u64,
}

/// A role: a named set of permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleSummary {
    /// Whether the role is built in (and so cannot be changed or removed).
    pub builtin: bool,
    /// The role's name.
    pub name: String,
    /// What holders of the role may do, in the order the `Permission`
    /// schema lists them. Strings, not `Permission`, so that a client
    /// reads a newer device's permission it does not know yet.
    #[schema(value_type = Vec<Permission>)]
    pub permissions: Vec<String>,
}

/// The answer of `GET /api/v1/roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleListAnswer {
    /// The built-in roles, then the custom roles sorted by name.
    pub roles: Vec<RoleSummary>,
}

/// A new custom role (`POST /api/v1/roles`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRoleRequest {
    /// The role's name: 1 to 32 characters from `a-z`, `0-9`, `.`, `_` and
    /// `-`, starting with a letter or digit (400 otherwise); not the name of
    /// a built-in or existing role (409).
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,31}$")]
    pub name: String,
    /// Permission names (the `Permission` schema); a name the device does
    /// not know is answered 400 `bad-request` naming it (after the
    /// caller's session and permission are checked). Repeats count once.
    #[schema(value_type = Vec<Permission>)]
    pub permissions: Vec<String>,
}

/// The answer of `POST /api/v1/roles`: the role made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleAddedAnswer {
    /// The role's name.
    pub name: String,
    /// Its permissions, without repeats, in the order the `Permission`
    /// schema lists them. Strings, not `Permission`, so that a client
    /// reads a newer device's permission it does not know yet.
    #[schema(value_type = Vec<Permission>)]
    pub permissions: Vec<String>,
}

/// The answer of `DELETE /api/v1/roles/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleRemovedAnswer {
    /// The role removed.
    pub removed: String,
}

/// The accounts operations.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::Get, "/api/v1/users", "List accounts", Body::Json(schema_of::<UserListAnswer>))
            .tag("accounts")
            .permission("read-users")
            ,
        Route::new(Method::Post, "/api/v1/users", "Create an account", Body::Json(schema_of::<UserAddedAnswer>))
            .tag("accounts")
            .permission("manage-users")
            .describe("The role may hold only permissions the caller holds or operational ones (403 `privilege-escalation`). The password is temporary: the account must change it at its first login.")
            .request(Body::Json(schema_of::<NewUserRequest>))
            .error(404)
            ,
        Route::new(Method::Delete, "/api/v1/users/{name}", "Remove an account and end its sessions", Body::Json(schema_of::<UserRemovedAnswer>))
            .tag("accounts")
            .permission("manage-users")
            .describe("403 `privilege-escalation` also when the account holds a permission the caller lacks (beyond the operational ones).")
            .path_param("name")
            .error(404)
            ,
        Route::new(Method::Put, "/api/v1/users/{name}/role", "Change an account's role", Body::Json(schema_of::<RoleSetAnswer>))
            .tag("accounts")
            .permission("manage-users")
            .describe("Not one's own role, and only a role whose permissions the caller holds or that are operational (403 `privilege-escalation`); the last user manager cannot be demoted (409 `last-admin`). Open sessions of the account take the new role at once. 403 `privilege-escalation` also when the account holds a permission the caller lacks (beyond the operational ones).")
            .path_param("name")
            .error(404)
            .request(Body::Json(schema_of::<SetRoleRequest>))
            ,
        Route::new(Method::Post, "/api/v1/users/{name}/unlock", "Unlock a locked account", Body::Json(schema_of::<UserUnlockedAnswer>))
            .tag("accounts")
            .permission("manage-users")
            .describe("403 `privilege-escalation` also when the account holds a permission the caller lacks (beyond the operational ones).")
            .path_param("name")
            .error(404)
            ,
        Route::new(Method::Post, "/api/v1/users/{name}/password", "Set an account's password", Body::Json(schema_of::<PasswordResetAnswer>))
            .tag("accounts")
            .permission("manage-users")
            .describe("The account must change the password at its next login, and its open sessions end (`sessions_ended`). 403 `privilege-escalation` also when the account holds a permission the caller lacks (beyond the operational ones).")
            .path_param("name")
            .error(404)
            .request(Body::Json(schema_of::<PasswordResetRequest>))
            ,
        Route::new(Method::Get, "/api/v1/roles", "List roles and their permissions", Body::Json(schema_of::<RoleListAnswer>))
            .tag("accounts")
            .permission("read-users")
            ,
        Route::new(Method::Post, "/api/v1/roles", "Create a custom role", Body::Json(schema_of::<RoleAddedAnswer>))
            .tag("accounts")
            .permission("manage-roles")
            .describe("Only permissions the caller holds (403 `privilege-escalation`).")
            .request(Body::Json(schema_of::<NewRoleRequest>))
            ,
        Route::new(Method::Delete, "/api/v1/roles/{name}", "Remove a custom role", Body::Json(schema_of::<RoleRemovedAnswer>))
            .tag("accounts")
            .permission("manage-roles")
            .path_param("name")
            .error(404)
            ,
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn permission_names_round_trip_through_str_and_serde() {
        let names: std::collections::BTreeSet<&str> =
            Permission::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            names.len(),
            Permission::ALL.len(),
            "duplicate permission names"
        );
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>().unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<Permission>(&json).unwrap(), p);
            assert!(!p.describe().is_empty());
            assert_eq!(p.to_string(), p.as_str());
        }
        assert_eq!(
            "drive-everything".parse::<Permission>(),
            Err(UnknownPermission("drive-everything".into()))
        );
        assert_eq!(
            UnknownPermission("x".into()).to_string(),
            "unknown permission: x"
        );
        assert!("ReadInfo".parse::<Permission>().is_err());
    }
}
