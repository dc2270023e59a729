//! Permissions and the built-in least-privilege roles.
//!
//! Every operation of the device runtime requires exactly one [`Permission`];
//! a [`Role`] is a named set of them. The five built-in roles separate duties:
//! people who run the drive cannot change security settings, and the security
//! administrator cannot run the drive or change its parameters.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::AccessError;

/// One thing a user may be allowed to do on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// Erase configuration, accounts and keys.
    FactoryReset,
    /// Install firmware updates and restart into them.
    UpdateFirmware,
}

impl Permission {
    /// Every permission, in declaration order.
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

    /// Whether this is an operational permission: reading and running the
    /// drive (status, parameters, control, firmware). The security
    /// administrator assigns roles made of these without holding them
    /// (separation of duties); every other permission can only be granted
    /// by an account that holds it.
    pub fn is_operational(self) -> bool {
        matches!(
            self,
            Permission::ReadInfo
                | Permission::ReadParams
                | Permission::WriteParamsOperation
                | Permission::WriteParamsLimits
                | Permission::WriteParamsMotor
                | Permission::DriveControl
                | Permission::UpdateFirmware
        )
    }

    /// The kebab-case name, as in JSON and on the command line (`write-params-limits`).
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

    /// One line saying what the permission allows.
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

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = AccessError;

    /// Parses the kebab-case name returned by [`Permission::as_str`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| AccessError::UnknownPermission(s.to_owned()))
    }
}

/// A named set of permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// The role's name (same rules as user names).
    pub name: String,
    /// What holders of the role may do.
    pub permissions: BTreeSet<Permission>,
    /// Whether the role is built in (and so immutable).
    pub builtin: bool,
}

impl Role {
    /// Whether the role grants `p`.
    pub fn allows(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }
}

/// Names of the built-in roles, least to most specialised.
pub const BUILTIN_ROLE_NAMES: [&str; 5] = [
    "viewer",
    "operator",
    "engineer",
    "security-admin",
    "auditor",
];

/// The permissions of a built-in role, or `None` if `name` is not one.
pub fn builtin_permissions(name: &str) -> Option<BTreeSet<Permission>> {
    use Permission::*;
    let list: &[Permission] = match name {
        "viewer" => &[ReadInfo, ReadParams],
        "operator" => &[ReadInfo, ReadParams, WriteParamsOperation, DriveControl],
        "engineer" => &[
            ReadInfo,
            ReadParams,
            WriteParamsOperation,
            WriteParamsLimits,
            WriteParamsMotor,
            DriveControl,
            UpdateFirmware,
        ],
        "security-admin" => &[
            ReadInfo,
            ReadUsers,
            ManageUsers,
            ManageRoles,
            ReadSessions,
            TerminateSessions,
            ReadSecuritySettings,
            WriteSecuritySettings,
            ManageTrust,
            ReadAudit,
            ConfigureAuditForwarding,
            FactoryReset,
        ],
        "auditor" => &[ReadInfo, ReadAudit, ReadSecuritySettings],
        _ => return None,
    };
    Some(list.iter().copied().collect())
}

/// Whether `name` is a built-in role.
pub fn is_builtin_role(name: &str) -> bool {
    BUILTIN_ROLE_NAMES.contains(&name)
}

/// The five built-in roles, in [`BUILTIN_ROLE_NAMES`] order.
pub fn builtin_roles() -> Vec<Role> {
    BUILTIN_ROLE_NAMES
        .iter()
        .map(|name| Role {
            name: (*name).to_owned(),
            permissions: builtin_permissions(name).unwrap_or_default(),
            builtin: true,
        })
        .collect()
}

/// The permission matrix of the built-in roles as a Markdown table: one row
/// per permission (name and description), one column per built-in role,
/// cells `yes` or `-`. `docs/permissions.md` is generated from it.
pub fn permission_matrix_markdown() -> String {
    let roles = builtin_roles();
    let mut out = String::from("| permission | description |");
    for r in &roles {
        out.push_str(&format!(" {} |", r.name));
    }
    out.push_str("\n|---|---|");
    for _ in &roles {
        out.push_str("---|");
    }
    out.push('\n');
    for p in Permission::ALL {
        out.push_str(&format!("| `{}` | {} |", p.as_str(), p.describe()));
        for r in &roles {
            out.push_str(if r.allows(p) { " yes |" } else { " - |" });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn perms(name: &str) -> BTreeSet<Permission> {
        builtin_permissions(name).unwrap()
    }

    #[test]
    fn names_round_trip_through_str_and_serde() {
        let names: BTreeSet<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
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
        assert!(matches!(
            "drive-everything".parse::<Permission>(),
            Err(AccessError::UnknownPermission(s)) if s == "drive-everything"
        ));
        assert!("ReadInfo".parse::<Permission>().is_err());
    }

    #[test]
    fn builtin_roles_are_least_privilege() {
        use Permission::*;
        let drive_side = [
            ReadParams,
            WriteParamsOperation,
            WriteParamsLimits,
            WriteParamsMotor,
            DriveControl,
        ];
        let security_side = [
            ReadUsers,
            ManageUsers,
            ManageRoles,
            ReadSessions,
            TerminateSessions,
            ReadSecuritySettings,
            WriteSecuritySettings,
            ManageTrust,
            ReadAudit,
            ConfigureAuditForwarding,
            FactoryReset,
        ];
        let admin = perms("security-admin");
        for p in drive_side {
            assert!(!admin.contains(&p), "security-admin must not have {p}");
        }
        for role in ["viewer", "operator", "engineer"] {
            for p in security_side {
                assert!(!perms(role).contains(&p), "{role} must not have {p}");
            }
        }
        assert_eq!(
            perms("auditor"),
            [ReadInfo, ReadAudit, ReadSecuritySettings].into()
        );
        assert_eq!(perms("viewer"), [ReadInfo, ReadParams].into());
        assert_eq!(
            perms("operator"),
            [ReadInfo, ReadParams, WriteParamsOperation, DriveControl].into()
        );
        assert_eq!(perms("engineer").len(), 7);
        assert!(perms("engineer").contains(&UpdateFirmware));
        assert!(
            !perms("security-admin").contains(&UpdateFirmware),
            "the security admin does not run the drive"
        );
        assert!(!perms("operator").contains(&WriteParamsLimits));
        assert!(!perms("operator").contains(&WriteParamsMotor));
        // Everything is granted by some built-in role, and every role can read info.
        for p in Permission::ALL {
            assert!(
                BUILTIN_ROLE_NAMES.iter().any(|r| perms(r).contains(&p)),
                "{p}"
            );
        }
        for r in builtin_roles() {
            assert!(r.builtin);
            assert!(r.allows(ReadInfo));
        }
        assert!(builtin_permissions("root").is_none());
        assert!(is_builtin_role("auditor") && !is_builtin_role("root"));
    }

    #[test]
    fn matrix_has_a_row_per_permission_and_a_column_per_role() {
        let md = permission_matrix_markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 2 + Permission::ALL.len());
        assert_eq!(
            lines[0],
            "| permission | description | viewer | operator | engineer | security-admin | auditor |"
        );
        let row = lines
            .iter()
            .find(|l| l.starts_with("| `drive-control` |"))
            .unwrap();
        assert!(row.ends_with("| - | yes | yes | - | - |"), "{row}");
        let row = lines
            .iter()
            .find(|l| l.starts_with("| `factory-reset` |"))
            .unwrap();
        assert!(row.ends_with("| - | - | - | yes | - |"), "{row}");
        for l in &lines {
            assert_eq!(l.matches('|').count(), 8, "{l}");
        }
    }
}
