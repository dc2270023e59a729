//! Transactions over several files of the state directory
//! (docs/provisioning.md): every new content is written first into one
//! journal, atomically (the commit point); then the files are replaced one
//! by one and the journal is removed. A device killed before the commit
//! point keeps its old state; one killed after it finishes the job when the
//! state directory is next loaded ([`StateDir::load`](crate::StateDir::load)).
//!
//! Also the test-only fault and hold points a local test sets in the state
//! directory (`test-failpoint`).

use std::path::Path;

use drivesec_fsutil::{self as fsu, Mode};
use serde::{Deserialize, Serialize};

use crate::files;
use crate::{Result, StateError};

/// The journal file (`provision.journal`): every file of a transaction
/// with its new content.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// (file name in the state directory, content, private)
    pub files: Vec<(String, String, bool)>,
}

/// A test-only fault point: when `STATE/test-failpoint` names `point`, the
/// process aborts there. Only a local process with write access to the
/// state directory can set it.
#[doc(hidden)]
pub fn failpoint(dir: &Path, point: &str) {
    if std::fs::read_to_string(dir.join("test-failpoint")).is_ok_and(|s| s.trim() == point) {
        std::process::abort();
    }
}

/// Whether the test-only fault file names `point` (see [`failpoint`]; hold
/// points may be named one a line, so a test can hold two operations).
#[doc(hidden)]
pub fn failpoint_set(dir: &Path, point: &str) -> bool {
    std::fs::read_to_string(dir.join("test-failpoint"))
        .is_ok_and(|s| s.lines().any(|l| l.trim() == point))
}

/// A test-only hold point: when `STATE/test-failpoint` names `point`, the
/// caller writes `STATE/test-failpoint-reached` (naming it) and waits
/// there until the fault file names something else (at most a minute),
/// so a test can run another operation in between. Blocking: only on a
/// blocking path (drivesec-device's `blocking`).
#[doc(hidden)]
pub fn failpoint_hold(dir: &Path, point: &str) {
    if !failpoint_set(dir, point) {
        return;
    }
    let _ = std::fs::write(dir.join("test-failpoint-reached"), point);
    let start = std::time::Instant::now();
    while failpoint_set(dir, point) && start.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Finishes a provisioning transaction that passed its commit point.
/// Returns whether there was one.
pub(crate) fn roll_forward(dir: &Path) -> Result<bool> {
    let j = dir.join(files::PROVISION_JOURNAL);
    if !j.exists() {
        return Ok(false);
    }
    let journal: Journal =
        serde_json::from_slice(&fsu::read(&j)?).map_err(|e| StateError::State {
            path: j.clone(),
            reason: format!("unreadable provisioning journal: {e}"),
        })?;
    apply_files(dir, &journal)?;
    fsu::remove_durable(&j)?;
    Ok(true)
}

/// Writes each file of `j` (atomically, one by one). The caller wrote
/// the journal first (the commit point) and removes it after.
pub fn apply_files(dir: &Path, j: &Journal) -> Result<()> {
    // A journal names files of this directory only, never a path: all
    // checked before the first is written.
    for (name, _, _) in &j.files {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\\')
            || name.contains('\0')
        {
            return Err(StateError::Invalid(format!(
                "provisioning journal names '{}', which is not a file name of the state directory",
                name.escape_debug()
            )));
        }
    }
    for (i, (name, text, private)) in j.files.iter().enumerate() {
        if i == 1 {
            failpoint(dir, "provision:mid-apply");
        }
        let mode = if *private {
            Mode::Private
        } else {
            Mode::Public
        };
        fsu::write_atomic(&dir.join(name), text.as_bytes(), mode)?;
    }
    Ok(())
}

/// Replaces several files of the state directory as one transaction (the
/// same journal as provisioning: all of them, or none, even across a crash).
pub(crate) fn commit_files(dir: &Path, files: Vec<(String, String, bool)>) -> Result<()> {
    let journal = Journal { files };
    let text =
        serde_json::to_string_pretty(&journal).map_err(|e| StateError::Invalid(e.to_string()))?;
    fsu::write_atomic(
        &dir.join(files::PROVISION_JOURNAL),
        text.as_bytes(),
        Mode::Private,
    )?;
    apply_files(dir, &journal)?;
    fsu::remove_durable(&dir.join(files::PROVISION_JOURNAL))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{Journal, apply_files};

    /// A journal that names a path (a planted or corrupt one) writes
    /// nothing, not even the files named before the bad one.
    #[test]
    fn a_journal_naming_a_path_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        for bad in ["../outside", "/tmp/abs", "..", "", "a/b"] {
            let j = Journal {
                files: vec![
                    ("first.json".into(), "{}".into(), false),
                    (bad.into(), "x".into(), false),
                ],
            };
            let e = apply_files(&dir, &j).unwrap_err().to_string();
            assert!(e.contains("not a file name of the state directory"), "{e}");
            assert!(!dir.join("first.json").exists(), "{bad}");
        }
        assert!(!d.path().join("outside").exists());
        let ok = Journal {
            files: vec![("first.json".into(), "{}".into(), false)],
        };
        apply_files(&dir, &ok).unwrap();
        assert!(dir.join("first.json").exists());
    }
}
