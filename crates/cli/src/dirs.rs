//! Directories the tool writes into: `--out` (and `--trails`) directories,
//! which must be the tool's own (the `.drivesec-output` marker, never a
//! symbolic link or a directory it did not make), and fresh private
//! scratch directories.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use drivesec_fsutil::{self as fsu, Mode};

/// `$TMPDIR/PREFIX-<random>`, created exclusively with mode 0700.
pub(crate) fn fresh_private_dir(prefix: &str) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut rnd = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut rnd);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", hex::encode(rnd)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A fresh private directory under the system's temporary directory
/// (random name, created exclusively, 0700).
pub(crate) fn scratch_dir(what: &str) -> Result<std::path::PathBuf> {
    fresh_private_dir(&format!("drivesec-{what}"))
}

/// Checks, before an irreversible step whose only record is the file `flag`
/// names (`--passwords-out`, `--credential-out`), that the file can be made:
/// its directory exists and takes new files. An error naming the flag and
/// the file otherwise, while nothing has changed yet.
pub(crate) fn check_writable_file(flag: &str, file: &std::path::Path) -> Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    fsu::ensure_writable_dir(dir).with_context(|| {
        format!(
            "{flag} {}: cannot be written (nothing was changed)",
            file.display()
        )
    })
}

/// The marker file that makes a directory the tool's own `--out` output.
const OUTPUT_MARKER: &str = ".drivesec-output";

/// Whether `dir` may receive the files of `what` (e.g. "validate"):
/// `Ok(false)` when it does not exist yet, `Ok(true)` when it is an
/// earlier run's output (a directory carrying the marker naming `what`).
/// Anything else is refused, naming it: a symbolic link (never followed),
/// a file, or a directory the tool did not make for `what`, whose mode and
/// files must stay as they are.
pub(crate) fn check_output_dir(dir: &std::path::Path, what: &str) -> Result<bool> {
    check_output_dir_for(dir, what, "--out")
}

/// [`check_output_dir`] for a directory given as `flag` (e.g. `--trails`).
pub(crate) fn check_output_dir_for(dir: &std::path::Path, what: &str, flag: &str) -> Result<bool> {
    let refuse = |why: &str| -> Result<bool> {
        bail!(
            "{flag} {}: {why}; refusing to write into it (name a new directory, \
             or one an earlier `drivesec {what}` run wrote)",
            dir.display()
        )
    };
    match std::fs::symlink_metadata(dir) {
        Ok(md) if md.file_type().is_symlink() => refuse("is a symbolic link"),
        Ok(md) if !md.is_dir() => refuse("exists and is not a directory"),
        Ok(md) => {
            // A marker anyone could have planted: the directory must be
            // this user's and writable by nobody else.
            if let Some(why) = fsu::not_private_dir(&md)? {
                return refuse(why);
            }
            let path = dir.join(OUTPUT_MARKER);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() && fsu::read(&path)? == marker(what).as_bytes() => Ok(true),
                Ok(_) => refuse(&format!(
                    "its {OUTPUT_MARKER} is not from `drivesec {what}`"
                )),
                Err(_) => refuse("is an existing directory the tool did not make"),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("{flag} {}", dir.display())),
    }
}

fn marker(what: &str) -> String {
    format!("drivesec {what}\n")
}

/// Makes `dir` ready to receive the files of `what`: checked as
/// [`check_output_dir`] does, and created (0700, with the marker) when new.
pub(crate) fn output_dir(dir: &std::path::Path, what: &str) -> Result<()> {
    output_dir_for(dir, what, "--out")
}

/// [`output_dir`] for a directory given as `flag` (e.g. `--trails`).
pub(crate) fn output_dir_for(dir: &std::path::Path, what: &str, flag: &str) -> Result<()> {
    if !check_output_dir_for(dir, what, flag)? {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // Not recursive: fails if anything (a symlink too) appeared meanwhile.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        fsu::write_new(
            &dir.join(OUTPUT_MARKER),
            marker(what).as_bytes(),
            Mode::Public,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    /// The marker proves nothing in a directory others can write to or
    /// own: such a directory is refused even with a correct marker.
    #[test]
    fn a_marked_output_directory_must_be_private() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("out");
        super::output_dir(&dir, "validate").unwrap();
        assert!(super::check_output_dir(&dir, "validate").unwrap());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = super::check_output_dir(&dir, "validate").unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(super::check_output_dir(&dir, "validate").unwrap());
    }
}
