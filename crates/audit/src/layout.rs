//! The trail directory's layout (docs/audit.md): the names of its files
//! and directories, segment file names, and the listing of `segments/`.
//! Shared by the writer, the verifier, the reader and the forwarder; it
//! imports none of them.

use std::path::{Path, PathBuf};

use drivesec_fsutil as fsu;

use crate::Result;

/// The segment files' directory.
pub(crate) const SEGMENTS: &str = "segments";
/// Every signed checkpoint, one JSON line each.
pub(crate) const CHECKPOINT_LOG: &str = "checkpoints.log";
/// The latest checkpoint, kept apart from the segments.
pub(crate) const LATEST_CHECKPOINT: &str = "checkpoint.json";
/// The signed anchor for the last record no longer in the trail.
pub(crate) const ANCHOR: &str = "anchor.json";
/// Where recovery keeps the bytes it cut out.
pub(crate) const QUARANTINE: &str = "quarantine";

/// Segment file name for a first sequence number.
pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The segments of a trail, sorted by first sequence number; whatever else
/// is in `segments/` is left out.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    Ok(segment_dir(dir)?.0)
}

/// Segments by first sequence number, and stray entry names.
pub(crate) type SegmentDir = (Vec<(u64, PathBuf)>, Vec<String>);

/// The segments of a trail, sorted by the number in their name, and the
/// stray entries of `segments/`: anything that is not a regular file named
/// as a segment (20 digits and `.seg`). Strays are reported and ignored.
pub(crate) fn segment_dir(dir: &Path) -> Result<SegmentDir> {
    let seg_dir = dir.join(SEGMENTS);
    let rd = match std::fs::read_dir(&seg_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(fsu::FsError::io("list", &seg_dir, e).into()),
    };
    let mut out = Vec::new();
    let mut stray = Vec::new();
    for e in rd {
        let e = e.map_err(|e| fsu::FsError::io("list", &seg_dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let regular = e.file_type().is_ok_and(|t| t.is_file());
        match segment_number(&name) {
            Some(first) if regular => out.push((first, e.path())),
            _ => stray.push(name),
        }
    }
    out.sort();
    stray.sort();
    Ok((out, stray))
}

/// The number in a segment file name (20 digits and `.seg`), when it fits
/// in 64 bits: the first sequence number of the segment of that name.
pub(crate) fn segment_number(name: &str) -> Option<u64> {
    // is_segment_name: 24 bytes ending in ".seg", so byte 20 is a boundary.
    is_segment_name(name)
        .then(|| name[..20].parse().ok())
        .flatten()
}

/// Whether `name` is a segment file name: 20 digits and `.seg`.
pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.ends_with(".seg") && name[..20].bytes().all(|b| b.is_ascii_digit())
}
