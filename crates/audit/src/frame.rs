//! The binary frame a record is stored in (all integers little-endian):
//!
//! ```text
//! offset size  field
//! 0      4     magic "DSA1"
//! 4      4     body length L (1 ..= MAX_BODY)
//! 8      8     sequence number (first record is 1)
//! 16     32    SHA-256 hash of the previous record (zeros before the first)
//! 48     L     body: the record as UTF-8 JSON
//! 48+L   4     CRC-32 (IEEE) of bytes 0 .. 48+L
//! ```
//!
//! A record's hash is SHA-256 over bytes 4 .. 48+L (length, sequence
//! number, previous hash and body). The CRC only finds torn writes; the hash
//! chain and the signed checkpoints are what protect integrity.

use sha2::{Digest, Sha256};

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"DSA1";
/// Header size before the body.
pub const HEADER: usize = 48;
/// Trailer size after the body.
pub const TRAILER: usize = 4;
/// Largest body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// A 32-byte SHA-256 hash.
pub type Hash = [u8; 32];

/// Appends one frame to `out` and returns the record's hash.
pub fn encode(seq: u64, prev: &Hash, body: &[u8], out: &mut Vec<u8>) -> Hash {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(prev);
    out.extend_from_slice(body);
    let hash: Hash = Sha256::digest(&out[start + 4..]).into();
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    hash
}

/// A frame read back.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Previous record's hash as stored.
    pub prev: Hash,
    /// The JSON body.
    pub body: &'a [u8],
    /// This record's hash.
    pub hash: Hash,
    /// Total bytes the frame occupies.
    pub len: usize,
}

/// The result of reading at an offset.
#[derive(Debug, Clone, Copy)]
pub enum Decoded<'a> {
    /// A complete, checksummed frame.
    Frame(Frame<'a>),
    /// No more data: end of buffer, or only zero bytes (unwritten space).
    End,
    /// Something that is not a complete valid frame.
    Bad(&'static str),
}

/// Reads the frame at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.is_empty() || buf.iter().take(HEADER).all(|&b| b == 0) && buf.iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    match decode_frame(buf) {
        Ok(f) => Decoded::Frame(f),
        Err(reason) => Decoded::Bad(reason),
    }
}

/// The largest frame: header, the longest body, trailer.
pub const MAX_FRAME: usize = HEADER + MAX_BODY + TRAILER;

/// Reads a valid frame at the start of `buf`, or says why there is none,
/// without [`decode`]'s test for unwritten space (all zero bytes to the
/// end). Gives [`decode`]'s answer for any frame start whose bytes are in
/// `buf` up to [`MAX_FRAME`] of them or up to the end of the data, so a
/// reader holding a window of a file can use it.
pub fn decode_frame(buf: &[u8]) -> Result<Frame<'_>, &'static str> {
    if buf.len() < HEADER + TRAILER {
        return Err("truncated frame header");
    }
    if buf[0..4] != MAGIC {
        return Err("bad frame magic");
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len == 0 || len > MAX_BODY {
        return Err("frame length out of range");
    }
    let total = HEADER + len + TRAILER;
    if buf.len() < total {
        return Err("truncated frame");
    }
    let crc = u32::from_le_bytes([
        buf[total - 4],
        buf[total - 3],
        buf[total - 2],
        buf[total - 1],
    ]);
    if crc32fast::hash(&buf[..HEADER + len]) != crc {
        return Err("frame checksum mismatch");
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[8..16]);
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&buf[16..48]);
    let hash: Hash = Sha256::digest(&buf[4..HEADER + len]).into();
    Ok(Frame {
        seq: u64::from_le_bytes(seq),
        prev,
        body: &buf[HEADER..HEADER + len],
        hash,
        len: total,
    })
}

/// Where the next readable frame starts after unreadable bytes at `from`:
/// the first later offset holding the magic and a complete frame that
/// passes its checksum, or `None` when none follows (the rest is torn or
/// garbage). Used to keep the records after a damaged one.
pub fn resync(buf: &[u8], from: usize) -> Option<usize> {
    Resync::default().next(buf, from)
}

/// [`resync`] for repeated use on one buffer (the same `buf` at every
/// call). Whether a candidate's checksum matches is found without reading
/// its whole frame: the CRC of any range follows from the CRCs of the
/// buffer's prefixes (`crc(B) = crc(A‖B) ⊕ crc(A)·x^(8|B|)`), kept every
/// `STRIDE` (256) bytes and computed once. So scanning unreadable bytes costs
/// time linear in their size, however many `DSA1` candidates declaring a
/// 64 KiB body they hold; the answer is exactly [`resync`]'s definition.
#[derive(Debug, Default, Clone)]
pub struct Resync {
    /// `marks[i]` is the CRC-32 of `buf[..i * STRIDE]`.
    marks: Vec<u32>,
    /// Bytes fed to the CRC so far: the cost the tests bound (never a
    /// clock).
    work: u64,
}

/// How far apart the kept prefix CRCs are.
const STRIDE: usize = 256;

impl Resync {
    /// The CRC-32 of `buf[..end]`.
    fn prefix(&mut self, buf: &[u8], end: usize) -> u32 {
        if self.marks.is_empty() {
            self.marks.push(0);
        }
        let want = end / STRIDE;
        while self.marks.len() <= want {
            let i = self.marks.len();
            let mut h = crc32fast::Hasher::new_with_initial(self.marks[i - 1]);
            h.update(&buf[(i - 1) * STRIDE..i * STRIDE]);
            self.marks.push(h.finalize());
            self.work += STRIDE as u64;
        }
        let mut h = crc32fast::Hasher::new_with_initial(self.marks[want]);
        h.update(&buf[want * STRIDE..end]);
        self.work += (end - want * STRIDE) as u64;
        h.finalize()
    }

    /// Bytes checksummed so far.
    pub(crate) fn work(&self) -> u64 {
        self.work
    }

    /// The CRC-32 of `buf[a..b]`.
    fn crc(&mut self, buf: &[u8], a: usize, b: usize) -> u32 {
        let pa = self.prefix(buf, a);
        let pb = self.prefix(buf, b);
        // crc(A) shifted over |B| zero bytes: combine(crc(A), 0, |B|).
        let mut h = crc32fast::Hasher::new_with_initial(pa);
        h.combine(&crc32fast::Hasher::new_with_initial_len(0, (b - a) as u64));
        pb ^ h.finalize()
    }

    /// The next valid frame after `from`, as [`resync`].
    pub fn next(&mut self, buf: &[u8], from: usize) -> Option<usize> {
        match self.scan(buf, from + 1, true) {
            Scan::Found(at) => Some(at),
            Scan::NotFound | Scan::NeedMore(_) => None,
        }
    }

    /// The first offset at or after `start` where a valid frame starts in
    /// `buf`. With `complete` false, `buf` is a window that more bytes
    /// follow: a candidate whose frame would pass the end of `buf`, or the
    /// end of `buf` itself, is `NeedMore` (where to go on once the window
    /// holds more), never a verdict. The same `buf` (the same window, only
    /// ever grown at its end) at every call.
    pub(crate) fn scan(&mut self, buf: &[u8], start: usize, complete: bool) -> Scan {
        let mut at = start;
        loop {
            if at + HEADER + TRAILER > buf.len() {
                return if complete {
                    Scan::NotFound
                } else {
                    Scan::NeedMore(at)
                };
            }
            let Some(i) = buf[at..].windows(4).position(|w| w == MAGIC) else {
                // A magic may straddle the window's end.
                return if complete {
                    Scan::NotFound
                } else {
                    Scan::NeedMore(buf.len().saturating_sub(MAGIC.len() - 1).max(at))
                };
            };
            let cand = at + i;
            // Cheap checks first: a length in range, all bytes present.
            if cand + HEADER + TRAILER <= buf.len() {
                let l = &buf[cand + 4..cand + 8];
                let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
                let total = HEADER + len + TRAILER;
                if (1..=MAX_BODY).contains(&len) {
                    if cand + total <= buf.len() {
                        let c = &buf[cand + total - 4..cand + total];
                        let stored = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                        if self.crc(buf, cand, cand + HEADER + len) == stored {
                            return Scan::Found(cand);
                        }
                    } else if !complete {
                        return Scan::NeedMore(cand);
                    }
                }
            } else if !complete {
                return Scan::NeedMore(cand);
            }
            at = cand + 1;
        }
    }
}

/// What [`Resync::scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// A valid frame starts here.
    Found(usize),
    /// None follows (the buffer is complete).
    NotFound,
    /// Nothing can be said before this offset's bytes are followed by more.
    NeedMore(usize),
}

/// The sequence number of a frame at the start of `buf` that was written
/// whole (magic, a length in range, every byte present) but fails its
/// checksum now: a record that existed and was damaged afterwards, unlike
/// a torn write, which never completed. Its number is never given out again.
pub fn damaged_seq(buf: &[u8]) -> Option<u64> {
    if buf.len() < HEADER + TRAILER || buf[0..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len == 0 || len > MAX_BODY || buf.len() < HEADER + len + TRAILER {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[8..16]);
    Some(u64::from_le_bytes(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unreadable bytes that are nothing but frame starts, each declaring
    /// the longest body, cost one checksum of up to 64 KiB each with a
    /// naive scan (minutes for a crafted segment); resync stays fast and
    /// finds the same frames.
    #[test]
    fn resync_over_crafted_candidates_is_fast_and_exact() {
        let mut buf = Vec::new();
        while buf.len() < 1 << 20 {
            buf.extend_from_slice(&MAGIC);
            buf.extend_from_slice(&(MAX_BODY as u32).to_le_bytes());
        }
        let crafted = buf.len();
        let h = encode(7, &[0; 32], b"{}", &mut buf);
        let mut rs = Resync::default();
        assert_eq!(rs.next(&buf, 0), Some(crafted));
        // Checking each of the 131,072 candidates in full would checksum
        // 8 GiB; the prefix checksums cost a pass plus at most two strides
        // a candidate.
        let candidates = (crafted / 8) as u64;
        assert!(
            rs.work() <= buf.len() as u64 + candidates * 2 * STRIDE as u64,
            "{} bytes checksummed",
            rs.work()
        );
        let Decoded::Frame(f) = decode(&buf[crafted..]) else {
            panic!()
        };
        assert_eq!(f.hash, h);
        // The same answers as checking every candidate in full, on damage
        // of every kind.
        let mut trail = Vec::new();
        let mut prev = [0; 32];
        for i in 1..40u64 {
            prev = encode(
                i,
                &prev,
                &vec![b'x'; (i as usize * 37) % 700 + 1],
                &mut trail,
            );
        }
        for step in [3usize, 17, 101] {
            let mut bad = trail.clone();
            for at in (0..bad.len()).step_by(step * 13) {
                bad[at] ^= (step as u8) | 1;
            }
            let mut rs = Resync::default();
            for from in (0..bad.len()).step_by(step) {
                let naive = {
                    let mut at = from + 1;
                    let mut found = None;
                    while at < bad.len() {
                        if bad[at..].starts_with(&MAGIC)
                            && matches!(decode(&bad[at..]), Decoded::Frame(_))
                        {
                            found = Some(at);
                            break;
                        }
                        at += 1;
                    }
                    found
                };
                assert_eq!(rs.next(&bad, from), naive, "{step} {from}");
            }
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let mut buf = Vec::new();
        let h1 = encode(1, &[0; 32], b"{\"a\":1}", &mut buf);
        let first = buf.len();
        let h2 = encode(2, &h1, b"{\"b\":2}", &mut buf);
        let Decoded::Frame(f) = decode(&buf) else {
            panic!()
        };
        assert_eq!((f.seq, f.hash, f.len), (1, h1, first));
        let Decoded::Frame(g) = decode(&buf[first..]) else {
            panic!()
        };
        assert_eq!((g.seq, g.prev, g.hash), (2, h1, h2));
        assert!(matches!(decode(&buf[buf.len()..]), Decoded::End));
        assert!(matches!(decode(&[0u8; 100]), Decoded::End));
        let mut bad = buf.clone();
        bad[50] ^= 1;
        assert!(matches!(
            decode(&bad),
            Decoded::Bad("frame checksum mismatch")
        ));
        assert!(matches!(
            decode(&buf[..first - 1]),
            Decoded::Bad("truncated frame")
        ));
        // The damaged frame is skipped to the next readable one, and its
        // number is still known; a torn one has none.
        assert_eq!(resync(&bad, 0), Some(first));
        assert_eq!(damaged_seq(&bad), Some(1));
        assert_eq!(damaged_seq(&buf[..first - 1]), None);
        assert_eq!(resync(&buf[..buf.len() - 1], 0), None);
    }
}
