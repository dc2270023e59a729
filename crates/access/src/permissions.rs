//! Permissions and the built-in least-privilege roles.
//!
//! Every operation of the device runtime requires exactly one [`Permission`];
//! a [`Role`] is a named set of them. The five built-in roles separate duties:
//! people who run the drive cannot change security settings, and the security
//! administrator cannot run the drive or change its parameters.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The permission vocabulary is part of the device API contract and defined
/// there, with its names ([`Permission::as_str`], serde, `FromStr`), its
/// one-line descriptions ([`Permission::describe`]) and its schema.
pub use drivesec_api::accounts::{Permission, UnknownPermission};

/// Whether `p` is an operational permission: reading and running the
/// drive (status, parameters, control, firmware). The security
/// administrator assigns roles made of these without holding them
/// (separation of duties); every other permission can only be granted
/// by an account that holds it.
pub fn is_operational(p: Permission) -> bool {
    matches!(
        p,
        Permission::ReadInfo
            | Permission::ReadParams
            | Permission::WriteParamsOperation
            | Permission::WriteParamsLimits
            | Permission::WriteParamsMotor
            | Permission::DriveControl
            | Permission::UpdateFirmware
    )
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
    use crate::AccessError;

    fn perms(name: &str) -> BTreeSet<Permission> {
        builtin_permissions(name).unwrap()
    }

    #[test]
    fn an_unknown_name_is_an_access_error_naming_it() {
        let e: AccessError = "drive-everything".parse::<Permission>().unwrap_err().into();
        assert!(matches!(&e, AccessError::UnknownPermission(s) if s == "drive-everything"));
        assert_eq!(e.to_string(), "unknown permission: drive-everything");
    }

    #[test]
    fn operational_permissions_are_the_engineers() {
        // Reading and running the drive: what the engineer role holds.
        let operational: BTreeSet<Permission> = Permission::ALL
            .into_iter()
            .filter(|p| is_operational(*p))
            .collect();
        assert_eq!(operational, perms("engineer"));
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
