//! `drivesec device login|passwd|users|roles|sessions`: accounts, roles
//! and sessions.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Subcommand;
use drivesec_api::accounts::{
    NewRoleRequest, NewUserRequest, PasswordResetAnswer, PasswordResetRequest, RoleAddedAnswer,
    RoleListAnswer, RoleRemovedAnswer, RoleSetAnswer, SetRoleRequest, UserAddedAnswer,
    UserListAnswer, UserRemovedAnswer, UserUnlockedAnswer,
};
use drivesec_api::sessions::{
    MeAnswer, OwnPasswordAnswer, OwnPasswordRequest, SessionListAnswer, SessionTerminatedAnswer,
};
use drivesec_client::client::{DeviceClient, path_name};
use drivesec_ops::read_secret;
use zeroize::Zeroizing;

use super::answer::{print, shown, table};
use super::target::{Target, logged_in_with};
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
    /// Set another account's password (a reset): its holder must change
    /// it at the next login, and the account's open sessions end.
    SetPassword {
        /// Account name.
        username: String,
        /// File holding the new password (default: one line of stdin, which
        /// must not be a terminal).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
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

/// `device passwd`: the account (--user, or the lab's) changes its own
/// password. The current one is --password-file's (or the lab's), the new
/// one --new-password-file's; one not given is read from stdin, one a
/// line, the current first, before the device is contacted. Never from a
/// terminal: this build has no prompt that hides what is typed.
pub(super) fn passwd(t: &Target, new_password_file: Option<&Path>, json: bool) -> Result<()> {
    let current = match &t.password {
        Some(p) => p.clone(),
        None => stdin_secret("the current password (or --password-file)")?,
    };
    let new = new_password(new_password_file)?;
    let c = logged_in_with(t, &current, true)?;
    let changed = change_password(&c, &current, &new, json);
    let _ = c.logout();
    changed?;
    if let (Some((lab, holder)), Some(user)) = (&t.lab_account, &t.user)
        && holder == user
    {
        eprintln!(
            "note: {} still holds the old password of {}: give --password-file with the new \
             one from now on",
            safe(&lab.display().to_string()),
            safe(user)
        );
    }
    Ok(())
}

/// The new password of an account: `file`'s (--new-password-file), or
/// else one line of stdin, which must not be a terminal.
fn new_password(file: Option<&Path>) -> Result<Zeroizing<String>> {
    match file {
        Some(f) => Ok(read_secret(f)?),
        None => stdin_secret("the new password (or --new-password-file)"),
    }
}

/// One line of stdin, without its line end: `what`, when stdin is not a
/// terminal.
fn stdin_secret(what: &str) -> Result<Zeroizing<String>> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!(
            "give {what}: on a terminal the password would be shown as it is typed; \
             or pipe the password(s) on stdin, one a line"
        );
    }
    let mut line = Zeroizing::new(String::new());
    stdin.lock().read_line(&mut line)?;
    let pw = Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string());
    if pw.is_empty() {
        bail!("give {what}: stdin held no line");
    }
    Ok(pw)
}

/// The logged-in account changes its own password from `old` to `new`.
fn change_password(c: &DeviceClient, old: &str, new: &str, json: bool) -> Result<()> {
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

/// Yes or no, for a table.
fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// An optional time, for a table.
fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// `device users ...`.
pub(super) fn users(c: &DeviceClient, u: &UsersCommand, json: bool) -> Result<()> {
    match u {
        UsersCommand::List => print(json, &c.get::<UserListAnswer>("/api/v1/users")?, |v| {
            let rows: Vec<Vec<String>> = v
                .users
                .iter()
                .map(|u| {
                    vec![
                        u.username.clone(),
                        u.role.clone(),
                        u.password_changed.clone(),
                        yes(u.password_expired),
                        u.failed_attempts.to_string(),
                        or_dash(&u.locked_until),
                        u.locked_certificates.len().to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "USER",
                    "ROLE",
                    "PASSWORD CHANGED",
                    "EXPIRED",
                    "FAILED",
                    "LOCKED UNTIL",
                    "LOCKED CERTS",
                ],
                &rows,
            );
        }),
        UsersCommand::Add {
            username,
            role,
            new_password_file,
        } => {
            let pw = new_password(Some(new_password_file))?;
            let mut body = NewUserRequest {
                username: username.clone(),
                role: role.clone(),
                password: pw.to_string(),
            };
            let sent = c.send::<_, UserAddedAnswer>("POST", "/api/v1/users", &body);
            zeroize::Zeroize::zeroize(&mut body.password);
            print(json, &sent?, |v| {
                println!(
                    "added {} with role {}{}",
                    safe(&v.username),
                    safe(&v.role),
                    if v.must_change_password {
                        "; the password must be changed at the first login"
                    } else {
                        ""
                    }
                )
            })
        }
        UsersCommand::Remove { username } => print(
            json,
            &c.request::<UserRemovedAnswer>(
                "DELETE",
                &format!("/api/v1/users/{}", path_name("account", username)?),
            )?,
            |v| {
                println!(
                    "removed {}; {} session(s) ended",
                    safe(&v.removed),
                    v.sessions_ended
                )
            },
        ),
        UsersCommand::Role { username, role } => print(
            json,
            &c.send::<_, RoleSetAnswer>(
                "PUT",
                &format!("/api/v1/users/{}/role", path_name("account", username)?),
                &SetRoleRequest { role: role.clone() },
            )?,
            |v| println!("{} now has role {}", safe(&v.username), safe(&v.role)),
        ),
        UsersCommand::Unlock { username } => print(
            json,
            &c.request::<UserUnlockedAnswer>(
                "POST",
                &format!("/api/v1/users/{}/unlock", path_name("account", username)?),
            )?,
            |v| println!("unlocked {}", safe(&v.unlocked)),
        ),
        UsersCommand::SetPassword {
            username,
            new_password_file,
        } => {
            let pw = new_password(new_password_file.as_deref())?;
            let mut body = PasswordResetRequest {
                password: pw.to_string(),
            };
            let sent = c.send::<_, PasswordResetAnswer>(
                "POST",
                &format!("/api/v1/users/{}/password", path_name("account", username)?),
                &body,
            );
            zeroize::Zeroize::zeroize(&mut body.password);
            print(json, &sent?, |v| {
                println!(
                    "password of {} set; {} session(s) ended{}",
                    safe(&v.reset),
                    v.sessions_ended,
                    if v.must_change_password {
                        "; it must be changed at the next login"
                    } else {
                        ""
                    }
                )
            })
        }
    }
}

/// `device roles ...`.
pub(super) fn roles(c: &DeviceClient, r: &RolesCommand, json: bool) -> Result<()> {
    match r {
        RolesCommand::List => print(json, &c.get::<RoleListAnswer>("/api/v1/roles")?, |v| {
            let rows: Vec<Vec<String>> = v
                .roles
                .iter()
                .map(|r| vec![r.name.clone(), yes(r.builtin), r.permissions.join(",")])
                .collect();
            table(&["ROLE", "BUILT-IN", "PERMISSIONS"], &rows);
        }),
        RolesCommand::Add {
            role_name: name,
            permissions,
        } => print(
            json,
            &c.send::<_, RoleAddedAnswer>(
                "POST",
                "/api/v1/roles",
                &NewRoleRequest {
                    name: name.clone(),
                    permissions: permissions.clone(),
                },
            )?,
            |v| {
                println!(
                    "added role {}: {}",
                    safe(&v.name),
                    safe(&v.permissions.join(","))
                )
            },
        ),
        RolesCommand::Remove { role_name: name } => print(
            json,
            &c.request::<RoleRemovedAnswer>(
                "DELETE",
                &format!("/api/v1/roles/{}", path_name("role", name)?),
            )?,
            |v| println!("removed role {}", safe(&v.removed)),
        ),
    }
}

/// `device sessions ...`.
pub(super) fn sessions(c: &DeviceClient, s: &SessionsCommand, json: bool) -> Result<()> {
    match s {
        SessionsCommand::List => print(
            json,
            &c.get::<SessionListAnswer>("/api/v1/sessions")?,
            |v| {
                let rows: Vec<Vec<String>> = v
                    .sessions
                    .iter()
                    .map(|s| {
                        vec![
                            s.handle.clone(),
                            s.username.clone(),
                            s.role.clone(),
                            format!("{}s", s.age_secs),
                            format!("{}s", s.idle_secs),
                            s.client_fingerprint.clone(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "HANDLE",
                        "USER",
                        "ROLE",
                        "AGE",
                        "IDLE",
                        "CLIENT CERTIFICATE",
                    ],
                    &rows,
                );
            },
        ),
        SessionsCommand::Terminate { handle } => print(
            json,
            &c.request::<SessionTerminatedAnswer>(
                "DELETE",
                &format!("/api/v1/sessions/{}", path_name("session handle", handle)?),
            )?,
            |v| println!("terminated {} ({})", safe(&v.terminated), safe(&v.username)),
        ),
    }
}
