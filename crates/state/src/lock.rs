//! One process at a time runs on or changes a state directory
//! (docs/device-state.md, "One process per directory: the lock"): the
//! exclusive flock(2) on `STATE/drivesecd.lock` ([`files::LOCK`]), held
//! by drivesecd for its whole life and by the tools that change a
//! directory offline for as long as they do.
//!
//! The lock is the flock, never the file's existence: the kernel releases
//! it however its holder ends (SIGKILL, a crash, a power cut), so a file
//! left behind locks nothing. The holder writes its PID and what it is
//! into the file once it holds the lock, so whoever is refused is told
//! whom to stop.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Result, StateError, files};

/// Who holds a state directory's lock, as it wrote it into the lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its process id.
    pub pid: u32,
    /// What it is (`drivesecd`, `drivesec factory install-firmware`, ...).
    pub what: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (PID {})", self.what, self.pid)
    }
}

/// What [`StateError::InUse`] says: the directory, who holds it and what
/// to do.
pub fn in_use_message(dir: &Path, holder: Option<&Holder>) -> String {
    let lock = dir.join(files::LOCK);
    match holder {
        Some(h) => format!(
            "the state directory {} is in use by {h}, which holds its lock {}: \
             one process at a time may run on or change a state directory; \
             stop it first (kill {}) or use another state directory",
            dir.display(),
            lock.display(),
            h.pid
        ),
        None => format!(
            "the state directory {} is in use: another process holds its lock {} \
             (it did not write its PID); stop it first or use another state directory",
            dir.display(),
            lock.display()
        ),
    }
}

/// The exclusive lock on a state directory, released when dropped (or
/// when the process ends, however it ends).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock on `dir` for `what` (`drivesecd`, the tool command),
    /// creating the lock file if needed, and writes `PID WHAT` into it.
    /// Refused with [`StateError::InUse`], naming the holder, while another
    /// process holds it; never waits. A directory without `device.json` is
    /// refused as [`crate::StateDir::load`] refuses it, and gets no lock
    /// file.
    pub fn acquire(dir: &Path, what: &str) -> Result<StateLock> {
        crate::dir::require_device_file(dir)?;
        let path = dir.join(files::LOCK);
        let file = open(&path, true).map_err(|e| drivesec_fsutil::FsError::io("open", &path, e))?;
        lock(dir, path, file, what)
    }

    /// [`StateLock::acquire`] without creating anything: `None` when `dir`
    /// has no lock file (no drivesecd ever ran on it: a running one always
    /// has one). For a tool that must leave a directory as it found it
    /// (re-provisioning keeps the old directory as evidence).
    pub fn acquire_existing(dir: &Path, what: &str) -> Result<Option<StateLock>> {
        let path = dir.join(files::LOCK);
        match open(&path, false) {
            Ok(file) => lock(dir, path, file, what).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(drivesec_fsutil::FsError::io("open", &path, e).into()),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens the lock file read-write, created private (0600); a symbolic
/// link in its place is refused, not followed. A lock file this user may
/// not write (another user, such as root running `drivesecd check`, made
/// it) is opened read-only: a flock needs no more, so such a file never
/// keeps the drive from starting; only the holder's PID is not written.
fn open(path: &Path, create: bool) -> std::io::Result<File> {
    let flags = (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o600)
        .custom_flags(flags)
        .open(path)
    {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            OpenOptions::new().read(true).custom_flags(flags).open(path)
        }
        r => r,
    }
}

/// Whether `file` was opened for writing.
fn writable(file: &File) -> bool {
    rustix::fs::fcntl_getfl(file).is_ok_and(|f| f.contains(rustix::fs::OFlags::RDWR))
}

fn lock(dir: &Path, path: PathBuf, mut file: File, what: &str) -> Result<StateLock> {
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(StateError::InUse {
                    dir: dir.to_path_buf(),
                    holder: holder(&file),
                });
            }
            Err(e) => {
                return Err(
                    drivesec_fsutil::FsError::io("lock", &path, std::io::Error::from(e)).into(),
                );
            }
        }
    }
    // Ours now: what a previous holder wrote (a killed daemon's PID) goes.
    // A lock file another user made is only read: the lock holds all the
    // same, its content stays.
    if !writable(&file) {
        return Ok(StateLock { _file: file, path });
    }
    let pid = std::process::id();
    let written = file
        .set_len(0)
        .and_then(|()| file.write_all_at(format!("{pid} {what}\n").as_bytes(), 0))
        .and_then(|()| file.flush());
    written.map_err(|e| drivesec_fsutil::FsError::io("write", &path, e))?;
    Ok(StateLock { _file: file, path })
}

/// Who holds the lock, from the file. A holder writes right after it
/// locks: an empty file is read again for up to a second before the
/// holder is reported unknown.
fn holder(file: &File) -> Option<Holder> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let mut buf = [0u8; 256];
        let n = file.read_at(&mut buf, 0).unwrap_or(0);
        if let Some(h) = parse(&buf[..n]) {
            return Some(h);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `PID WHAT\n`.
fn parse(bytes: &[u8]) -> Option<Holder> {
    let text = std::str::from_utf8(bytes).ok()?;
    let line = text.lines().next()?.trim();
    let (pid, what) = line.split_once(' ').unwrap_or((line, "a process"));
    let pid: u32 = pid.parse().ok().filter(|&p| p > 0)?;
    let what: String = what
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    Some(Holder { pid, what })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn state_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(files::DEVICE), b"{}").unwrap();
        d
    }

    #[test]
    fn a_second_holder_is_refused_naming_the_first() {
        let d = state_dir();
        let first = StateLock::acquire(d.path(), "drivesecd").unwrap();
        assert_eq!(first.path(), d.path().join(files::LOCK));
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(first.path()).unwrap(),
            format!("{pid} drivesecd\n")
        );
        // Another open file description is another holder, even in this
        // process.
        let err = StateLock::acquire(d.path(), "drivesec factory install-firmware").unwrap_err();
        match &err {
            StateError::InUse { dir, holder } => {
                assert_eq!(dir, d.path());
                assert_eq!(
                    holder.as_ref().unwrap(),
                    &Holder {
                        pid,
                        what: "drivesecd".into()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(&format!("drivesecd (PID {pid})"))
                && text.contains(&format!("kill {pid}"))
                && text.contains(&d.path().display().to_string())
                && text.contains("another state directory"),
            "{text}"
        );
        assert!(matches!(
            StateLock::acquire_existing(d.path(), "x"),
            Err(StateError::InUse { .. })
        ));
        drop(first);
        // Released: the next holder takes it and writes itself.
        let next = StateLock::acquire(d.path(), "drivesecd check").unwrap();
        assert_eq!(
            std::fs::read_to_string(next.path()).unwrap(),
            format!("{pid} drivesecd check\n")
        );
    }

    /// A new lock file is private; a lock file this user may only read
    /// (another user made it) still locks, keeps its content, and a second
    /// holder is refused. (The read-only open is the one `open` falls back
    /// to on a permission error; given here directly, as the tests may run
    /// as root, whom permissions do not stop.)
    #[test]
    fn a_lock_file_another_user_made_still_locks() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = state_dir();
        let l = StateLock::acquire(d.path(), "drivesecd").unwrap();
        let mode = std::fs::metadata(l.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        drop(l);
        let path = d.path().join(files::LOCK);
        std::fs::write(&path, b"4194303 drivesecd of root\n").unwrap();
        let ro = std::fs::File::open(&path).unwrap();
        assert!(!writable(&ro));
        let held = lock(d.path(), path.clone(), ro, "drivesecd").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "4194303 drivesecd of root\n"
        );
        let e = StateLock::acquire(d.path(), "drivesecd").unwrap_err();
        assert!(matches!(e, StateError::InUse { .. }), "{e}");
        drop(held);
        StateLock::acquire(d.path(), "drivesecd").unwrap();
    }

    #[test]
    fn a_stale_file_locks_nothing() {
        let d = state_dir();
        // A killed daemon's file, longer than what the next one writes.
        std::fs::write(
            d.path().join(files::LOCK),
            b"4194303 drivesecd from long ago\n",
        )
        .unwrap();
        let l = StateLock::acquire(d.path(), "drivesecd").unwrap();
        assert_eq!(
            std::fs::read_to_string(l.path()).unwrap(),
            format!("{} drivesecd\n", std::process::id())
        );
    }

    #[test]
    fn no_lock_file_is_made_where_it_does_not_belong() {
        let d = tempfile::tempdir().unwrap();
        let err = StateLock::acquire(d.path(), "drivesecd").unwrap_err();
        assert!(err.to_string().contains("device.json is missing"), "{err}");
        assert!(!d.path().join(files::LOCK).exists());
        let d = state_dir();
        assert!(
            StateLock::acquire_existing(d.path(), "drivesec factory reprovision")
                .unwrap()
                .is_none()
        );
        assert!(!d.path().join(files::LOCK).exists());
        // A symbolic link in its place is not followed.
        let target = d.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, d.path().join(files::LOCK)).unwrap();
        assert!(StateLock::acquire(d.path(), "drivesecd").is_err());
        assert!(!target.exists());
    }

    #[test]
    fn the_holder_is_read_back_or_reported_unknown() {
        assert_eq!(
            parse(b"42 drivesecd\n"),
            Some(Holder {
                pid: 42,
                what: "drivesecd".into()
            })
        );
        assert_eq!(parse(b"42").unwrap().what, "a process");
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"0 drivesecd"), None);
        assert_eq!(parse(b"x drivesecd"), None);
        let text = in_use_message(Path::new("/s"), None);
        assert!(text.contains("/s/drivesecd.lock"), "{text}");
    }
}
