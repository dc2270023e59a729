//! `drivesec demo`: the end-to-end story, on a lab built for it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::factory::BackendArg;
use super::lab::{lab_options, progress_bar, rerun_with_lab_softhsm};
use crate::dirs::fresh_private_dir;
use crate::output::{SafeText, print_json};

/// `drivesec demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Lab directory (default: a new directory under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of devices.
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// Device keystore backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Soft)]
    pub keystore: BackendArg,
    /// PKCS#11 module for --keystore pkcs11.
    #[arg(long)]
    pub pkcs11_module: Option<PathBuf>,
}

/// A new directory for the demo's lab under the temporary directory: a
/// random name nobody can guess in advance, created here (mode 0700,
/// failing if anything is already there, a symlink included), so the lab
/// is built in a directory that is ours from the start.
fn default_demo_dir() -> Result<PathBuf> {
    fresh_private_dir("drivesec-demo")
}

/// A pkcs11 demo runs again with its own SoftHSM2 configuration
/// ([`rerun_with_lab_softhsm`]), in the directory given or a new one made
/// here. Returns the child's exit code, or `None` to continue in this
/// process.
pub fn reexec_with_lab_softhsm(a: &DemoArgs) -> Option<ExitCode> {
    if a.keystore != BackendArg::Pkcs11 {
        return None;
    }
    rerun_with_lab_softhsm(|args| match &a.dir {
        Some(dir) => Ok(dir.clone()),
        None => {
            let dir = default_demo_dir()?;
            args.push("--dir".into());
            args.push(dir.clone().into());
            Ok(dir)
        }
    })
}

/// Runs `demo`.
pub fn run(a: DemoArgs, json: bool) -> Result<()> {
    let dir = match a.dir.clone() {
        Some(d) => d,
        None => default_demo_dir()?,
    };
    let opts = lab_options(dir, a.devices, a.keystore, &a.pkcs11_module, true)?;
    let mut sink = std::io::sink();
    let mut stdout = SafeText(std::io::stdout());
    let out: &mut dyn std::io::Write = if json { &mut sink } else { &mut stdout };
    let report = drivesec_lab::demo::run(&opts, out, &mut progress_bar(json))?;
    if json {
        print_json(&serde_json::to_value(&report)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use crate::dirs::fresh_private_dir;

    /// The demo's default directory cannot be guessed and is made here,
    /// private: two calls in the same second of the same process give two
    /// different new directories, each 0700.
    #[test]
    fn default_demo_dirs_are_fresh_random_and_private() {
        let a = super::default_demo_dir().unwrap();
        let b = super::default_demo_dir().unwrap();
        assert_ne!(a, b);
        for d in [&a, &b] {
            let name = d.file_name().unwrap().to_str().unwrap();
            let suffix = name.strip_prefix("drivesec-demo-").unwrap();
            assert_eq!(suffix.len(), 24, "{name}");
            assert!(!suffix.contains(&std::process::id().to_string()));
            let md = std::fs::symlink_metadata(d).unwrap();
            assert!(md.is_dir());
            assert_eq!(md.permissions().mode() & 0o777, 0o700);
            std::fs::remove_dir(d).unwrap();
        }
        let scratch = fresh_private_dir("drivesec-test").unwrap();
        std::fs::remove_dir(&scratch).unwrap();
    }
}
