//! Crash-safe file system helpers shared by every drivesec crate that persists state.
//!
//! The rule they enforce: a reader either sees the old content of a file or the
//! complete new content, never a partial write. Every write goes to a temporary
//! file in the same directory, is fsynced, renamed over the target, and the
//! directory is fsynced so the rename itself survives a power cut.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An error from a file system operation, naming the path it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// An I/O operation failed on `path`.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write", "create directory", ...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A directory to build in is not (or is no longer) this user's private
    /// directory: a symbolic link, not a directory, another user's,
    /// writable by others, or another directory than the one checked.
    #[error("{path} {why}; refusing to use it")]
    NotPrivateDir {
        /// The path concerned.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The target exists and the caller asked not to replace it.
    #[error("{path} already exists; refusing to overwrite it")]
    AlreadyExists {
        /// The existing path.
        path: PathBuf,
    },
}

impl FsError {
    /// Wraps an I/O error with the operation and path.
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// File mode for a new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 0600: secrets, keys, anything only the owner may read.
    Private,
    /// 0644: certificates, public metadata.
    Public,
}

impl Mode {
    fn bits(self) -> u32 {
        match self {
            Mode::Private => 0o600,
            Mode::Public => 0o644,
        }
    }
}

fn temp_sibling(path: &Path) -> PathBuf {
    let mut rnd = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut rnd);
    let suffix: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{suffix}"))
}

/// The effective user id of this process (the owner of `/proc/self`).
pub fn current_uid() -> Result<u32, FsError> {
    use std::os::unix::fs::MetadataExt;
    let me = Path::new("/proc/self");
    Ok(fs::metadata(me)
        .map_err(|e| FsError::io("stat", me, e))?
        .uid())
}

/// Why a directory with metadata `md` is not private to this user (owned
/// by another user, or writable by group or others), or `None` when it is.
pub fn not_private_dir(md: &fs::Metadata) -> Result<Option<&'static str>, FsError> {
    use std::os::unix::fs::MetadataExt;
    if md.uid() != current_uid()? {
        return Ok(Some("is owned by another user"));
    }
    if md.mode() & 0o022 != 0 {
        return Ok(Some("is writable by group or others"));
    }
    Ok(None)
}

/// Fsyncs a directory so that renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    let d = File::open(dir).map_err(|e| FsError::io("open directory", dir, e))?;
    d.sync_all()
        .map_err(|e| FsError::io("fsync directory", dir, e))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `data` to a new fsynced temporary file beside `path`; returns its name.
fn write_temp(path: &Path, data: &[u8], mode: Mode) -> Result<PathBuf, FsError> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.bits())
            .open(&tmp)
            .map_err(|e| FsError::io("create", &tmp, e))?;
        // The umask may have narrowed the mode; never widen a private file.
        f.set_permissions(fs::Permissions::from_mode(mode.bits()))
            .map_err(|e| FsError::io("chmod", &tmp, e))?;
        f.write_all(data)
            .map_err(|e| FsError::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| FsError::io("fsync", &tmp, e))
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Atomically replaces `path` with `data`: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: Mode) -> Result<(), FsError> {
    let tmp = write_temp(path, data, mode)?;
    let result = fs::rename(&tmp, path)
        .map_err(|e| FsError::io("rename into place", path, e))
        .and_then(|()| sync_dir(parent_of(path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Atomically replaces `path` with what `fill` writes into a temporary file
/// beside it (for content too large to hold in memory): the temp file is
/// fsynced, renamed over `path`, and the directory fsynced. On error nothing
/// changes at `path`.
pub fn write_atomic_with<E: From<FsError>>(
    path: &Path,
    mode: Mode,
    fill: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.bits())
            .open(&tmp)
            .map_err(|e| FsError::io("create", &tmp, e))?;
        fill(&mut f)?;
        f.sync_all().map_err(|e| FsError::io("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| FsError::io("rename into place", path, e))?;
        sync_dir(parent_of(path)).map_err(E::from)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Like [`write_atomic`] but fails with [`FsError::AlreadyExists`] if `path` exists.
///
/// Uses a hard link from the fsynced temp file, so the check and the creation are
/// one atomic step even against a concurrent writer.
pub fn write_new(path: &Path, data: &[u8], mode: Mode) -> Result<(), FsError> {
    if path.exists() {
        return Err(FsError::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let tmp = write_temp(path, data, mode)?;
    let result = fs::hard_link(&tmp, path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                FsError::AlreadyExists {
                    path: path.to_path_buf(),
                }
            } else {
                FsError::io("link into place", path, e)
            }
        })
        .and_then(|()| sync_dir(parent_of(path)));
    let _ = fs::remove_file(&tmp);
    result
}

/// A directory built under a hidden sibling name and renamed into place by
/// [`StagedDir::commit`]; dropped uncommitted, it is removed. Multi-file
/// creations (a CA, a device) use it so a failure leaves nothing behind.
#[derive(Debug)]
pub struct StagedDir {
    staging: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Starts building `target`, which must not exist; its parent must be writable.
    pub fn new(target: &Path) -> Result<Self, FsError> {
        if target.exists() {
            return Err(FsError::AlreadyExists {
                path: target.to_path_buf(),
            });
        }
        let parent = parent_of(target);
        ensure_writable_dir(parent)?;
        let staging = temp_sibling(target);
        create_private_dir(&staging)?;
        Ok(StagedDir {
            staging,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// Where to build.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Renames the finished directory into place (durably).
    pub fn commit(mut self) -> Result<PathBuf, FsError> {
        fs::rename(&self.staging, &self.target)
            .map_err(|e| FsError::io("rename into place", &self.target, e))?;
        self.committed = true;
        sync_dir(parent_of(&self.target))?;
        Ok(self.target.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Removes a file and makes the removal durable (fsyncs the directory).
/// A file that is already gone is not an error.
pub fn remove_durable(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FsError::io("remove", path, e)),
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Creates a directory (and its parents) with mode 0700 for the last component.
pub fn create_private_dir(path: &Path) -> Result<(), FsError> {
    fs::create_dir_all(path).map_err(|e| FsError::io("create directory", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(|e| FsError::io("chmod", path, e))
}

/// Opens the directory `path` itself, never a symbolic link's target
/// (`O_NOFOLLOW | O_DIRECTORY`): a symlink or a non-directory at `path`
/// fails.
pub fn open_dir_nofollow(path: &Path) -> Result<File, FsError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // With O_DIRECTORY, Linux reports a symlink as ENOTDIR.
            Some(libc::ELOOP | libc::ENOTDIR) => FsError::NotPrivateDir {
                path: path.to_path_buf(),
                why: match fs::symlink_metadata(path) {
                    Ok(md) if md.file_type().is_symlink() => "is a symbolic link",
                    _ => "is not a directory",
                }
                .into(),
            },
            _ => FsError::io("open directory", path, e),
        })
}

/// Takes `path` as a private directory (0700) to build in, with no window
/// for a swap between a check and the use:
///
/// - `checked: None` (nothing was at `path` when it was checked): it is
///   created with mkdir semantics (its parents as needed), which fail if
///   anything, a symbolic link too, appeared there meanwhile;
/// - `checked: Some(md)` (an existing empty directory passed a check,
///   `md` its `symlink_metadata`): it is used only if it is still that
///   directory.
///
/// Either way the directory is then opened without following a link
/// ([`open_dir_nofollow`]), and the opened handle is checked with fstat:
/// a directory of this user's nobody else can write to, the same one
/// (device and inode) `checked` saw and the path names now. Its mode is
/// set to 0700 through the handle. Returns the open handle.
pub fn claim_private_dir(path: &Path, checked: Option<&fs::Metadata>) -> Result<File, FsError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if checked.is_none() {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| FsError::io("create directory", parent, e))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    FsError::NotPrivateDir {
                        path: path.to_path_buf(),
                        why: "appeared after it was checked".into(),
                    }
                } else {
                    FsError::io("create directory", path, e)
                }
            })?;
    }
    let refuse = |why: &str| FsError::NotPrivateDir {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let dir = open_dir_nofollow(path)?;
    let md = dir
        .metadata()
        .map_err(|e| FsError::io("fstat directory", path, e))?;
    if !md.is_dir() {
        return Err(refuse("is not a directory"));
    }
    if let Some(why) = not_private_dir(&md)? {
        return Err(refuse(why));
    }
    let same = |other: &fs::Metadata| other.dev() == md.dev() && other.ino() == md.ino();
    if checked.is_some_and(|c| !same(c)) {
        return Err(refuse("is another directory than the one checked"));
    }
    match fs::symlink_metadata(path) {
        Ok(now) if same(&now) => {}
        Ok(_) => return Err(refuse("was replaced while it was opened")),
        Err(e) => return Err(FsError::io("stat", path, e)),
    }
    dir.set_permissions(fs::Permissions::from_mode(0o700))
        .map_err(|e| FsError::io("chmod", path, e))?;
    Ok(dir)
}

/// Reads a whole file, naming the path in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, FsError> {
    fs::read(path).map_err(|e| FsError::io("read", path, e))
}

/// Reads a whole UTF-8 file, naming the path in the error.
pub fn read_to_string(path: &Path) -> Result<String, FsError> {
    fs::read_to_string(path).map_err(|e| FsError::io("read", path, e))
}

/// Overwrites a file's content with zeros, fsyncs, then removes it.
///
/// Used when destroying key files. On flash with wear levelling or a
/// copy-on-write file system the old blocks may survive; the soft keystore
/// therefore also encrypts every key at rest, so destroying the device secret
/// makes any surviving block useless.
pub fn shred(path: &Path) -> Result<(), FsError> {
    let len = fs::metadata(path)
        .map_err(|e| FsError::io("stat", path, e))?
        .len();
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| FsError::io("open for shredding", path, e))?;
    let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
    f.write_all(&zeros)
        .map_err(|e| FsError::io("overwrite", path, e))?;
    f.sync_all().map_err(|e| FsError::io("fsync", path, e))?;
    drop(f);
    fs::remove_file(path).map_err(|e| FsError::io("remove", path, e))?;
    sync_dir(parent_of(path))
}

/// Checks that `dir` can receive new files, with an error naming it if not.
pub fn ensure_writable_dir(dir: &Path) -> Result<(), FsError> {
    let probe = temp_sibling(&dir.join("probe"));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| FsError::io("write into directory", dir, e))?;
    fs::remove_file(&probe).map_err(|e| FsError::io("remove", &probe, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn atomic_write_replaces_and_sets_private_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        write_atomic(&p, b"one", Mode::Private).unwrap();
        write_atomic(&p, b"two", Mode::Private).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp files left behind.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_new_refuses_existing_and_leaves_it_untouched() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_new(&p, b"first", Mode::Public).unwrap();
        let err = write_new(&p, b"second", Mode::Public).unwrap_err();
        assert!(matches!(err, FsError::AlreadyExists { .. }));
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_write_names_path_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir").join("f");
        let err = write_atomic(&p, b"x", Mode::Public).unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn staged_dir_commits_or_vanishes() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("ca");
        let st = StagedDir::new(&target).unwrap();
        write_new(&st.path().join("f"), b"x", Mode::Public).unwrap();
        drop(st);
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            0,
            "uncommitted staging left behind"
        );
        let st = StagedDir::new(&target).unwrap();
        write_new(&st.path().join("f"), b"x", Mode::Public).unwrap();
        assert_eq!(st.commit().unwrap(), target);
        assert_eq!(fs::read(target.join("f")).unwrap(), b"x");
        assert!(matches!(
            StagedDir::new(&target).unwrap_err(),
            FsError::AlreadyExists { .. }
        ));
    }

    /// A new directory is made 0700 and a name taken meanwhile is refused;
    /// a checked directory is used only if it is still the same private
    /// directory, never through a symbolic link swapped in.
    #[test]
    fn claim_private_dir_refuses_links_swaps_and_shared_dirs() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let new = d.path().join("a").join("new");
        claim_private_dir(&new, None).unwrap();
        assert_eq!(fs::metadata(&new).unwrap().mode() & 0o777, 0o700);
        // Something appeared after the check said "nothing there".
        let e = claim_private_dir(&new, None).unwrap_err();
        assert!(e.to_string().contains("appeared after"), "{e}");
        let target = d.path().join("target");
        fs::create_dir(&target).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = claim_private_dir(&link, None).unwrap_err();
        assert!(e.to_string().contains("appeared after"), "{e}");
        // The checked directory swapped for a link to another one.
        let checked = fs::symlink_metadata(&target).unwrap();
        let e = claim_private_dir(&link, Some(&checked)).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        // ... or for another directory.
        let other = d.path().join("other");
        fs::create_dir(&other).unwrap();
        let e = claim_private_dir(&other, Some(&checked)).unwrap_err();
        assert!(e.to_string().contains("another directory"), "{e}");
        // Writable by others (after the check).
        fs::set_permissions(&target, fs::Permissions::from_mode(0o777)).unwrap();
        let e = claim_private_dir(&target, Some(&checked)).unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        fs::set_permissions(&target, fs::Permissions::from_mode(0o750)).unwrap();
        claim_private_dir(&target, Some(&checked)).unwrap();
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn shred_removes_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        write_atomic(&p, b"keymaterial", Mode::Private).unwrap();
        shred(&p).unwrap();
        assert!(!p.exists());
    }
}
