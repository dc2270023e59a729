//! The storage under the update and boot paths. Every persistent step is one
//! counted operation (create, write, fsync, rename, remove, directory fsync),
//! so a test can inject a crash before any chosen one ([`CrashStorage`]):
//! that operation and every later one fail, as if power were cut there.
//! [`CrashStorage::losing_page_cache`] also loses, at the crash, what the
//! page cache held: file data not fsynced and directory changes (creations,
//! renames, removals) not followed by a directory fsync.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A file being written.
pub trait WriteFile {
    /// Appends bytes (one operation).
    fn write_all(&mut self, b: &[u8]) -> io::Result<()>;
    /// fsync (one operation).
    fn sync(&mut self) -> io::Result<()>;
}

/// Files in one directory, addressed by name.
pub trait Storage: Send + Sync {
    /// Reads a whole file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Opens a file for streaming reads.
    fn open(&self, name: &str) -> io::Result<File>;
    /// Whether a file exists.
    fn exists(&self, name: &str) -> bool;
    /// Creates (or truncates) a file for writing (one operation).
    fn create(&self, name: &str) -> io::Result<Box<dyn WriteFile + '_>>;
    /// Renames (one operation).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file if present (one operation).
    fn remove(&self, name: &str) -> io::Result<()>;
    /// fsyncs the directory (one operation).
    fn sync_dir(&self) -> io::Result<()>;
}

/// Writes a small file atomically: temp, write, fsync, rename, directory fsync.
pub fn replace(st: &dyn Storage, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = format!("{name}.tmp");
    let mut f = st.create(&tmp)?;
    f.write_all(data)?;
    f.sync()?;
    drop(f);
    st.rename(&tmp, name)?;
    st.sync_dir()
}

/// The real thing: a directory.
#[derive(Debug, Clone)]
pub struct DirStorage {
    dir: PathBuf,
}

impl DirStorage {
    /// Storage in `dir` (created if missing).
    pub fn new(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(DirStorage {
            dir: dir.to_path_buf(),
        })
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct RealFile(File);

impl WriteFile for RealFile {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.0.write_all(b)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

impl Storage for DirStorage {
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.p(name))
    }
    fn open(&self, name: &str) -> io::Result<File> {
        File::open(self.p(name))
    }
    fn exists(&self, name: &str) -> bool {
        self.p(name).exists()
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn WriteFile + '_>> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.p(name))?;
        Ok(Box::new(RealFile(f)))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.p(from), self.p(to))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.p(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// A [`DirStorage`] that counts operations and "loses power" before operation
/// number `crash_at` (1-based): that one and all later ones fail.
#[derive(Debug, Clone)]
pub struct CrashStorage {
    inner: DirStorage,
    ops: Arc<AtomicU64>,
    crash_at: Option<u64>,
    crashed: Arc<AtomicBool>,
    cache: Option<Arc<Mutex<PageCache>>>,
}

/// What a power cut keeps: per file (inode), the content of its last
/// fsync; per name, the directory as of its last fsync.
#[derive(Debug, Default)]
struct PageCache {
    next: u64,
    /// Inode -> (content as written, content as of the last fsync).
    inodes: BTreeMap<u64, (Vec<u8>, Vec<u8>)>,
    /// The directory as it is now.
    live: BTreeMap<String, u64>,
    /// The directory as of the last directory fsync.
    durable: BTreeMap<String, u64>,
}

impl PageCache {
    /// The directory as it is now, all of it durable (the starting point).
    fn of(dir: &Path) -> io::Result<PageCache> {
        let mut c = PageCache::default();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                let data = std::fs::read(e.path())?;
                let ino = c.next;
                c.next += 1;
                c.inodes.insert(ino, (data.clone(), data));
                c.live
                    .insert(e.file_name().to_string_lossy().into_owned(), ino);
            }
        }
        c.durable = c.live.clone();
        Ok(c)
    }

    /// The power cut: the directory becomes what was durable.
    fn lose(&self, dir: &Path) -> io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                std::fs::remove_file(e.path())?;
            }
        }
        for (name, ino) in &self.durable {
            let data = self.inodes.get(ino).map(|i| i.1.as_slice()).unwrap_or(&[]);
            std::fs::write(dir.join(name), data)?;
        }
        Ok(())
    }
}

impl CrashStorage {
    /// Wraps `inner`; `crash_at: None` only counts.
    pub fn new(inner: DirStorage, crash_at: Option<u64>) -> Self {
        CrashStorage {
            inner,
            ops: Arc::new(AtomicU64::new(0)),
            crash_at,
            crashed: Arc::new(AtomicBool::new(false)),
            cache: None,
        }
    }

    /// Like [`CrashStorage::new`], and the crash also loses the page cache:
    /// afterwards each file holds what its last fsync wrote (a file never
    /// fsynced is empty) and the directory is as of its last fsync.
    pub fn losing_page_cache(inner: DirStorage, crash_at: Option<u64>) -> io::Result<Self> {
        let cache = PageCache::of(&inner.dir)?;
        Ok(CrashStorage {
            cache: Some(Arc::new(Mutex::new(cache))),
            ..CrashStorage::new(inner, crash_at)
        })
    }

    fn model(&self, f: impl FnOnce(&mut PageCache)) {
        if let Some(c) = &self.cache
            && let Ok(mut c) = c.lock()
        {
            f(&mut c);
        }
    }

    /// Operations attempted so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// Whether the injected crash happened.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    fn step(&self) -> io::Result<()> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        if self.crashed() || self.crash_at == Some(n) {
            let first = !self.crashed.swap(true, Ordering::SeqCst);
            if first && let Some(c) = &self.cache {
                let c = c
                    .lock()
                    .map_err(|_| io::Error::other("page cache model poisoned"))?;
                c.lose(&self.inner.dir)?;
            }
            return Err(io::Error::other(format!(
                "injected power loss before operation {n}"
            )));
        }
        Ok(())
    }
}

struct CrashFile<'a> {
    inner: Box<dyn WriteFile + 'a>,
    st: &'a CrashStorage,
    ino: u64,
}

impl WriteFile for CrashFile<'_> {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.st.step()?;
        self.inner.write_all(b)?;
        self.st.model(|c| {
            if let Some(i) = c.inodes.get_mut(&self.ino) {
                i.0.extend_from_slice(b);
            }
        });
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.st.step()?;
        self.inner.sync()?;
        self.st.model(|c| {
            if let Some(i) = c.inodes.get_mut(&self.ino) {
                i.1 = i.0.clone();
            }
        });
        Ok(())
    }
}

impl Storage for CrashStorage {
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.inner.read(name)
    }
    fn open(&self, name: &str) -> io::Result<File> {
        self.inner.open(name)
    }
    fn exists(&self, name: &str) -> bool {
        self.inner.exists(name)
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn WriteFile + '_>> {
        self.step()?;
        let inner = self.inner.create(name)?;
        // Truncating an existing file empties its inode at once (the worst
        // case); a new name gets a new inode.
        let mut ino = 0;
        self.model(|c| {
            ino = match c.live.get(name) {
                Some(&i) => i,
                None => {
                    let i = c.next;
                    c.next += 1;
                    c.live.insert(name.to_string(), i);
                    i
                }
            };
            c.inodes.insert(ino, (Vec::new(), Vec::new()));
        });
        Ok(Box::new(CrashFile {
            inner,
            st: self,
            ino,
        }))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.step()?;
        self.inner.rename(from, to)?;
        self.model(|c| {
            if let Some(i) = c.live.remove(from) {
                c.live.insert(to.to_string(), i);
            }
        });
        Ok(())
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.step()?;
        self.inner.remove(name)?;
        self.model(|c| {
            c.live.remove(name);
        });
        Ok(())
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.step()?;
        self.inner.sync_dir()?;
        self.model(|c| c.durable = c.live.clone());
        Ok(())
    }
}
