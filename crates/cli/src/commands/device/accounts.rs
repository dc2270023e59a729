//! `drivesec device login|password|users|roles|sessions`: accounts, roles
//! and sessions.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use clap::Subcommand;
use drivesec_api::accounts::{
    NewRoleRequest, NewUserRequest, RoleAddedAnswer, RoleListAnswer, RoleRemovedAnswer,
    RoleSetAnswer, SetRoleRequest, UserAddedAnswer, UserListAnswer, UserRemovedAnswer,
    UserUnlockedAnswer,
};
use drivesec_api::sessions::{
    MeAnswer, OwnPasswordAnswer, OwnPasswordRequest, SessionListAnswer, SessionTerminatedAnswer,
};
use drivesec_client::client::DeviceClient;

use super::answer::{as_json, print, print_answer, shown};
use super::target::{Target, read_secret};
use crate::text::safe;

/// `device users`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List accounts.
    List,
    /// Create an account.
    Add {
        /// Account name.
        username: String,
        /// Role.
        role: String,
        /// File holding the new password.
        #[arg(long)]
        new_password_file: PathBuf,
    },
    /// Remove an account.
    Remove {
        /// Account name.
        username: String,
    },
    /// Change an account's role.
    Role {
        /// Account name.
        username: String,
        /// New role.
        role: String,
    },
    /// Unlock an account.
    Unlock {
        /// Account name.
        username: String,
    },
}

/// `device roles`.
#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// List roles and permissions.
    List,
    /// Create a custom role.
    Add {
        /// Role name.
        role_name: String,
        /// Permissions (see docs/permissions.md).
        permissions: Vec<String>,
    },
    /// Remove a custom role.
    Remove {
        /// Role name.
        role_name: String,
    },
}

/// `device sessions`.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List live sessions.
    List,
    /// Terminate a session by its handle.
    Terminate {
        /// Session handle.
        handle: String,
    },
}

/// `device login`: the account's role and permissions.
pub(super) fn login(c: &DeviceClient, json: bool) -> Result<()> {
    print(json, &c.get::<MeAnswer>("/api/v1/me")?, |v| {
        println!(
            "logged in as {} ({}): {}",
            safe(&v.username),
            safe(&v.role),
            shown(&v.permissions)
        );
    })
}

/// `device password`: the logged-in account changes its own password.
pub(super) fn change_password(
    c: &DeviceClient,
    t: &Target,
    new_password_file: &Path,
    json: bool,
) -> Result<()> {
    let old = t
        .password
        .as_ref()
        .ok_or_else(|| anyhow!("give --password-file (the current password)"))?;
    let new = read_secret(new_password_file)?;
    let mut body = OwnPasswordRequest {
        old_password: old.to_string(),
        new_password: new.to_string(),
    };
    let sent = c.send::<_, OwnPasswordAnswer>("POST", "/api/v1/me/password", &body);
    zeroize::Zeroize::zeroize(&mut body.old_password);
    zeroize::Zeroize::zeroize(&mut body.new_password);
    print(json, &sent?, |v| {
        println!(
            "password changed; {} other session(s) ended",
            v.sessions_ended
        )
    })
}

/// `device users ...`.
pub(super) fn users(c: &DeviceClient, u: &UsersCommand, json: bool) -> Result<()> {
    let v = match u {
        UsersCommand::List => as_json(&c.get::<UserListAnswer>("/api/v1/users")?),
        UsersCommand::Add {
            username,
            role,
            new_password_file,
        } => {
            let pw = read_secret(new_password_file)?;
            let mut body = NewUserRequest {
                username: username.clone(),
                role: role.clone(),
                password: pw.to_string(),
            };
            let sent = c.send::<_, UserAddedAnswer>("POST", "/api/v1/users", &body);
            zeroize::Zeroize::zeroize(&mut body.password);
            as_json(&sent?)
        }
        UsersCommand::Remove { username } => as_json(
            &c.request::<UserRemovedAnswer>("DELETE", &format!("/api/v1/users/{username}"))?,
        ),
        UsersCommand::Role { username, role } => as_json(&c.send::<_, RoleSetAnswer>(
            "PUT",
            &format!("/api/v1/users/{username}/role"),
            &SetRoleRequest { role: role.clone() },
        )?),
        UsersCommand::Unlock { username } => as_json(
            &c.request::<UserUnlockedAnswer>("POST", &format!("/api/v1/users/{username}/unlock"))?,
        ),
    };
    print_answer(json, &v)
}

/// `device roles ...`.
pub(super) fn roles(c: &DeviceClient, r: &RolesCommand, json: bool) -> Result<()> {
    let v = match r {
        RolesCommand::List => as_json(&c.get::<RoleListAnswer>("/api/v1/roles")?),
        RolesCommand::Add {
            role_name: name,
            permissions,
        } => as_json(&c.send::<_, RoleAddedAnswer>(
            "POST",
            "/api/v1/roles",
            &NewRoleRequest {
                name: name.clone(),
                permissions: permissions.clone(),
            },
        )?),
        RolesCommand::Remove { role_name: name } => {
            as_json(&c.request::<RoleRemovedAnswer>("DELETE", &format!("/api/v1/roles/{name}"))?)
        }
    };
    print_answer(json, &v)
}

/// `device sessions ...`.
pub(super) fn sessions(c: &DeviceClient, s: &SessionsCommand, json: bool) -> Result<()> {
    let v = match s {
        SessionsCommand::List => as_json(&c.get::<SessionListAnswer>("/api/v1/sessions")?),
        SessionsCommand::Terminate { handle } => as_json(
            &c.request::<SessionTerminatedAnswer>("DELETE", &format!("/api/v1/sessions/{handle}"))?,
        ),
    };
    print_answer(json, &v)
}
