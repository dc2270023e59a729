//! Deterministic, bounded fuzzing of the audit trail's frame parser and of
//! the readers over it. A real trail is written once (several segments,
//! signed checkpoints); each iteration mutates its bytes (bit flips, byte
//! values, truncations, insertions, deletions, splices between segments and
//! across the checkpoint files) and runs the frame decoder, the verifier,
//! the reader, the JSON-lines export and the crash recovery of `open` over
//! the result. The property: no panic, and a typed result (a report, records
//! or an `AuditError`). A trail the verifier calls sound yields only the
//! genuine records. `DRIVESEC_FUZZ_ITERS` scales the iterations (a tenth of
//! it for the frame target, which walks a whole segment each time, a
//! hundredth for the trail readers, a thousandth for `open`); `scripts/test
//! --long` uses 500000. The defaults keep the debug run within seconds.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use common::{files_of, idevid_signer, param_write, write_trail};
use drivesec_audit::frame::{self, Decoded};
use drivesec_audit::reader::{self, Query};
use drivesec_audit::verify::verify;
use drivesec_audit::{AuditConfig, AuditLog, Event, Outcome, Signer};
use drivesec_keystore::PublicKey;
use drivesec_testkit::{Hex, Rng, iters, mutation, no_panic};

const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0xff, b'D', b'S', b'A', b'1', b'{', b'"',
];

/// One to three mutations of `input`; `others` are inputs to splice from.
fn mutate(rng: &mut Rng, input: &[u8], others: &[&[u8]]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = b.len();
        match rng.below(9) {
            0 | 1 if len > 0 => mutation::flip_bit(rng, &mut b),
            2 if len > 0 => mutation::set_byte(rng, &mut b, INTERESTING),
            3 => mutation::truncate(rng, &mut b),
            4 => mutation::insert_random(rng, &mut b, 16),
            5 if len > 0 => mutation::delete_range(rng, &mut b, 64),
            6 if !others.is_empty() => mutation::splice_from(rng, &mut b, others, 200),
            7 if len > 8 => {
                // A length field (bytes 4..8 of a frame) set to an edge value.
                let at = rng.below(len - 8);
                let v: u32 = [0, 1, 65_536, 65_537, u32::MAX, u32::MAX - 47][rng.below(6)];
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => b.extend(rng.bytes(63)),
        }
    }
    b
}

struct Fx {
    tmp: tempfile::TempDir,
    signer: Signer,
    key: PublicKey,
    /// The trail's files (relative path -> bytes).
    files: BTreeMap<PathBuf, Vec<u8>>,
    /// The genuine records: seq -> hash (hex).
    genuine: BTreeMap<u64, String>,
}

fn cfg() -> AuditConfig {
    AuditConfig {
        segment_bytes: 4 * 1024,
        checkpoint_every: 25,
        ..AuditConfig::default()
    }
}

impl Fx {
    fn new() -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let (signer, key) = idevid_signer(tmp.path());
        let dir = tmp.path().join("trail");
        let log = AuditLog::open(&dir, cfg(), signer.clone()).unwrap();
        let events: Vec<Event> = (1..=90u64)
            .map(|i| {
                param_write(i)
                    .outcome(if i % 7 == 0 {
                        Outcome::Denied
                    } else {
                        Outcome::Success
                    })
                    .details(
                        serde_json::json!({ "i": i, "note": "x".repeat((i % 5) as usize * 40) }),
                    )
            })
            .collect();
        log.append_batch(events).unwrap();
        log.checkpoint_now().unwrap();
        log.close().unwrap();
        let files = files_of(&dir);
        assert!(
            files
                .keys()
                .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                .count()
                > 2,
            "several segments"
        );
        let report = verify(&dir, &key).unwrap();
        assert!(report.ok, "{:?}", report.problems);
        let mut genuine = BTreeMap::new();
        for r in reader::read(&dir, &Query::default(), 10_000).unwrap() {
            genuine.insert(r.seq, r.hash);
        }
        assert_eq!(genuine.len(), report.records as usize);
        Fx {
            tmp,
            signer,
            key,
            files,
            genuine,
        }
    }

    fn segments(&self) -> Vec<&[u8]> {
        self.files
            .iter()
            .filter(|(p, _)| p.extension().is_some_and(|e| e == "seg"))
            .map(|(_, b)| b.as_slice())
            .collect()
    }

    /// The trail with one of its files mutated (a segment, mostly).
    fn mutated(&self, rng: &mut Rng) -> (BTreeMap<PathBuf, Vec<u8>>, String) {
        let mut files = self.files.clone();
        let names: Vec<PathBuf> = files.keys().cloned().collect();
        let segs: Vec<&PathBuf> = names
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        let target = if rng.chance(4) {
            names[rng.below(names.len())].clone()
        } else {
            segs[rng.below(segs.len())].clone()
        };
        let all: Vec<&[u8]> = self.files.values().map(Vec::as_slice).collect();
        let bytes = mutate(rng, &files[&target], &all);
        let what = format!("{} := {}", target.display(), Hex(&bytes));
        files.insert(target, bytes);
        if rng.chance(10) {
            // Now and then a whole segment goes missing or is doubled.
            let s = segs[rng.below(segs.len())].clone();
            let b = files.remove(&s).unwrap();
            if rng.chance(2) {
                files.insert(s.with_file_name("999999.seg"), b);
            }
        }
        (files, what)
    }
}

#[test]
fn fuzz_frame_decoder() {
    let fx = Fx::new();
    let segs = fx.segments();
    let mut rng = Rng::new(0x6672_616d_6573_3031);
    let mut frames = 0u64;
    for iter in 0..iters(2_500, 10) {
        let seed = segs[rng.below(segs.len())];
        let input = mutate(&mut rng, seed, &segs);
        // Walk the buffer as the reader does.
        no_panic("frame::decode", iter, Hex(&input), || {
            let mut off = 0;
            while off < input.len() {
                match frame::decode(&input[off..]) {
                    Decoded::Frame(f) => {
                        assert_eq!(f.len, frame::HEADER + f.body.len() + frame::TRAILER);
                        assert!(f.len <= input.len() - off);
                        frames += 1;
                        off += f.len;
                    }
                    Decoded::End | Decoded::Bad(_) => break,
                }
            }
            // And at an arbitrary offset.
            let at = rng.below(input.len() + 1);
            let _ = frame::decode(&input[at..]);
        });
    }
    println!("frames decoded: {frames}");
}

#[test]
fn fuzz_trail_readers_and_verifier() {
    let fx = Fx::new();
    let dir = fx.tmp.path().join("work");
    let mut rng = Rng::new(0x7472_6169_6c73_3032);
    let (mut sound, mut unsound) = (0, 0);
    for iter in 0..iters(200, 100) {
        let (files, what) = fx.mutated(&mut rng);
        write_trail(&dir, &files);
        let report = no_panic("verify", iter, &what, || verify(&dir, &fx.key));
        let records = no_panic("reader::read", iter, &what, || {
            reader::read(&dir, &Query::default(), 10_000)
        });
        no_panic("reader::export_jsonl", iter, &what, || {
            let _ = reader::export_jsonl(&dir, &Query::default(), &mut std::io::sink());
        });
        no_panic("reader::for_each_frame", iter, &what, || {
            let from = 1 + rng.below(100) as u64;
            let _ = reader::for_each_frame(&dir, from, |_, _, _, _| ControlFlow::Continue(()));
        });
        match report {
            Ok(r) if r.ok => {
                sound += 1;
                // Sound means: what can be read is the genuine trail.
                if let Ok(records) = records {
                    for rec in records {
                        assert_eq!(
                            fx.genuine.get(&rec.seq),
                            Some(&rec.hash),
                            "record {} read from a trail verified as sound is not genuine; {what}",
                            rec.seq
                        );
                    }
                }
            }
            _ => unsound += 1,
        }
    }
    println!("mutated trails: {sound} verified sound, {unsound} not");
    assert!(unsound > 0);
}

#[test]
fn fuzz_trail_recovery_on_open() {
    let fx = Fx::new();
    let dir = fx.tmp.path().join("reopen");
    let mut rng = Rng::new(0x6f70_656e_7333_3033);
    for iter in 0..iters(100, 1_000) {
        let (files, what) = fx.mutated(&mut rng);
        write_trail(&dir, &files);
        no_panic("AuditLog::open", iter, &what, || {
            if let Ok(log) = AuditLog::open(&dir, cfg(), fx.signer.clone()) {
                let _ = log.close();
            }
        });
        no_panic("verify after open", iter, &what, || {
            let _ = verify(&dir, &fx.key);
        });
    }
}
