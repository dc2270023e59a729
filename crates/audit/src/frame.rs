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
    if buf.len() < HEADER + TRAILER {
        return Decoded::Bad("truncated frame header");
    }
    if buf[0..4] != MAGIC {
        return Decoded::Bad("bad frame magic");
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len == 0 || len > MAX_BODY {
        return Decoded::Bad("frame length out of range");
    }
    let total = HEADER + len + TRAILER;
    if buf.len() < total {
        return Decoded::Bad("truncated frame");
    }
    let crc = u32::from_le_bytes([
        buf[total - 4],
        buf[total - 3],
        buf[total - 2],
        buf[total - 1],
    ]);
    if crc32fast::hash(&buf[..HEADER + len]) != crc {
        return Decoded::Bad("frame checksum mismatch");
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[8..16]);
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&buf[16..48]);
    let hash: Hash = Sha256::digest(&buf[4..HEADER + len]).into();
    Decoded::Frame(Frame {
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
    let mut at = from + 1;
    while at + HEADER + TRAILER <= buf.len() {
        let i = buf[at..].windows(4).position(|w| w == MAGIC)?;
        let cand = at + i;
        if let Decoded::Frame(_) = decode(&buf[cand..]) {
            return Some(cand);
        }
        at = cand + 1;
    }
    None
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
