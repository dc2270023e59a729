//! Reading a segment file frame by frame in bounded memory: the one place
//! that walks frames, unreadable bytes and the end of a segment
//! (docs/audit.md, "Frame"), for every reader of the trail (show, export,
//! verify, the start-up check, a factory reset's anchor, the forwarder).
//!
//! A [`Scanner`] holds a window of the file of at most [`WINDOW`] bytes
//! (at least two largest frames), slides it as it goes and resynchronises
//! inside it after unreadable bytes, so its answers are exactly those of
//! [`frame::decode`] and [`frame::resync`] over the whole file held in
//! memory, at a memory cost that does not grow with the segment, and in
//! time linear in the bytes read however many `DSA1` candidates they hold.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use drivesec_fsutil::FsError;

use crate::Result;
use crate::frame::{self, Frame, HEADER, MAX_FRAME, Resync, Scan, TRAILER};

/// The most bytes of a segment a [`Scanner`] holds at once.
pub const WINDOW: usize = 4 << 20;

/// How much a scanner reads at a time when it needs more.
const CHUNK: usize = 256 << 10;

/// Bytes that are not a valid frame, up to the next valid frame or the end
/// of the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable {
    /// Where they start.
    pub offset: u64,
    /// Where the next valid frame starts, or the end of the segment.
    pub end: u64,
    /// Why the bytes at `offset` are no frame ([`frame::decode`]'s reason).
    pub reason: &'static str,
    /// [`frame::damaged_seq`] of the bytes at `offset`: a frame written
    /// whole whose checksum fails now.
    pub damaged_seq: Option<u64>,
    /// No valid frame follows: they run to the end of the segment (a torn
    /// or damaged tail), and nothing comes after this item.
    pub to_end: bool,
}

/// What a [`Scanner`] reads next.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    /// A valid frame at `offset`.
    Frame {
        /// Where it starts.
        offset: u64,
        /// The frame (borrowed from the scanner's window).
        frame: Frame<'a>,
    },
    /// Unreadable bytes; reading goes on at `end` unless `to_end`.
    Unreadable(Unreadable),
    /// The end of the segment's frames at `offset`: the end of the file, or
    /// only zero bytes (unwritten space) from there on. Nothing follows.
    End {
        /// Where the frames end.
        offset: u64,
    },
}

/// Reads one segment file from an offset: frames, unreadable spans and
/// the end, in file order (see the module documentation).
pub struct Scanner {
    file: File,
    path: PathBuf,
    /// The window: the file's bytes from `base` on.
    buf: Vec<u8>,
    base: u64,
    /// Where the next item starts (never below `base`).
    pos: u64,
    /// A read returned no bytes: `buf` ends where the file ends.
    eof: bool,
    /// The last item (the end, or unreadable bytes to it) was given.
    done: bool,
    window: usize,
    /// Prefix checksums of the window (reset when it slides).
    rs: Resync,
    /// Bytes checksummed by earlier windows' `rs`.
    resync_work: u64,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("path", &self.path)
            .field("base", &self.base)
            .field("pos", &self.pos)
            .field("window", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Scanner {
    /// Reads `path` from its start.
    pub fn open(path: &Path) -> Result<Scanner> {
        Scanner::open_at(path, 0)
    }

    /// Reads `path` from byte `offset` on (as if the file started there).
    pub fn open_at(path: &Path, offset: u64) -> Result<Scanner> {
        Scanner::with_window(path, offset, WINDOW)
    }

    /// [`Scanner::open_at`] with a window of `window` bytes (at least two
    /// largest frames): for the tests of the sliding window.
    #[doc(hidden)]
    pub fn with_window(path: &Path, offset: u64, window: usize) -> Result<Scanner> {
        let mut file = File::open(path).map_err(|e| FsError::io("open", path, e))?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| FsError::io("seek", path, e))?;
        }
        Ok(Scanner {
            file,
            path: path.to_path_buf(),
            buf: Vec::new(),
            base: offset,
            pos: offset,
            eof: false,
            done: false,
            window: window.max(2 * MAX_FRAME),
            rs: Resync::default(),
            resync_work: 0,
        })
    }

    /// Where the next item starts: after the last frame or unreadable
    /// span read (where the frames end once [`Item::End`] was read).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The most bytes the window ever held (for the tests).
    #[doc(hidden)]
    pub fn window_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next item, or `None` after the last one.
    pub fn next_item(&mut self) -> Result<Option<Item<'_>>> {
        if self.done {
            return Ok(None);
        }
        let pos = self.pos;
        self.ensure(pos, MAX_FRAME)?;
        let rel = self.rel(pos);
        if rel >= self.buf.len() {
            self.done = true;
            return Ok(Some(Item::End { offset: pos }));
        }
        // The frame's fields, then its body borrowed again (a borrow
        // returned on one branch only would hold the window on all).
        let decoded = frame::decode_frame(&self.buf[rel..]).map(|f| (f.seq, f.prev, f.hash, f.len));
        let reason = match decoded {
            Ok((seq, prev, hash, len)) => {
                self.pos = pos + len as u64;
                return Ok(Some(Item::Frame {
                    offset: pos,
                    frame: Frame {
                        seq,
                        prev,
                        body: &self.buf[rel + HEADER..rel + len - TRAILER],
                        hash,
                        len,
                    },
                }));
            }
            Err(reason) => reason,
        };
        let damaged_seq = frame::damaged_seq(&self.buf[rel..]);
        // A valid frame never starts with a zero byte: from a zero byte on
        // either everything is zero (the end) or the next frame starts at
        // or after the next byte that is not zero.
        let from = if self.buf[rel] == 0 {
            match self.first_nonzero(pos)? {
                Some(at) => at,
                None => {
                    self.done = true;
                    return Ok(Some(Item::End { offset: pos }));
                }
            }
        } else {
            pos + 1
        };
        let next = self.resync_from(from)?;
        let end = match next {
            Some(n) => n,
            None => self.base + self.buf.len() as u64,
        };
        self.pos = end;
        self.done = next.is_none();
        Ok(Some(Item::Unreadable(Unreadable {
            offset: pos,
            end,
            reason,
            damaged_seq,
            to_end: next.is_none(),
        })))
    }

    fn rel(&self, at: u64) -> usize {
        // `at` is never below `base` nor beyond the window's end; should it
        // be, the window's end is taken (no panic in a daemon path).
        usize::try_from(at.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .min(self.buf.len())
    }

    /// Makes the window hold the bytes from `at` for `need` bytes, or up to
    /// the end of the file; slides it (dropping the bytes before `at`) when
    /// they would not fit.
    fn ensure(&mut self, at: u64, need: usize) -> Result<()> {
        let rel = self.rel(at);
        if self.eof || rel + need <= self.buf.len() {
            return Ok(());
        }
        if rel + need > self.window {
            self.buf.drain(..rel);
            self.base = at;
            self.resync_work += self.rs.work();
            self.rs = Resync::default();
        }
        let want = self.rel(at) + need;
        while self.buf.len() < want && !self.eof {
            let old = self.buf.len();
            let n = (want.max(old + CHUNK).min(self.window) - old) as u64;
            self.buf.reserve_exact(n as usize);
            // Appends without zero-filling first; fewer bytes than asked
            // means the file ended.
            let got = (&mut self.file)
                .take(n)
                .read_to_end(&mut self.buf)
                .map_err(|e| FsError::io("read", &self.path, e))?;
            self.eof = (got as u64) < n;
        }
        Ok(())
    }

    /// The first byte at or after `at` that is not zero, if any.
    fn first_nonzero(&mut self, mut at: u64) -> Result<Option<u64>> {
        loop {
            self.ensure(at, 1)?;
            let rel = self.rel(at);
            if let Some(i) = self.buf[rel..].iter().position(|&b| b != 0) {
                return Ok(Some(at + i as u64));
            }
            if self.eof {
                return Ok(None);
            }
            at = self.base + self.buf.len() as u64;
        }
    }

    /// The first valid frame at or after `start`, if any.
    fn resync_from(&mut self, mut start: u64) -> Result<Option<u64>> {
        loop {
            self.ensure(start, MAX_FRAME)?;
            let rel = self.rel(start);
            match self.rs.scan(&self.buf, rel, self.eof) {
                Scan::Found(at) => return Ok(Some(self.base + at as u64)),
                Scan::NotFound => return Ok(None),
                Scan::NeedMore(at) => start = self.base + at as u64,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::frame::{Decoded, MAGIC, MAX_BODY, decode, encode, resync};

    /// What a reader holding the whole segment in memory gets:
    /// (kind, offset, end or length, reason / seq).
    fn in_memory(data: &[u8]) -> Vec<(char, u64, u64, String)> {
        let mut out = Vec::new();
        let mut rs = Resync::default();
        let mut off = 0;
        loop {
            if off >= data.len() {
                out.push(('e', off as u64, 0, String::new()));
                break;
            }
            match decode(&data[off..]) {
                Decoded::Frame(f) => {
                    out.push(('f', off as u64, f.len as u64, f.seq.to_string()));
                    off += f.len;
                }
                Decoded::End => {
                    out.push(('e', off as u64, 0, String::new()));
                    break;
                }
                Decoded::Bad(reason) => {
                    let next = rs.next(data, off);
                    let end = next.unwrap_or(data.len());
                    let seq = frame::damaged_seq(&data[off..]);
                    out.push(('u', off as u64, end as u64, format!("{reason} {seq:?}")));
                    match next {
                        Some(n) => off = n,
                        None => break,
                    }
                }
            }
        }
        out
    }

    fn streamed(path: &Path, window: usize) -> (Vec<(char, u64, u64, String)>, usize) {
        let mut sc = Scanner::with_window(path, 0, window).unwrap();
        let mut out = Vec::new();
        while let Some(item) = sc.next_item().unwrap() {
            out.push(match item {
                Item::Frame { offset, frame } => {
                    ('f', offset, frame.len as u64, frame.seq.to_string())
                }
                Item::Unreadable(u) => (
                    'u',
                    u.offset,
                    u.end,
                    format!("{} {:?}", u.reason, u.damaged_seq),
                ),
                Item::End { offset } => ('e', offset, 0, String::new()),
            });
        }
        (out, sc.window_capacity())
    }

    /// A segment of `n` frames with bodies of varied length (some the
    /// longest), so that frames straddle every window boundary.
    fn trail(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = [0; 32];
        for i in 1..=n {
            let len = if i % 7 == 0 {
                MAX_BODY
            } else {
                (i as usize * 977) % 9000 + 1
            };
            prev = encode(i, &prev, &vec![b'a' + (i % 26) as u8; len], &mut out);
        }
        out
    }

    /// The streamed reading is the in-memory one, byte for byte, on intact,
    /// damaged, torn, zero-padded and crafted segments, with the smallest
    /// window (so it slides many times) and the default one; the window
    /// never grows beyond its bound.
    #[test]
    fn streaming_reads_what_the_whole_segment_in_memory_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("seg");
        let base = trail(120);
        assert!(base.len() > 4 * MAX_FRAME);
        let mut cases: Vec<Vec<u8>> = vec![Vec::new(), vec![0; 10], base.clone()];
        // Flipped bytes at many places, a torn tail, zeros in the middle
        // and at the end, garbage between frames, a crafted run of
        // candidates across a window boundary.
        for step in [997usize, 65_537, 131_101] {
            let mut bad = base.clone();
            for at in (13..bad.len()).step_by(step) {
                bad[at] ^= 0x5a;
            }
            cases.push(bad);
        }
        cases.push(base[..base.len() - 10].to_vec());
        let mut zeros = base.clone();
        zeros.extend(vec![0; 3 * MAX_FRAME]);
        cases.push(zeros.clone());
        zeros.extend_from_slice(&base[..200]);
        cases.push(zeros);
        let mut mid = base[..base.len() / 2].to_vec();
        mid.extend(vec![0; 200_000]);
        mid.extend_from_slice(&base[base.len() / 2..]);
        cases.push(mid);
        let mut crafted = base[..300_000].to_vec();
        while crafted.len() < 700_000 {
            crafted.extend_from_slice(&MAGIC);
            crafted.extend_from_slice(&(MAX_BODY as u32).to_le_bytes());
        }
        crafted.extend_from_slice(&base);
        cases.push(crafted);
        let mut tiny = vec![0u8; 5];
        tiny.extend_from_slice(b"DSA1");
        cases.push(tiny);
        for (i, data) in cases.iter().enumerate() {
            std::fs::write(&p, data).unwrap();
            let want = in_memory(data);
            for window in [0, WINDOW] {
                let (got, cap) = streamed(&p, window);
                assert_eq!(got, want, "case {i}, window {window}");
                assert!(cap <= window.max(2 * MAX_FRAME), "case {i}: {cap}");
            }
        }
    }

    /// Unreadable bytes far beyond the window are skipped in bounded
    /// memory to the frame after them.
    #[test]
    fn a_segment_larger_than_the_window_is_read_in_bounded_memory() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("seg");
        let mut buf = vec![0x5a; 3 * WINDOW];
        let garbage = buf.len() as u64;
        encode(7, &[0; 32], b"{}", &mut buf);
        std::fs::write(&p, &buf).unwrap();
        let mut sc = Scanner::open(&p).unwrap();
        let Some(Item::Unreadable(u)) = sc.next_item().unwrap() else {
            panic!("unreadable bytes first")
        };
        assert_eq!((u.offset, u.end, u.to_end), (0, garbage, false));
        let Some(Item::Frame { offset, frame }) = sc.next_item().unwrap() else {
            panic!("then the frame")
        };
        assert_eq!((offset, frame.seq), (garbage, 7));
        assert!(matches!(sc.next_item().unwrap(), Some(Item::End { .. })));
        assert!(sc.next_item().unwrap().is_none());
        assert!(sc.window_capacity() <= WINDOW, "{}", sc.window_capacity());
    }

    /// Resynchronisation stays linear while the window slides: a run of
    /// crafted candidates (each declaring the longest body) many windows
    /// long, read with the smallest window, costs one pass (checking every
    /// candidate in full would take minutes), and finds the frame after it.
    #[test]
    fn resync_over_crafted_candidates_stays_fast_across_window_slides() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("seg");
        let mut buf = Vec::new();
        while buf.len() < 1 << 20 {
            buf.extend_from_slice(&MAGIC);
            buf.extend_from_slice(&(MAX_BODY as u32).to_le_bytes());
        }
        let crafted = buf.len();
        encode(7, &[0; 32], b"{}", &mut buf);
        std::fs::write(&p, &buf).unwrap();
        let mut sc = Scanner::with_window(&p, 0, 0).unwrap();
        let Some(Item::Unreadable(u)) = sc.next_item().unwrap() else {
            panic!("unreadable bytes first")
        };
        assert_eq!((u.offset, u.end), (0, crafted as u64));
        // A pass per window plus at most two strides a candidate, never a
        // full checksum per candidate (8 GiB here).
        let work = sc.resync_work + sc.rs.work();
        let windows = (buf.len() / sc.window_capacity().max(1) + 2) as u64;
        assert!(
            work <= windows * sc.window_capacity() as u64 + (crafted as u64 / 8) * 512,
            "{work} bytes checksummed"
        );
        assert!(sc.window_capacity() <= 2 * MAX_FRAME + CHUNK);
        assert_eq!(resync(&buf, 0), Some(crafted));
    }

    /// Reading from an offset reads the rest of the file as a segment.
    #[test]
    fn a_scanner_opened_at_an_offset_starts_there() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("seg");
        let data = trail(10);
        std::fs::write(&p, &data).unwrap();
        let Decoded::Frame(first) = decode(&data) else {
            panic!()
        };
        let mut sc = Scanner::open_at(&p, first.len as u64).unwrap();
        let Some(Item::Frame { offset, frame }) = sc.next_item().unwrap() else {
            panic!()
        };
        let (seq, len) = (frame.seq, frame.len);
        assert_eq!((offset, seq), (first.len as u64, 2));
        assert_eq!(sc.position(), (first.len + len) as u64);
    }
}
