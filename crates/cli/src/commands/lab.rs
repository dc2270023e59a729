//! `drivesec lab ...`: a complete local lab of CAs, devices and role
//! clients (docs/lab.md); what `demo` builds its story on.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use drivesec_lab::up::{Backend, LabOptions, LabStep};
use indicatif::ProgressBar;

use super::factory::{BackendArg, module};
use crate::output::print_json;
use crate::text::safe;

/// `drivesec lab ...`.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab: CAs, provisioned devices, one client per built-in role.
    Up {
        /// Lab directory (must not exist or be empty).
        #[arg(long)]
        dir: PathBuf,
        /// Number of devices.
        #[arg(long, default_value_t = 3)]
        devices: usize,
        /// Device keystore backend.
        #[arg(long, value_enum, default_value_t = BackendArg::Soft)]
        keystore: BackendArg,
        /// PKCS#11 module for --keystore pkcs11 (default SoftHSM2).
        #[arg(long)]
        pkcs11_module: Option<PathBuf>,
        /// Only build the PKI and device state directories; start no drivesecd.
        #[arg(long)]
        no_daemons: bool,
    },
    /// Stop whatever the lab started.
    Down {
        /// Lab directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Set in the child when the parent re-executed us with a lab-private SoftHSM2 configuration.
const OWN_SOFTHSM: &str = "DRIVESEC_LAB_OWN_SOFTHSM";

/// SoftHSM2 reads `SOFTHSM2_CONF` when the module initialises, and changing
/// our own environment is not thread-safe. So when a pkcs11 lab is asked for
/// and no token directory is configured, run ourselves again with
/// `SOFTHSM2_CONF` pointing into the lab directory. Returns the child's exit
/// code, or `None` to continue in this process.
pub fn reexec_with_lab_softhsm(cmd: &LabCommand) -> Option<ExitCode> {
    match cmd {
        LabCommand::Up {
            dir,
            keystore: BackendArg::Pkcs11,
            ..
        } => rerun_with_lab_softhsm(|_| Ok(dir.clone())),
        _ => None,
    }
}

/// Runs this program again, with the same arguments, `SOFTHSM2_CONF`
/// pointing into the lab directory that `lab_dir` names (it may add
/// arguments, such as the `--dir` of a directory it made), unless a token
/// directory is configured already or this is the re-run. Returns the
/// child's exit code, or `None` to continue in this process.
pub(crate) fn rerun_with_lab_softhsm(
    lab_dir: impl FnOnce(&mut Vec<OsString>) -> Result<PathBuf>,
) -> Option<ExitCode> {
    if std::env::var_os("SOFTHSM2_CONF").is_some() || std::env::var_os(OWN_SOFTHSM).is_some() {
        return None;
    }
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let dir = match lab_dir(&mut args) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Some(ExitCode::from(2));
        }
    };
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let conf = dir.join("softhsm").join("softhsm2.conf");
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find my own executable to set up SoftHSM2: {e}");
            return Some(ExitCode::from(2));
        }
    };
    match std::process::Command::new(exe)
        .args(args)
        .env("SOFTHSM2_CONF", &conf)
        .env(OWN_SOFTHSM, "1")
        .status()
    {
        Ok(s) => Some(ExitCode::from(
            s.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(2),
        )),
        Err(e) => {
            eprintln!("error: cannot re-run with SOFTHSM2_CONF set: {e}");
            Some(ExitCode::from(2))
        }
    }
}

/// What `lab up` and `demo` build.
pub(crate) fn lab_options(
    dir: PathBuf,
    devices: usize,
    keystore: BackendArg,
    pkcs11_module: &Option<PathBuf>,
    daemons: bool,
) -> Result<LabOptions> {
    let keystore = match keystore {
        BackendArg::Soft => Backend::Soft,
        BackendArg::Pkcs11 => Backend::Pkcs11,
    };
    let create_softhsm_conf = (keystore == Backend::Pkcs11
        && std::env::var_os(OWN_SOFTHSM).is_some())
    .then(|| std::env::var_os("SOFTHSM2_CONF").map(PathBuf::from))
    .flatten();
    let daemon = if daemons {
        Some(drivesec_lab::daemons::default_daemon()?)
    } else {
        None
    };
    Ok(LabOptions {
        dir,
        devices,
        keystore,
        pkcs11_module: module(pkcs11_module),
        create_softhsm_conf,
        daemon,
        device_config: None,
    })
}

/// Shows the lab's build steps as a progress bar (none with `--json`).
pub(crate) fn progress_bar(json: bool) -> impl FnMut(LabStep) {
    let mut bar: Option<ProgressBar> = None;
    move |step| match step {
        LabStep::Start { total } if !json => {
            bar = Some(crate::output::progress_bar(
                json,
                total,
                "{pos}/{len} {msg}",
            ));
        }
        LabStep::Done(msg) => {
            if let Some(b) = &bar {
                b.set_message(msg);
                b.inc(1);
                if b.position() >= b.length().unwrap_or(0) {
                    b.finish_and_clear();
                }
            }
        }
        _ => {}
    }
}

/// Runs a `lab` command.
pub fn run(cmd: LabCommand, json: bool) -> Result<()> {
    match cmd {
        LabCommand::Up {
            dir,
            devices,
            keystore,
            pkcs11_module,
            no_daemons,
        } => {
            let opts = lab_options(dir.clone(), devices, keystore, &pkcs11_module, !no_daemons)?;
            let m = drivesec_lab::up::up(&opts, &mut progress_bar(json))?;
            if json {
                print_json(&serde_json::to_value(&m)?)
            } else {
                println!(
                    "lab ready: {} device(s) ({} keystore), {} role clients",
                    m.devices.len(),
                    opts.keystore.as_str(),
                    m.clients.len()
                );
                for d in &m.devices {
                    if let Some(api) = &d.api {
                        println!(
                            "  {} {} at {} (pid {})",
                            safe(&d.name),
                            safe(d.device_name.as_deref().unwrap_or("")),
                            safe(api),
                            d.pid.unwrap_or(0)
                        );
                    }
                }
                if !m.users.is_empty() {
                    println!(
                        "accounts per role and their passwords are in lab.json; stop with: drivesec lab down --dir {}",
                        dir.display()
                    );
                }
                println!(
                    "lab.json: {}",
                    std::path::absolute(&dir)?.join("lab.json").display()
                );
                Ok(())
            }
        }
        LabCommand::Down { dir } => {
            let d = drivesec_lab::up::down(&dir)?;
            if json {
                print_json(&serde_json::to_value(&d)?)
            } else {
                println!(
                    "lab in {}: stopped {} process(es)",
                    dir.display(),
                    d.stopped
                );
                for n in &d.not_ours {
                    println!(
                        "  left alone: pid {} recorded for {} is no longer its drivesecd ({}); \
                         that daemon has ended, or runs under another pid: look for it with \
                         pgrep -af 'drivesecd.*--state'",
                        n.pid,
                        safe(&n.device),
                        safe(&n.reason)
                    );
                }
                Ok(())
            }
        }
    }
}
