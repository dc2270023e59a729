//! What the audit trail's test files share: a trail signed with a key of a
//! soft keystore, the frames it stores on disk, ways to rewrite them, and
//! the independent verifier written from docs/audit.md. The CLI's
//! end-to-end tests include this file too, by path
//! (crates/cli/tests/e2e/support/mod.rs, `support::audit_common`).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drivesec_audit::frame::{self, Decoded};
use drivesec_audit::reader::{self, Query};
use drivesec_audit::verify::{Report, verify};
use drivesec_audit::{Actor, AuditConfig, AuditLog, Event, Signer};
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeystoreConfig, PublicKey};

/// A soft keystore in `dir` (`ks`, its secret in `secret`) with a new P-256
/// key `idevid`: a trail's signer and the key its checkpoints verify with.
pub fn idevid_signer(dir: &Path) -> (Signer, PublicKey) {
    let (_, store) = KeystoreConfig::create_soft(dir, "ks", "secret").unwrap();
    let handle = KeyHandle::new("idevid").unwrap();
    let key = store
        .generate(&handle, KeyAlgorithm::EcdsaP256)
        .unwrap()
        .public_key;
    (Signer { store, handle }, key)
}

/// Small segments (8 KiB) and a checkpoint every 40 records: a few hundred
/// records make a trail of several segments and checkpoints.
pub fn small() -> AuditConfig {
    AuditConfig {
        segment_bytes: 8 * 1024,
        checkpoint_every: 40,
        ..AuditConfig::default()
    }
}

/// Record `i` of a test trail: `user{i % 3}` writes parameter `param-{i}`.
pub fn param_write(i: u64) -> Event {
    Event::new(Actor::User(format!("user{}", i % 3)), "param.write")
        .source("127.0.0.1:50000")
        .target(format!("param-{i}"))
}

/// A trail (`audit/` in a temporary directory, not yet written) and its
/// signer.
pub struct Fx {
    pub tmp: tempfile::TempDir,
    pub signer: Signer,
    pub key: PublicKey,
}

impl Fx {
    pub fn new() -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let (signer, key) = idevid_signer(tmp.path());
        Fx { tmp, signer, key }
    }

    pub fn trail(&self) -> PathBuf {
        self.tmp.path().join("audit")
    }

    /// Opens the trail (a start of the device) with `cfg`.
    pub fn open(&self, cfg: AuditConfig) -> AuditLog {
        AuditLog::open(&self.trail(), cfg, self.signer.clone()).unwrap()
    }

    pub fn verify(&self) -> Report {
        verify(&self.trail(), &self.key).unwrap()
    }

    /// The trail's public key as a PEM file (`key.pem` beside the trail),
    /// for the independent verifier.
    pub fn key_pem(&self) -> PathBuf {
        use base64::Engine;
        // SubjectPublicKeyInfo of a P-256 key: a fixed prefix, then the point.
        let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        spki.extend_from_slice(self.key.raw());
        let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let key_pem = self.tmp.path().join("key.pem");
        std::fs::write(
            &key_pem,
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                lines.join("\n")
            ),
        )
        .unwrap();
        key_pem
    }

    /// Opens the trail with `cfg`, appends `events` and stops as a crash
    /// does, before a checkpoint covers them.
    pub fn append_unsigned(&self, cfg: AuditConfig, events: impl IntoIterator<Item = Event>) {
        let log = self.open(cfg);
        for e in events {
            log.append(e).unwrap();
        }
        log.abandon();
    }
}

/// (segment path, offset, length, seq) of every frame, in order.
pub fn frames(dir: &Path) -> Vec<(PathBuf, usize, usize, u64)> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && drivesec_audit::is_segment_name(&p.file_name().unwrap().to_string_lossy())
        })
        .collect();
    segs.sort();
    let mut out = Vec::new();
    for s in segs {
        let data = std::fs::read(&s).unwrap();
        let mut off = 0;
        while let Decoded::Frame(f) = frame::decode(&data[off..]) {
            out.push((s.clone(), off, f.len, f.seq));
            off += f.len;
        }
    }
    out
}

/// (segment path, offset, length) of record `seq`'s frame.
pub fn frame_of(dir: &Path, seq: u64) -> (PathBuf, usize, usize) {
    let (p, o, l, _) = frames(dir).into_iter().find(|f| f.3 == seq).unwrap();
    (p, o, l)
}

/// Changes the first `param` in the body of the frame at `off` (`len`
/// bytes) in `data` to `Param` and fixes the frame's checksum, so that only
/// the hash chain can tell.
pub fn modify_record_fixing_checksum(data: &mut [u8], off: usize, len: usize) {
    let body = off + frame::HEADER;
    let at = body
        + data[body..off + len]
            .windows(5)
            .position(|w| w == b"param")
            .unwrap();
    data[at] = b'P';
    let crc = crc32(&data[off..off + len - 4]);
    data[off + len - 4..off + len].copy_from_slice(&crc.to_le_bytes());
}

/// CRC-32 (IEEE), as the frame trailer.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The attack of issue 16: record `target`'s actor changed and every
/// record after it re-chained, hashes and checksums right;
/// `drop_checkpoints` deletes both checkpoint files too.
pub fn forge(dir: &Path, target: u64, drop_checkpoints: bool) {
    let all = reader::read(dir, &Query::default(), usize::MAX).unwrap();
    let segs = frames(dir);
    assert_eq!(all.len(), segs.len());
    let mut files: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    let mut prev = [0u8; 32];
    let mut first = true;
    for (rec, (path, _, _, seq)) in all.iter().zip(&segs) {
        if first {
            prev = hex::decode(&rec.prev).unwrap().try_into().unwrap();
            first = false;
        }
        let mut r = rec.record.clone();
        if *seq == target {
            r.actor = Actor::User("someone-else".into());
        }
        let body = serde_json::to_vec(&r).unwrap();
        prev = frame::encode(*seq, &prev, &body, files.entry(path.clone()).or_default());
    }
    for (p, d) in files {
        std::fs::write(p, d).unwrap();
    }
    if drop_checkpoints {
        std::fs::remove_file(dir.join("checkpoint.json")).unwrap();
        std::fs::remove_file(dir.join("checkpoints.log")).unwrap();
    }
}

/// Every file below `dir` (path relative to it -> bytes).
pub fn files_of(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// Replaces whatever is at `dir` with `files` (as `files_of` read them).
pub fn write_trail(dir: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) {
    let _ = std::fs::remove_dir_all(dir);
    for (rel, bytes) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// The independent verifier's report on `trail` (the verifier written
/// from docs/audit.md, crates/cli/tests/e2e/support/audit_verify.py), with
/// the public key in `key_pem`.
pub fn python_verify(trail: &Path, key_pem: &Path) -> serde_json::Value {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/e2e/support/audit_verify.py");
    let o = std::process::Command::new("python3")
        .arg(&script)
        .arg(trail)
        .arg(key_pem)
        .output()
        .unwrap();
    assert!(
        o.status.code() == Some(0) || o.status.code() == Some(1),
        "audit_verify.py failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}
