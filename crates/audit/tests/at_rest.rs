//! The trail at rest (issue 16, item 4): each test performs an attack or a
//! crash on a stopped trail first, then shows it now fails safely.
//!
//! * a rewritten and re-chained trail whose checkpoints were deleted is
//!   reported at the next open (the keystore's counter is ahead), never
//!   silently signed over, and stays NOT intact;
//! * a whole directory rolled back to an older copy is reported too;
//! * records no checkpoint covers are named as the unsigned tail;
//! * export fails, naming the damage, instead of dropping records;
//! * a torn line in `checkpoints.log` is repaired and kept as evidence;
//! * one damaged frame costs that frame only, and its number is not reused;
//! * the checkpoint write order tells a crash from a cut;
//! * segment names are bound to their records, stray files are ignored;
//! * a factory reset's new trail carries on from the archived one.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use common::{Fx, forge, frame_of, frames, param_write, small};
use drivesec_audit::frame;
use drivesec_audit::reader::{self, Query, StoredRecord};
use drivesec_audit::verify::{ProblemKind, Report, verify};
use drivesec_audit::{
    Actor, AuditConfig, CHECKPOINT_COUNTER, Checkpoint, CheckpointKind, Event, Outcome,
    StartupCheck, continue_after,
};

impl Fx {
    /// Appends `n` records after those the trail holds, and closes it.
    fn fill(&self, n: u64) {
        let log = self.open(cfg());
        let first = log.status().unwrap().durable_seq + 1;
        for i in 0..n {
            assert_eq!(log.append(ev(first + i)).unwrap().seq, first + i);
        }
        log.close().unwrap();
    }

    fn counter(&self) -> Option<u64> {
        self.signer.store.counter(CHECKPOINT_COUNTER).unwrap()
    }

    fn records(&self) -> Vec<StoredRecord> {
        reader::read(&self.trail(), &Query::default(), 100_000).unwrap()
    }

    /// One start and stop of the device, appending nothing: what its
    /// start-up check found.
    fn start(&self) -> StartupCheck {
        let log = self.open(cfg());
        let check = log.startup_check().clone();
        log.close().unwrap();
        check
    }
}

/// The body of a frame planted at rest (a valid record of the device).
const PLANTED_BODY: &[u8] = br#"{"time":"2026-01-01T00:00:00.000000Z","time_quality":"unknown","actor":{"kind":"device"},"action":"x","outcome":"success"}"#;

fn cfg() -> AuditConfig {
    AuditConfig {
        segment_bytes: 64 * 1024,
        ..small()
    }
}

fn ev(i: u64) -> Event {
    param_write(i).details(serde_json::json!({ "i": i }))
}

fn actions(fx: &Fx, action: &str) -> Vec<StoredRecord> {
    fx.records()
        .into_iter()
        .filter(|r| r.record.action == action)
        .collect()
}

#[test]
fn a_forged_trail_without_checkpoints_is_reported_at_start_not_signed_over() {
    let fx = Fx::new();
    fx.fill(300);
    assert_eq!(fx.counter(), Some(300), "the last checkpoint is anchored");
    forge(&fx.trail(), 117, true);
    // At rest, the forged chain is consistent; nothing is signed.
    let r = fx.verify();
    assert!(r.ok && r.nothing_signed, "{r:#?}");

    // One start: the device reports the rewind instead of signing over it.
    let log = fx.open(cfg());
    let check = log.startup_check().clone();
    assert!(check.rewound, "{check:#?}");
    assert_eq!((check.anchored_seq, check.found_seq), (Some(300), None));
    assert!(!check.passed());
    assert_eq!(check.recorded.len(), 1, "{check:#?}");
    assert_eq!(check.recorded[0], ("audit.trail-rewound".to_string(), 301));
    log.append(ev(1)).unwrap();
    log.close().unwrap();
    let rewound = actions(&fx, "audit.trail-rewound");
    assert_eq!(rewound.len(), 1);
    let d = &rewound[0].record.details;
    assert_eq!(rewound[0].record.outcome, Outcome::Failure);
    assert!(rewound[0].record.essential);
    assert_eq!(
        (d["anchored_seq"].as_u64(), d["first_bad_seq"].as_u64()),
        (Some(300), Some(1))
    );

    // The device signed checkpoints again, but over its own report: the
    // trail is NOT intact, and names record 1 as the first unproven one.
    let r = fx.verify();
    assert!(!r.ok, "the forged trail verifies as intact");
    assert!(r.checkpoints_verified > 0);
    assert_eq!(r.first_bad_seq, Some(1), "{:#?}", r.problems);
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::ReportedByDevice && p.seq == Some(1)),
        "{:#?}",
        r.problems
    );

    // A second start does not report the same rewind again, and still fails.
    let again = fx.start();
    assert!(!again.rewound && again.recorded.is_empty(), "{again:#?}");
    assert!(!again.passed() && again.first_bad_seq == Some(1));
    assert_eq!(actions(&fx, "audit.trail-rewound").len(), 1);
}

#[test]
fn a_directory_rolled_back_to_an_older_copy_is_reported_and_numbers_continue() {
    let fx = Fx::new();
    fx.fill(100);
    let old = fx.tmp.path().join("old-copy");
    copy_dir(&fx.trail(), &old);
    fx.fill(100);
    assert_eq!(fx.counter(), Some(200));
    // The attacker puts the older, consistent and signed copy back.
    std::fs::remove_dir_all(fx.trail()).unwrap();
    copy_dir(&old, &fx.trail());
    assert!(fx.verify().ok, "the copy alone looks fine");
    let c = fx.start();
    assert!(c.rewound && c.found_seq == Some(100), "{c:#?}");
    // Numbers 101..200 were used once: the trail continues after them.
    assert_eq!(c.next_seq, 201);
    let r = fx.verify();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(101), "{:#?}", r.problems);
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::MissingRecords && p.seq == Some(101))
    );
}

#[test]
fn a_deleted_trail_is_reported_when_the_device_starts_a_new_one() {
    let fx = Fx::new();
    fx.fill(50);
    std::fs::remove_dir_all(fx.trail()).unwrap();
    let c = fx.start();
    assert!(c.rewound && c.next_seq == 51, "{c:#?}");
    let r = fx.verify();
    assert_eq!(r.first_bad_seq, Some(1), "{:#?}", r.problems);
}

#[test]
fn a_factory_reset_trail_carries_on_behind_a_signed_anchor() {
    let fx = Fx::new();
    fx.fill(50);
    let archive = fx.tmp.path().join("archive");
    std::fs::rename(fx.trail(), &archive).unwrap();
    assert_eq!(
        continue_after(&fx.trail(), &archive, &fx.signer).unwrap(),
        Some(50)
    );
    let log = fx.open(cfg());
    assert!(log.startup_check().passed(), "{:#?}", log.startup_check());
    assert_eq!(log.append(ev(1)).unwrap().seq, 51);
    log.close().unwrap();
    let r = fx.verify();
    assert!(r.ok, "{:#?}", r.problems);
    assert_eq!((r.anchor, r.first_seq), (Some(50), Some(51)));
    assert!(verify(&archive, &fx.key).unwrap().ok);
}

#[test]
fn records_no_checkpoint_covers_are_the_unsigned_tail() {
    let fx = Fx::new();
    fx.fill(50);
    fx.append_unsigned(cfg(), (0..5).map(ev));
    let r = fx.verify();
    assert!(r.ok, "{:#?}", r.problems);
    assert!(!r.nothing_signed);
    let u = r.unsigned.unwrap();
    assert_eq!((u.first, u.last), (51, 55));
    // A trail nothing signs at all.
    let fx = Fx::new();
    fx.append_unsigned(cfg(), (0..5).map(ev));
    let r = fx.verify();
    assert!(r.ok && r.nothing_signed);
    assert_eq!(r.unsigned.map(|u| (u.first, u.last)), Some((1, 5)));
}

#[test]
fn export_fails_on_a_damaged_trail_instead_of_dropping_records() {
    let fx = Fx::new();
    fx.fill(120);
    let all = |fx: &Fx, q: &Query| {
        let mut out = Vec::new();
        reader::export_jsonl(&fx.trail(), q, &mut out).map(|(n, _)| (n, out))
    };
    assert_eq!(all(&fx, &Query::default()).unwrap().0, 120);
    // One flipped bit in record 86.
    let (p, off, len) = frame_of(&fx.trail(), 86);
    let pristine = std::fs::read(&p).unwrap();
    let mut data = pristine.clone();
    data[off + frame::HEADER + 3] ^= 0x04;
    std::fs::write(&p, &data).unwrap();
    let e = all(&fx, &Query::default()).unwrap_err().to_string();
    assert!(
        e.contains("damaged") && e.contains("after record 85"),
        "{e}"
    );
    // The part before the damage, and the part after it, still export.
    let before = Query {
        to_seq: Some(85),
        ..Query::default()
    };
    assert_eq!(all(&fx, &before).unwrap().0, 85);
    let after = Query {
        from_seq: Some(87),
        ..Query::default()
    };
    assert_eq!(all(&fx, &after).unwrap().0, 34);
    // Reading for display skips only the damaged record.
    assert_eq!(fx.records().len(), 119);
    // A removed record.
    let mut cut = pristine.clone();
    cut.drain(off..off + len);
    std::fs::write(&p, &cut).unwrap();
    let e = all(&fx, &Query::default()).unwrap_err().to_string();
    assert!(e.contains("records 86..86 are missing"), "{e}");
    // Two records swapped.
    std::fs::write(&p, &pristine).unwrap();
    let (_, a_off, a_len) = frame_of(&fx.trail(), 90);
    let (_, b_off, b_len) = frame_of(&fx.trail(), 91);
    let mut swapped = pristine[..a_off].to_vec();
    swapped.extend_from_slice(&pristine[b_off..b_off + b_len]);
    swapped.extend_from_slice(&pristine[a_off..a_off + a_len]);
    swapped.extend_from_slice(&pristine[b_off + b_len..]);
    std::fs::write(&p, &swapped).unwrap();
    let e = all(&fx, &Query::default()).unwrap_err().to_string();
    assert!(e.contains("missing") || e.contains("reordered"), "{e}");
    std::fs::write(&p, &pristine).unwrap();
    assert_eq!(all(&fx, &Query::default()).unwrap().0, 120);
}

#[test]
fn a_torn_checkpoint_log_line_is_repaired_and_kept_as_evidence() {
    let fx = Fx::new();
    fx.fill(100);
    let log_path = fx.trail().join("checkpoints.log");
    let torn = br#"{"kind":"checkpoint","seq":1"#;
    let mut data = std::fs::read(&log_path).unwrap();
    let at = data.len();
    data.extend_from_slice(torn);
    std::fs::write(&log_path, &data).unwrap();
    let r = fx.verify();
    assert!(!r.ok, "a torn line is not a statement");
    assert!(fx.start().problems.is_empty(), "repaired before the check");
    let r = fx.verify();
    assert!(r.ok, "{:#?}", r.problems);
    let kept = fx
        .trail()
        .join("quarantine")
        .join(format!("checkpoints.log.{at}.bin"));
    assert_eq!(std::fs::read(kept).unwrap(), torn);
    let rec = actions(&fx, "audit.recovery.truncated");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].record.details["file"], "checkpoints.log");
}

#[test]
fn one_damaged_frame_costs_that_frame_only_and_its_number_is_not_reused() {
    let fx = Fx::new();
    fx.fill(100);
    assert_eq!(frames(&fx.trail()).len(), 100);
    let (p, off, len) = frame_of(&fx.trail(), 86);
    let mut data = std::fs::read(&p).unwrap();
    let damaged = data[off..off + len].to_vec();
    data[off + frame::HEADER + 3] ^= 0x04;
    std::fs::write(&p, &data).unwrap();
    let log = fx.open(cfg());
    let c = log.startup_check().clone();
    assert_eq!(c.first_bad_seq, Some(86), "{c:#?}");
    let a = log.append(ev(1)).unwrap();
    log.close().unwrap();
    // Records 87..100 survived; new numbers continue after 100.
    let seqs: Vec<u64> = fx.records().iter().map(|r| r.seq).collect();
    assert!((87..=100).all(|s| seqs.contains(&s)), "{seqs:?}");
    assert!(!seqs.contains(&86));
    assert!(a.seq > 100 && seqs.iter().filter(|&&s| s > 85 && s <= 100).count() == 14);
    // Only the damaged frame's bytes went to quarantine.
    let q = fx.trail().join("quarantine").join(format!(
        "{}.{off}.bin",
        p.file_name().unwrap().to_string_lossy()
    ));
    let mut flipped = damaged.clone();
    flipped[frame::HEADER + 3] ^= 0x04;
    assert_eq!(std::fs::read(q).unwrap(), flipped);
    let rec = actions(&fx, "audit.recovery.quarantined");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].record.details["after_seq"], 85);
    assert_eq!(rec[0].record.details["before_seq"], 87);
    // Verification names exactly the lost record, and the device's report.
    let r = fx.verify();
    assert_eq!(r.first_bad_seq, Some(86), "{:#?}", r.problems);
    assert!(
        r.problems.iter().all(|p| p.seq == Some(86)
            && matches!(
                p.kind,
                ProblemKind::MissingRecords | ProblemKind::ReportedByDevice
            )),
        "{:#?}",
        r.problems
    );
    assert_eq!(actions(&fx, "audit.integrity-failed").len(), 1);
    // A start after that reports nothing new.
    assert!(fx.start().recorded.is_empty());
    assert_eq!(actions(&fx, "audit.integrity-failed").len(), 1);
}

#[test]
fn a_damaged_last_record_keeps_its_number() {
    let fx = Fx::new();
    fx.fill(99);
    // Record 100 is durable (and may have been forwarded) but no
    // checkpoint covers it yet when the process stops.
    let log = fx.open(cfg());
    assert_eq!(log.append(ev(100)).unwrap().seq, 100);
    log.abandon();
    let (p, off, _) = frame_of(&fx.trail(), 100);
    let mut data = std::fs::read(&p).unwrap();
    data[off + frame::HEADER + 3] ^= 0x04;
    std::fs::write(&p, &data).unwrap();
    let log = fx.open(cfg());
    let a = log.append(ev(1)).unwrap();
    log.close().unwrap();
    assert!(a.seq > 100, "number 100 was given out again: {}", a.seq);
    let seqs: Vec<u64> = fx.records().iter().map(|r| r.seq).collect();
    assert!(!seqs.contains(&100), "{seqs:?}");
}

#[test]
fn a_checkpoint_that_fails_half_way_never_looks_like_a_cut() {
    let fx = Fx::new();
    fx.fill(40);
    // checkpoint.json cannot be replaced (a directory stands in its way):
    // the next checkpoint fails at its first step.
    let json = fx.trail().join("checkpoint.json");
    let saved = std::fs::read(&json).unwrap();
    let log = fx.open(cfg());
    std::fs::remove_file(&json).unwrap();
    std::fs::create_dir(&json).unwrap();
    std::fs::write(json.join("x"), b"x").unwrap();
    log.append(ev(41)).unwrap();
    assert!(log.checkpoint_now().is_err());
    log.abandon();
    std::fs::remove_dir_all(&json).unwrap();
    std::fs::write(&json, saved).unwrap();
    let r = fx.verify();
    assert!(
        r.ok,
        "a failed checkpoint looks like a cut: {:#?}",
        r.problems
    );
    assert_eq!(r.unsigned.map(|u| (u.first, u.last)), Some((41, 41)));

    // A crash after checkpoint.json, before its log line: fine, and the
    // next start completes the log.
    fx.fill(10);
    let log_path = fx.trail().join("checkpoints.log");
    let text = std::fs::read_to_string(&log_path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let last = lines.pop().unwrap().to_string();
    std::fs::write(&log_path, lines.join("\n") + "\n").unwrap();
    assert!(fx.verify().ok, "a crash between the writes is not a cut");
    assert!(fx.start().passed());
    assert!(std::fs::read_to_string(&log_path).unwrap().contains(&last));
    assert!(fx.verify().ok);

    // What no crash leaves: checkpoint.json older than the log, or missing.
    let first_line = std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let newest = std::fs::read(&json).unwrap();
    std::fs::write(&json, &first_line).unwrap();
    assert_cut_at_checkpoint_json(&fx.verify());
    std::fs::remove_file(&json).unwrap();
    assert_cut_at_checkpoint_json(&fx.verify());
    std::fs::write(&json, newest).unwrap();
    assert!(fx.verify().ok);
}

/// `r` names checkpoint.json as showing a cut tail.
fn assert_cut_at_checkpoint_json(r: &Report) {
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::CutTail && p.file == "checkpoint.json"),
        "{:#?}",
        r.problems
    );
}

#[test]
fn segment_names_are_bound_and_stray_files_ignored() {
    let fx = Fx::new();
    let small = small();
    let log = fx.open(small.clone());
    for i in 1..=200 {
        log.append(ev(i)).unwrap();
    }
    log.close().unwrap();
    let segs: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(fx.trail().join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    assert!(segs.len() > 3);
    // Stray files: reported, ignored; start-up and verification go on.
    let seg_dir = fx.trail().join("segments");
    std::fs::write(seg_dir.join("notes.seg"), b"not a segment").unwrap();
    std::fs::write(seg_dir.join("7.seg"), b"").unwrap();
    std::fs::create_dir(seg_dir.join("00000000000000000999.seg")).unwrap();
    let r = fx.verify();
    assert!(r.ok, "{:#?}", r.problems);
    assert_eq!(
        r.stray_files,
        ["00000000000000000999.seg", "7.seg", "notes.seg"]
    );
    let log = fx.open(small.clone());
    assert_eq!(log.startup_check().stray_files.len(), 3);
    assert!(log.startup_check().passed());
    log.close().unwrap();
    // A segment renamed to another number is named as such.
    let second = &segs[1];
    let first_of_second = frames(&fx.trail())
        .into_iter()
        .find(|f| &f.0 == second)
        .unwrap()
        .3;
    let renamed = seg_dir.join(format!("{:020}.seg", first_of_second + 2));
    std::fs::rename(second, &renamed).unwrap();
    let r = fx.verify();
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::MisnamedSegment),
        "{:#?}",
        r.problems
    );
    std::fs::rename(&renamed, second).unwrap();
    // The last segment renamed: the device keeps every record and reports it.
    let last = segs.last().unwrap();
    let last_renamed = seg_dir.join(format!("{:020}.seg", 10_000));
    std::fs::rename(last, &last_renamed).unwrap();
    let before = fx.records().len();
    let log = fx.open(small);
    assert!(
        log.startup_check()
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::MisnamedSegment)
    );
    log.close().unwrap();
    assert!(fx.records().len() > before, "records were lost");
    // Nothing of the records went to quarantine/: only the directory
    // planted with a segment's name, moved there by the first start.
    assert_eq!(
        names(&fx.trail().join("quarantine")),
        ["00000000000000000999.seg.stray"]
    );
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn a_forged_huge_sequence_number_neither_exhausts_numbers_nor_loses_records() {
    // 2^62 - 1 (just below the old cut-off) and u64::MAX - 1 (the top).
    for forged in [(1u64 << 62) - 1, u64::MAX - 1] {
        let fx = Fx::new();
        fx.fill(20);
        let (p, _, _) = frame_of(&fx.trail(), 20);
        let mut data = std::fs::read(&p).unwrap();
        frame::encode(forged, &[7; 32], PLANTED_BODY, &mut data);
        std::fs::write(&p, &data).unwrap();
        // Several starts: no number is given out twice, none comes from
        // the forged frame.
        let mut issued = Vec::new();
        for i in 0..3 {
            let log = fx.open(cfg());
            let a = log.append(ev(21 + i)).unwrap();
            assert!(a.seq > 20 && a.seq < 1000, "{forged}: {}", a.seq);
            issued.push(a.seq);
            log.close().unwrap();
        }
        let seqs: Vec<u64> = fx.records().iter().map(|r| r.seq).collect();
        let mut unique = seqs.clone();
        unique.dedup();
        assert_eq!(seqs, unique, "{forged}: a number was given out twice");
        assert!(
            seqs.windows(2).all(|w| w[1] > w[0]),
            "{forged}: not in order {seqs:?}"
        );
        for s in &issued {
            assert!(seqs.contains(s), "{forged}: record {s} missing: {seqs:?}");
        }
        // The forged frame is out of the segments, kept as evidence and
        // on the record; the later records export as one unbroken chain.
        assert!(!seqs.contains(&forged), "{forged}: {seqs:?}");
        assert!(
            std::fs::read_dir(fx.trail().join("quarantine"))
                .unwrap()
                .count()
                >= 1
        );
        assert_eq!(actions(&fx, "audit.recovery.quarantined").len(), 1);
        let failed = actions(&fx, "audit.integrity-failed");
        assert_eq!(failed.len(), 1, "{forged}");
        drivesec_audit::reader::check(&fx.trail(), 1, *seqs.last().unwrap()).unwrap();
        assert!(!fx.verify().ok);
    }
}

/// Plants a trail with nothing signed whose chain jumps to just below the
/// ceiling on sequence numbers and climbs across it: segment 1 holds
/// records 1..=20, and `rest(jump, prev)` gives the segments after it
/// (first number, bytes) for a jump to `jump`, `prev` being record 20's
/// hash. With no statement and no keystore counter, the ceiling is
/// (max_bytes + reserve_bytes + the segments' size) / 53 (docs/audit.md,
/// "Start-up check", rule 1); the size does not depend on the numbers,
/// so the segments are built once to measure it, then for `jump` = the
/// ceiling - 5. Returns (the ceiling, `jump`).
fn across_the_ceiling(
    fx: &Fx,
    c: &AuditConfig,
    rest: impl Fn(u64, [u8; 32]) -> Vec<(u64, Vec<u8>)>,
) -> (u64, u64) {
    let build = |jump: u64| {
        let mut one = Vec::new();
        let mut prev = [0u8; 32];
        for seq in 1..=20 {
            prev = frame::encode(seq, &prev, PLANTED_BODY, &mut one);
        }
        let mut segs = vec![(1, one)];
        segs.extend(rest(jump, prev));
        segs
    };
    let size = |segs: &[(u64, Vec<u8>)]| segs.iter().map(|s| s.1.len() as u64).sum::<u64>();
    let probe = size(&build(1000));
    let limit = (c.max_bytes + c.reserve_bytes + probe) / 53;
    let jump = limit - 5;
    let segs = build(jump);
    assert_eq!(
        size(&segs),
        probe,
        "the segments' size depends on their numbers"
    );
    let seg_dir = fx.trail().join("segments");
    std::fs::create_dir_all(&seg_dir).unwrap();
    for (first, bytes) in segs {
        std::fs::write(seg_dir.join(format!("{first:020}.seg")), bytes).unwrap();
    }
    (limit, jump)
}

/// The ceiling on sequence numbers cuts only frames out of chain. A trail
/// with no checkpoint yet and no keystore counter (a fresh keystore), so
/// nothing signed vouches for any number: records 1..20, then a chain
/// the writer continued from a higher number (as it does after a start-up
/// finding; its `prev` is record 20's hash) that climbs across the ceiling
/// one record at a time. Every record of that chain stays. A frame above
/// the ceiling that does not continue the chain kept before it (a wrong
/// `prev`, or a number that skips) is still cut out and reported.
#[test]
fn a_genuine_chain_above_the_ceiling_is_kept_without_checkpoint_or_counter() {
    let fx = Fx::new();
    assert_eq!(fx.counter(), None);
    let c = cfg();
    // Segment `jump`: jump..jump+29, then two frames that do not continue it.
    let (limit, jump) = across_the_ceiling(&fx, &c, |jump, mut prev| {
        let mut two = Vec::new();
        for seq in jump..jump + 30 {
            prev = frame::encode(seq, &prev, PLANTED_BODY, &mut two);
        }
        frame::encode(jump + 30, &[9; 32], PLANTED_BODY, &mut two);
        frame::encode(jump + 32, &prev, PLANTED_BODY, &mut two);
        vec![(jump, two)]
    });

    let log = fx.open(c);
    let check = log.startup_check().clone();
    let a = log.append(ev(1)).unwrap();
    log.close().unwrap();
    let seqs: Vec<u64> = fx.records().iter().map(|r| r.seq).collect();
    let chain: Vec<u64> = (1..=20).chain(jump..jump + 30).collect();
    assert_eq!(&seqs[..50], chain.as_slice(), "the chain is kept whole");
    // The device's ceiling is the one computed here: the chain kept climbs
    // 24 numbers above it.
    assert!(
        check
            .problems
            .iter()
            .any(|p| p.message.contains(&format!("a number above {limit},"))),
        "{:#?}",
        check.problems
    );
    assert!(a.seq > jump + 29, "{}", a.seq);
    // The two frames out of chain are cut, as implausible.
    let cut: Vec<serde_json::Value> = actions(&fx, "audit.recovery.quarantined")
        .into_iter()
        .map(|r| r.record.details)
        .filter(|d| d["reason"] == "implausible sequence number")
        .collect();
    assert_eq!(cut.len(), 2, "{cut:?}");
    assert!(cut.iter().all(|d| d["after_seq"] == jump + 29), "{cut:?}");
    // What follows continues the chain: from `jump` to the last record,
    // one unbroken chain, numbered on after it.
    assert_eq!(seqs[50], jump + 30);
    reader::check(&fx.trail(), jump, a.seq).unwrap();
}

/// `export --to N` never stops early at a frame numbered beyond N while
/// records up to N are missing: a forged huge number after record 20, then
/// records 21..30, must not export as records 1..20 and success.
#[test]
fn export_to_a_bound_fails_when_a_high_number_cuts_the_range_short() {
    let fx = Fx::new();
    fx.fill(30);
    let (p, off, len) = frame_of(&fx.trail(), 20);
    let mut data = std::fs::read(&p).unwrap();
    let mut forged = Vec::new();
    frame::encode(u64::MAX - 1, &[7; 32], PLANTED_BODY, &mut forged);
    data.splice(off + len..off + len, forged);
    std::fs::write(&p, &data).unwrap();
    let q = Query {
        to_seq: Some(30),
        ..Query::default()
    };
    let mut out = Vec::new();
    let e = reader::export_jsonl(&fx.trail(), &q, &mut out)
        .map(|(n, last)| format!("exported {n} records up to {last}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("21") && e.contains("missing"), "{e}");
    // Up to record 20, the range is whole.
    let q = Query {
        to_seq: Some(20),
        ..Query::default()
    };
    assert_eq!(
        reader::export_jsonl(&fx.trail(), &q, &mut Vec::new()).unwrap(),
        (20, 20)
    );
}

/// A last segment whose name is not its first record (renamed at rest) is
/// not written to any more: new records go to a fresh segment that sorts
/// after it, so file order stays sequence order across later rotations.
#[test]
fn a_misnamed_last_segment_is_left_as_evidence_and_order_is_kept() {
    let fx = Fx::new();
    fx.fill(30);
    let seg_dir = fx.trail().join("segments");
    assert_eq!(names(&seg_dir), [format!("{:020}.seg", 1)]);
    let misnamed = format!("{:020}.seg", 100);
    std::fs::rename(
        seg_dir.join(format!("{:020}.seg", 1)),
        seg_dir.join(&misnamed),
    )
    .unwrap();
    let c = AuditConfig {
        segment_bytes: 4096,
        ..cfg()
    };
    let log = fx.open(c);
    let mut issued = Vec::new();
    for i in 0..60 {
        issued.push(log.append(ev(1000 + i)).unwrap().seq);
    }
    log.close().unwrap();
    // The misnamed segment still holds records 1..30 only.
    let held: Vec<u64> = frames(&fx.trail())
        .iter()
        .filter(|f| f.0.ends_with(&misnamed))
        .map(|f| f.3)
        .collect();
    assert_eq!(held, (1..=30).collect::<Vec<_>>());
    // Every frame, in file order, numbered above the one before.
    let order: Vec<u64> = frames(&fx.trail()).iter().map(|f| f.3).collect();
    assert!(
        order.windows(2).all(|w| w[1] > w[0]),
        "file order is not sequence order: {order:?}"
    );
    for s in &issued {
        assert!(order.contains(s), "record {s} missing");
    }
    assert!(
        fx.verify()
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::MisnamedSegment)
    );
}

/// A genuine segment longer than today's `segment_bytes` (written under a
/// configuration that allowed larger segments, here 16 MiB, beyond the old
/// start-up cap of 8 MiB and one frame) is read whole at start-up: no
/// record of it is cut out, the trail stays intact, and it is read in
/// bounded memory (crates/audit/src/scan.rs).
#[test]
fn an_older_larger_segment_keeps_every_record_at_start_up() {
    let fx = Fx::new();
    let big = AuditConfig {
        segment_bytes: 16 << 20,
        max_bytes: 64 << 20,
        ..cfg()
    };
    let log = fx.open(big);
    let blob = "b".repeat(60_000);
    let mut n = 0;
    while log.status().unwrap().used_bytes < (9 << 20) + 65_588 {
        let batch: Vec<Event> = (0..8)
            .map(|i| ev(n + i).details(serde_json::json!({ "blob": blob })))
            .collect();
        n += 8;
        log.append_batch(batch).unwrap();
    }
    let last = log.status().unwrap().durable_seq;
    log.close().unwrap();
    let segs = std::fs::read_dir(fx.trail().join("segments"))
        .unwrap()
        .count();
    assert_eq!(segs, 1, "one segment longer than the old cap");
    // Today's configuration makes 64 KiB segments.
    let check = fx.start();
    assert!(check.passed(), "{check:#?}");
    assert!(actions(&fx, "audit.recovery.quarantined").is_empty());
    assert!(!fx.trail().join("quarantine").exists());
    let seqs: Vec<u64> = fx.records().iter().map(|r| r.seq).collect();
    assert_eq!(&seqs[..last as usize], (1..=last).collect::<Vec<_>>());
    let r = fx.verify();
    assert!(r.ok, "{:?}", r.problems);
}

/// Bytes after the last record of a segment, however many, are cut out
/// like any unreadable tail: kept as evidence, on the record, and the
/// records before them stay.
#[test]
fn garbage_after_the_last_record_is_quarantined_whatever_its_length() {
    let fx = Fx::new();
    fx.fill(30);
    let (p, _, _) = frame_of(&fx.trail(), 30);
    let kept = std::fs::metadata(&p).unwrap().len();
    let garbage = (9u64 << 20) + 12_345;
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    std::io::Write::write_all(&mut f, &vec![0x5a; garbage as usize]).unwrap();
    drop(f);
    let log = fx.open(cfg());
    let a = log.append(ev(31)).unwrap();
    log.close().unwrap();
    assert!(a.seq > 30, "{}", a.seq);
    let q = actions(&fx, "audit.recovery.truncated");
    assert!(
        q.iter()
            .any(|r| r.record.details["offset"] == kept && r.record.details["bytes"] == garbage),
        "{:?}",
        q.iter().map(|r| &r.record.details).collect::<Vec<_>>()
    );
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    let tail = std::fs::metadata(fx.trail().join(format!("quarantine/{name}.{kept}.bin")))
        .unwrap()
        .len();
    assert_eq!(tail, garbage);
    let seqs: Vec<u64> = fx.records().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=a.seq).collect::<Vec<_>>());
    // The garbage is out; the records after it were appended in its place.
    let data = std::fs::read(&p).unwrap();
    assert!(data.len() < (kept + (64 << 10)) as usize, "{}", data.len());
    assert!(!data.windows(64).any(|w| w.iter().all(|&b| b == 0x5a)));
}

/// Settings above their upper bound are refused by `validate` (naming the
/// setting, the value and the bound), but a trail opened with them (a
/// configuration file an older version accepted) opens with the bound,
/// and says so: in its start-up findings and on the record, at every start.
#[test]
fn settings_above_their_bound_are_refused_when_made_but_clamped_at_open() {
    let over = AuditConfig {
        segment_bytes: drivesec_audit::MAX_SEGMENT_BYTES + 1,
        max_bytes: drivesec_audit::MAX_TRAIL_BYTES + 7,
        ..cfg()
    };
    let e = over.validate().unwrap_err();
    assert!(
        e.contains("audit.segment_bytes")
            && e.contains(&(drivesec_audit::MAX_SEGMENT_BYTES + 1).to_string())
            && e.contains(&drivesec_audit::MAX_SEGMENT_BYTES.to_string()),
        "{e}"
    );
    let only_max = AuditConfig {
        max_bytes: drivesec_audit::MAX_TRAIL_BYTES + 7,
        ..cfg()
    };
    let e = only_max.validate().unwrap_err();
    assert!(
        e.contains("audit.max_bytes")
            && e.contains(&(drivesec_audit::MAX_TRAIL_BYTES + 7).to_string())
            && e.contains(&drivesec_audit::MAX_TRAIL_BYTES.to_string()),
        "{e}"
    );
    over.validate_existing().unwrap();
    // Below the lower bounds stays refused either way.
    let tiny = AuditConfig {
        segment_bytes: 10,
        ..over.clone()
    };
    assert!(tiny.validate_existing().is_err());

    let fx = Fx::new();
    for start in 0..2 {
        let log = fx.open(over.clone());
        let check = log.startup_check().clone();
        assert!(!check.passed());
        let settings: Vec<&str> = check
            .config_clamped
            .iter()
            .map(|c| c.setting.as_str())
            .collect();
        assert_eq!(settings, ["audit.segment_bytes", "audit.max_bytes"]);
        assert!(
            log.findings()
                .iter()
                .any(|f| f.contains("audit.max_bytes") && f.contains("above its bound")),
            "{:?}",
            log.findings()
        );
        assert_eq!(
            log.status().unwrap().max_bytes,
            drivesec_audit::MAX_TRAIL_BYTES
        );
        log.append(ev(start)).unwrap();
        log.close().unwrap();
    }
    let recorded = actions(&fx, drivesec_audit::CONFIG_CLAMPED);
    assert_eq!(recorded.len(), 4, "two settings, two starts");
    assert_eq!(
        recorded[0].record.details,
        serde_json::json!({
            "setting": "audit.segment_bytes",
            "configured": drivesec_audit::MAX_SEGMENT_BYTES + 1,
            "used": drivesec_audit::MAX_SEGMENT_BYTES,
        })
    );
    // Not a problem of the records: the trail verifies.
    assert!(fx.verify().ok);
}

// ---- Delivery cursors and start-up under a hostile or full trail ----

fn small_full(policy: drivesec_audit::FullPolicy) -> AuditConfig {
    AuditConfig {
        segment_bytes: 4096,
        max_bytes: 8192,
        reserve_bytes: 1024,
        when_full: policy,
        ..cfg()
    }
}

#[test]
fn a_cursor_beyond_the_trail_is_reported_reset_and_frees_nothing_undelivered() {
    let fx = Fx::new();
    let c = small_full(drivesec_audit::FullPolicy::DropForwarded);
    let log = fx.open(c.clone());
    for i in 1..=10 {
        log.append(ev(i)).unwrap();
    }
    log.close().unwrap();
    // At rest: both cursors claim records that never existed.
    drivesec_audit::write_cursor(&fx.trail(), "forwarded", 1 << 62).unwrap();
    drivesec_audit::write_cursor(&fx.trail(), "exported", u64::MAX).unwrap();
    let log = fx.open(c);
    let check = log.startup_check().clone();
    assert_eq!(check.cursors.len(), 2, "{check:#?}");
    assert!(!check.passed());
    assert!(
        check
            .findings()
            .iter()
            .any(|f| f.contains("cursors/forwarded"))
    );
    let reset = drivesec_audit::read_cursor(&fx.trail(), "forwarded").unwrap();
    assert!(reset < 100, "cursor not reset: {reset}");
    assert!(drivesec_audit::read_cursor(&fx.trail(), "exported").unwrap() <= reset);
    // The trail fills: nothing after the reset cursor may be dropped.
    for i in 11..=400 {
        let _ = log.append(ev(i));
    }
    log.close().unwrap();
    let first = fx.records().first().unwrap().seq;
    assert!(
        first <= reset + 1,
        "undelivered records were dropped: first left {first}, delivered up to {reset}"
    );
    assert_eq!(actions(&fx, "audit.cursor-reset").len(), 2);
    // An unreadable cursor is reset to 0 and reported too.
    std::fs::write(fx.trail().join("cursors/forwarded"), b"garbage").unwrap();
    let log = fx.open(small_full(drivesec_audit::FullPolicy::DropForwarded));
    assert_eq!(log.startup_check().cursors.len(), 1);
    assert_eq!(
        drivesec_audit::read_cursor(&fx.trail(), "forwarded").unwrap(),
        0
    );
    log.close().unwrap();
}

#[test]
fn many_long_stray_names_do_not_stop_the_trail_from_opening() {
    let fx = Fx::new();
    fx.fill(20);
    // A damaged frame, so that start-up writes an integrity record...
    let (p, off, len) = frame_of(&fx.trail(), 10);
    let mut data = std::fs::read(&p).unwrap();
    data[off + len / 2] ^= 0xff;
    std::fs::write(&p, &data).unwrap();
    // ...and 300 stray files with long names.
    let seg_dir = fx.trail().join("segments");
    for i in 0..300 {
        std::fs::write(seg_dir.join(format!("{i:03}{}", "x".repeat(240))), b"").unwrap();
    }
    for _ in 0..2 {
        let log = fx.open(cfg());
        assert_eq!(log.startup_check().stray_files.len(), 300);
        log.close().unwrap();
    }
    let rec = actions(&fx, drivesec_audit::verify::INTEGRITY_FAILED);
    let d = &rec.first().unwrap().record.details;
    assert_eq!(d["stray_count"], 300);
    assert!(d["stray_files"].as_array().unwrap().len() <= 16);
}

#[test]
fn a_torn_tail_on_a_full_trail_does_not_stop_the_trail_from_opening() {
    let fx = Fx::new();
    let c = small_full(drivesec_audit::FullPolicy::RefuseNonEssential);
    let log = fx.open(c.clone());
    let mut i = 0;
    while log.append(ev(i)).is_ok() {
        i += 1;
    }
    while log
        .append(Event::new(Actor::Device, "device.start").essential())
        .is_ok()
    {}
    log.close().unwrap();
    // A crash mid-write: half a frame at the end of the last segment.
    let (p, _, _, seq) = frames(&fx.trail()).pop().unwrap();
    let mut torn = Vec::new();
    frame::encode(seq + 1, &[0; 32], br#"{"x":1}"#, &mut torn);
    let mut data = std::fs::read(&p).unwrap();
    data.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&p, &data).unwrap();
    let log = fx.open(c);
    log.close().unwrap();
    assert_eq!(actions(&fx, "audit.recovery.truncated").len(), 1);
}

#[test]
fn a_reset_cursor_stays_a_finding_while_its_record_is_in_the_trail() {
    let fx = Fx::new();
    fx.fill(10);
    drivesec_audit::write_cursor(&fx.trail(), "forwarded", 1 << 40).unwrap();
    let check = fx.start();
    assert_eq!(check.cursors.len(), 1, "{check:#?}");
    let reset = actions(&fx, drivesec_audit::verify::CURSOR_RESET);
    assert_eq!(reset.len(), 1);
    // Later starts: the cursor is sound again, but the report of its reset
    // is in the trail, so the posture still shows it, as it does for
    // audit.integrity-failed; nothing is recorded again.
    for _ in 0..2 {
        let check = fx.start();
        assert!(check.cursors.is_empty(), "{check:#?}");
        assert_eq!(check.earlier_cursor_resets, vec![reset[0].seq]);
        assert!(!check.passed());
        assert!(
            check
                .findings()
                .iter()
                .any(|f| f.contains("delivery cursor") && f.contains(&reset[0].seq.to_string())),
            "{:?}",
            check.findings()
        );
        assert!(check.recorded.is_empty(), "{check:#?}");
    }
    // The records are untouched: verify's verdict is about them.
    let r = fx.verify();
    assert!(r.ok, "{:#?}", r.problems);
    assert_eq!(r.cursor_resets, vec![reset[0].seq]);
}

/// An offline factory reset (`drivesecd factory-reset`, no start-up check)
/// on a directory someone wrote to: a frame with a forged number appended
/// after the last record, and an unsigned `anchor.json`. The new trail's
/// anchor goes to the last record the archived trail's verified chain
/// vouches for, never to the forgery, and the numbers go on from there.
#[test]
fn a_reset_anchors_only_what_the_archived_trail_verifies() {
    let fx = Fx::new();
    fx.fill(50);
    let archive = fx.tmp.path().join("archive");
    std::fs::rename(fx.trail(), &archive).unwrap();
    let (last_seg, _, _) = frame_of(&archive, 50);
    let mut forged = Vec::new();
    frame::encode(u64::MAX - 1, &[7; 32], PLANTED_BODY, &mut forged);
    let mut data = std::fs::read(&last_seg).unwrap();
    // After the last frame (zero bytes beyond it end the segment).
    let end = frames(&archive)
        .iter()
        .filter(|f| f.0 == last_seg)
        .map(|f| f.1 + f.2)
        .max()
        .unwrap();
    data.truncate(end);
    data.extend_from_slice(&forged);
    std::fs::write(&last_seg, &data).unwrap();
    assert_eq!(
        continue_after(&fx.trail(), &archive, &fx.signer).unwrap(),
        Some(50)
    );
    let log = fx.open(cfg());
    assert_eq!(log.append(ev(1)).unwrap().seq, 51);
    log.close().unwrap();
    assert_eq!(fx.verify().anchor, Some(50));

    // No record left, only an anchor.json nobody signed: nothing to anchor.
    let fx = Fx::new();
    let archive = fx.tmp.path().join("archive2");
    std::fs::create_dir_all(archive.join("segments")).unwrap();
    std::fs::write(
        archive.join("anchor.json"),
        format!(
            r#"{{"kind":"anchor","seq":{},"hash":"{}","time":"2026-01-01T00:00:00.000000Z","algorithm":"ecdsa-p256-sha256","signature":"AAAA"}}"#,
            u64::MAX - 1,
            "00".repeat(32)
        ),
    )
    .unwrap();
    assert_eq!(
        continue_after(&fx.trail(), &archive, &fx.signer).unwrap(),
        None
    );
}

// ---- Segment names, chains and recovery records under a hostile trail ----

/// A segment planted at rest with the highest name there is, holding one
/// valid frame numbered 1: start-up moves it to `quarantine/` whole and
/// says so, so it neither becomes the segment the writer and the
/// forwarder take for the last one nor blocks `drop-forwarded` (the trail
/// takes every record as long as the collector keeps up).
#[test]
fn a_segment_planted_with_the_highest_name_is_quarantined_and_blocks_nothing() {
    let fx = Fx::new();
    let c = small_full(drivesec_audit::FullPolicy::DropForwarded);
    let log = fx.open(c.clone());
    for i in 1..=30 {
        log.append(ev(i)).unwrap();
        log.mark_exported(log.status().unwrap().durable_seq)
            .unwrap();
    }
    log.close().unwrap();
    let planted = format!("{}.seg", u64::MAX);
    let mut bytes = Vec::new();
    frame::encode(1, &[0; 32], PLANTED_BODY, &mut bytes);
    std::fs::write(fx.trail().join("segments").join(&planted), &bytes).unwrap();

    let log = fx.open(c);
    let check = log.startup_check().clone();
    assert!(!fx.trail().join("segments").join(&planted).exists());
    assert_eq!(
        std::fs::read(
            fx.trail()
                .join("quarantine")
                .join(format!("{planted}.0.bin"))
        )
        .unwrap(),
        bytes
    );
    assert!(!check.passed());
    assert!(
        check
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::MisnamedSegment && p.file.ends_with(&planted)),
        "{check:#?}"
    );
    let moved: Vec<serde_json::Value> = actions(&fx, "audit.recovery.quarantined")
        .into_iter()
        .map(|r| r.record.details)
        .filter(|d| d["segment"] == planted.as_str())
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["reason"], "implausible segment name");
    assert_eq!(moved[0]["quarantined"], format!("{planted}.0.bin"));
    // A collector that keeps up: every record is taken, older segments go.
    for i in 31..=200 {
        log.append(ev(i))
            .unwrap_or_else(|e| panic!("append {i} refused: {e}"));
        log.mark_exported(log.status().unwrap().durable_seq)
            .unwrap();
    }
    log.close().unwrap();
    assert!(!actions(&fx, "audit.capacity.dropped").is_empty());
    let order: Vec<u64> = frames(&fx.trail()).iter().map(|f| f.3).collect();
    assert!(
        order.windows(2).all(|w| w[1] > w[0]),
        "file order is not sequence order: {order:?}"
    );
}

/// A drop's anchor names the dropped segment's real last record, not what
/// the next segment's first frame says came before it: here that frame
/// was damaged and cut out at start-up, so the next segment now starts
/// one record later and its first `prev` is the hash of the lost record.
#[test]
fn a_drop_anchors_the_real_last_record_of_the_segment_it_drops() {
    let fx = Fx::new();
    let c = small_full(drivesec_audit::FullPolicy::DropForwarded);
    let log = fx.open(c.clone());
    for i in 1..=25 {
        log.append(ev(i)).unwrap();
    }
    log.close().unwrap();
    let all = frames(&fx.trail());
    let first_seg = all[0].0.clone();
    let last_of_first = all
        .iter()
        .filter(|f| f.0 == first_seg)
        .map(|f| f.3)
        .max()
        .unwrap();
    let (second, off, len, lost) = all.iter().find(|f| f.0 != first_seg).cloned().unwrap();
    assert_eq!(lost, last_of_first + 1);
    let hash_of_last = fx
        .records()
        .into_iter()
        .find(|r| r.seq == last_of_first)
        .unwrap()
        .hash;
    let mut data = std::fs::read(&second).unwrap();
    data[off + len / 2] ^= 0x20;
    std::fs::write(&second, &data).unwrap();

    // Delivered: the first segment only.
    let log = fx.open(c);
    log.mark_exported(last_of_first).unwrap();
    let mut i = 100;
    while first_seg.exists() {
        log.append(ev(i)).unwrap();
        i += 1;
        assert!(i < 1000, "the first segment was never dropped");
    }
    log.close().unwrap();
    let anchor: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.trail().join("anchor.json")).unwrap()).unwrap();
    assert_eq!(anchor["seq"], last_of_first, "{anchor}");
    assert_eq!(anchor["hash"], hash_of_last.as_str(), "{anchor}");
    let dropped = actions(&fx, "audit.capacity.dropped");
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].record.details["last_seq"], last_of_first);
    // The anchor is sound: only the lost record is missing.
    let r = fx.verify();
    assert_eq!(r.anchor, Some(last_of_first));
    assert_eq!(r.first_bad_seq, Some(lost), "{:#?}", r.problems);
}

/// A genuine chain above the ceiling (no checkpoint, no counter: nothing
/// signed vouches for its numbers; see the test above) with one frame
/// damaged at rest: that frame goes, and the chain goes on past it (the
/// damaged frame was whole and held the next number), so the records
/// after it stay instead of being cut as implausible one by one.
#[test]
fn one_damaged_frame_in_a_chain_above_the_ceiling_costs_that_frame_only() {
    let fx = Fx::new();
    assert_eq!(fx.counter(), None);
    let c = cfg();
    // Segment `jump`: jump..jump+29, chained on; record jump+10 (above the
    // ceiling) damaged: its checksum fails.
    let (_, jump) = across_the_ceiling(&fx, &c, |jump, mut prev| {
        let mut two = Vec::new();
        for (i, seq) in (jump..jump + 30).enumerate() {
            let at = two.len();
            prev = frame::encode(seq, &prev, PLANTED_BODY, &mut two);
            if i == 10 {
                two[at + frame::HEADER + 2] ^= 0x01;
            }
        }
        vec![(jump, two)]
    });
    let damaged = jump + 10;

    let log = fx.open(c);
    let a = log.append(ev(1)).unwrap();
    log.close().unwrap();
    let seqs: Vec<u64> = fx.records().iter().map(|r| r.seq).collect();
    let chain: Vec<u64> = (1..=20)
        .chain(jump..jump + 30)
        .filter(|s| *s != damaged)
        .collect();
    assert_eq!(
        &seqs[..49],
        chain.as_slice(),
        "the chain is kept but for {damaged}"
    );
    assert!(a.seq > jump + 29, "{}", a.seq);
    // One cut: the damaged frame, none for an implausible number.
    let cut: Vec<serde_json::Value> = actions(&fx, "audit.recovery.quarantined")
        .into_iter()
        .map(|r| r.record.details)
        .collect();
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert_eq!(cut[0]["after_seq"], damaged - 1);
    assert_eq!(cut[0]["before_seq"], damaged + 1);
    assert_ne!(cut[0]["reason"], "implausible sequence number");
}

/// A genuine chain above the ceiling (no checkpoint, no counter) damaged
/// at rest over several frames in a row, as a bad sector does: three
/// frames with wrong checksums (numbers readable), three overwritten
/// (no number readable), and a segment named above the ceiling whose
/// first frame lost its magic. Only the damaged frames go: the chain goes
/// on past each span (one number per 53 bytes of it at most), so no
/// frame after them is cut as implausible, no segment is moved out, and
/// numbering continues after the last record.
#[test]
fn damage_over_several_frames_in_a_chain_above_the_ceiling_costs_those_frames_only() {
    let fx = Fx::new();
    let c = cfg();
    // Segment `jump`: jump..jump+29; segment `jump + 30`: jump+30..jump+39,
    // chained on.
    let (_, jump) = across_the_ceiling(&fx, &c, |jump, mut prev| {
        let (mut two, mut three) = (Vec::new(), Vec::new());
        let mut at = Vec::new();
        for seq in jump..jump + 30 {
            at.push(two.len());
            prev = frame::encode(seq, &prev, PLANTED_BODY, &mut two);
        }
        for seq in jump + 30..jump + 40 {
            prev = frame::encode(seq, &prev, PLANTED_BODY, &mut three);
        }
        // jump+10..=jump+12: checksums wrong, numbers readable.
        for i in 10..13 {
            two[at[i] + frame::HEADER + 2] ^= 0x01;
        }
        // jump+20..=jump+22: overwritten, nothing readable.
        two[at[20]..at[23]].fill(0xa5);
        // jump+30: its magic gone.
        three[0] ^= 0xff;
        vec![(jump, two), (jump + 30, three)]
    });
    let seg_dir = fx.trail().join("segments");
    let name_three = format!("{:020}.seg", jump + 30);

    let log = fx.open(c);
    let check = log.startup_check().clone();
    let a = log.append(ev(1)).unwrap();
    log.close().unwrap();
    let damaged = [10, 11, 12, 20, 21, 22, 30].map(|i| jump + i);
    let chain: Vec<u64> = (1..=20)
        .chain(jump..jump + 40)
        .filter(|s| !damaged.contains(s))
        .collect();
    let seqs: Vec<u64> = fx.records().iter().map(|r| r.seq).collect();
    assert_eq!(
        &seqs[..chain.len()],
        chain.as_slice(),
        "the chain is kept but for {damaged:?}"
    );
    assert!(a.seq > jump + 39, "{}", a.seq);
    // Not moved out (verify names it misnamed: its first valid frame is
    // not the one its name says).
    assert!(seg_dir.join(&name_three).exists(), "{:#?}", check.problems);
    let cut: Vec<serde_json::Value> = actions(&fx, "audit.recovery.quarantined")
        .into_iter()
        .map(|r| r.record.details)
        .collect();
    assert_eq!(cut.len(), 3, "{cut:?}");
    assert!(
        cut.iter()
            .all(|d| d["reason"] != "implausible sequence number"
                && d["reason"] != "implausible segment name"),
        "{cut:?}"
    );
    assert_eq!(cut[0]["after_seq"], jump + 9);
    assert_eq!(cut[0]["before_seq"], jump + 13);
    assert_eq!(cut[1]["after_seq"], jump + 19);
    assert_eq!(cut[1]["before_seq"], jump + 23);
}

/// The last three records, durable (and maybe forwarded) but covered by
/// no checkpoint, damaged at rest (a bad sector): none of their numbers
/// is given out again, though only the first one's is read.
#[test]
fn damaged_last_records_keep_their_numbers() {
    let fx = Fx::new();
    fx.fill(97);
    let log = fx.open(cfg());
    for seq in 98..=100 {
        assert_eq!(log.append(ev(seq)).unwrap().seq, seq);
    }
    log.abandon();
    let at: Vec<_> = (98..=100).map(|seq| frame_of(&fx.trail(), seq)).collect();
    for (p, off, _) in at {
        let mut data = std::fs::read(&p).unwrap();
        data[off + frame::HEADER + 3] ^= 0x04;
        std::fs::write(&p, &data).unwrap();
    }
    let log = fx.open(cfg());
    let a = log.append(ev(1)).unwrap();
    log.close().unwrap();
    assert!(
        a.seq > 100,
        "a number of 98..=100 was given out again: {}",
        a.seq
    );
}

/// `quarantine` planted at rest as a symbolic link to another directory:
/// recovery does not follow it. The link is moved aside (on the record),
/// the target keeps its mode and contents, the trail opens, and the bytes
/// cut out are in a real `quarantine/` of the trail.
#[test]
fn a_symlinked_quarantine_is_moved_aside_never_followed() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fx::new();
    fx.fill(30);
    let (p, off, len) = frame_of(&fx.trail(), 20);
    let mut data = std::fs::read(&p).unwrap();
    data[off + frame::HEADER + 3] ^= 0x04;
    std::fs::write(&p, &data).unwrap();
    let elsewhere = fx.tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("keep"), b"theirs").unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).unwrap();
    let q = fx.trail().join("quarantine");
    std::os::unix::fs::symlink(&elsewhere, &q).unwrap();

    fx.start();
    // The target: untouched.
    let mode = std::fs::metadata(&elsewhere).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let names: Vec<_> = std::fs::read_dir(&elsewhere)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep"]);
    assert_eq!(std::fs::read(elsewhere.join("keep")).unwrap(), b"theirs");
    // The link moved aside, the cut bytes in a real quarantine/.
    let aside = fx.trail().join("quarantine.invalid-1");
    assert!(
        std::fs::symlink_metadata(&aside)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::symlink_metadata(&q).unwrap().is_dir());
    let kept = q.join(format!(
        "{}.{off}.bin",
        p.file_name().unwrap().to_string_lossy()
    ));
    assert_eq!(std::fs::read(kept).unwrap(), data[off..off + len]);
    let rec = actions(&fx, "audit.recovery.quarantine-replaced");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].record.details["moved_to"], "quarantine.invalid-1");
    assert_eq!(rec[0].record.details["was"], "symbolic link");
}

/// A segment crafted at rest with many small damaged spans (here 40
/// frames with forged numbers, each between two genuine records) costs a
/// bounded number of start-up records and quarantine files: the first 16
/// cuts one by one, the rest summed up in one record and one file; every
/// genuine record stays.
#[test]
fn many_cuts_in_one_segment_cost_a_bounded_number_of_records_and_files() {
    let fx = Fx::new();
    fx.fill(40);
    let (p, _, _) = frame_of(&fx.trail(), 1);
    let data = std::fs::read(&p).unwrap();
    let mut crafted = Vec::new();
    let mut forged_len = 0;
    for (_, off, len, seq) in frames(&fx.trail()) {
        crafted.extend_from_slice(&data[off..off + len]);
        let before = crafted.len();
        frame::encode(u64::MAX - seq, &[7; 32], PLANTED_BODY, &mut crafted);
        forged_len = crafted.len() - before;
    }
    std::fs::write(&p, &crafted).unwrap();

    let check = fx.start();
    assert!(!check.passed());
    let seqs: Vec<u64> = fx.records().iter().map(|r| r.seq).collect();
    assert_eq!(&seqs[..40], (1..=40).collect::<Vec<_>>().as_slice());
    let cut: Vec<serde_json::Value> = actions(&fx, "audit.recovery.quarantined")
        .into_iter()
        .map(|r| r.record.details)
        .collect();
    assert_eq!(cut.len(), 17, "{cut:?}");
    assert!(cut[..16].iter().all(|d| d.get("cuts").is_none()), "{cut:?}");
    let summary = &cut[16];
    assert_eq!(summary["cuts"], 24, "{summary}");
    assert_eq!(summary["cut_bytes"], 24 * forged_len, "{summary}");
    assert_eq!(summary["after_seq"], 17, "{summary}");
    let files = std::fs::read_dir(fx.trail().join("quarantine"))
        .unwrap()
        .count();
    assert_eq!(files, 17);
    // What the start-up report lists stays bounded too.
    assert!(check.problems.len() <= 17 + 2, "{:#?}", check.problems);
}

/// A stray entry carrying a segment's name (a directory or a symbolic
/// link: no segment, ignored by every reader) stood where the writer
/// creates a segment, which it does exclusively: at the name of the next
/// segment, every rotation across it failed, after every restart; at the
/// name of the first segment of an empty trail, the trail did not open.
/// Start-up moves it to `quarantine/` as it is, on the record, and the
/// trail appends across its name.
#[test]
fn a_stray_entry_with_a_segment_name_is_moved_aside_and_blocks_nothing() {
    let c = AuditConfig {
        segment_bytes: 4096,
        ..cfg()
    };
    // The same history twice: first to learn which name the first
    // rotation after the next start takes (a directory planted under a
    // name no rotation takes stands in for it: the same start-up record),
    // then with a directory planted under that name.
    let history = |fx: &Fx, planted: &str| -> Vec<String> {
        let log = fx.open(c.clone());
        for i in 1..=10 {
            log.append(ev(i)).unwrap();
        }
        log.close().unwrap();
        let seg_dir = fx.trail().join("segments");
        let before = names(&seg_dir);
        std::fs::create_dir(seg_dir.join(planted)).unwrap();
        std::fs::write(seg_dir.join(planted).join("x"), b"x").unwrap();
        let log = fx.open(c.clone());
        for i in 11..=60 {
            log.append(ev(i))
                .unwrap_or_else(|e| panic!("append {i} with {planted} planted: {e}"));
        }
        log.close().unwrap();
        names(&seg_dir)
            .into_iter()
            .filter(|n| !before.contains(n))
            .collect()
    };
    let dry = Fx::new();
    let created = history(&dry, &format!("{}.seg", u64::MAX));
    let next = created.first().unwrap().clone();

    let fx = Fx::new();
    assert_eq!(history(&fx, &next), created);
    let seg = fx.trail().join("segments").join(&next);
    assert!(std::fs::symlink_metadata(&seg).unwrap().is_file());
    let first: u64 = next[..20].parse().unwrap();
    assert_eq!(
        frames(&fx.trail()).iter().find(|f| f.0 == seg).unwrap().3,
        first
    );
    let moved = fx.trail().join("quarantine").join(format!("{next}.stray"));
    assert_eq!(std::fs::read(moved.join("x")).unwrap(), b"x");
    let rec: Vec<serde_json::Value> = actions(&fx, "audit.recovery.quarantined")
        .into_iter()
        .map(|r| r.record.details)
        .collect();
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0]["segment"], next.as_str());
    assert_eq!(rec[0]["reason"], "not a regular file");
    assert_eq!(rec[0]["was"], "directory");
    assert_eq!(rec[0]["quarantined"], format!("{next}.stray"));
    let r = fx.verify();
    assert!(r.ok && r.stray_files.is_empty(), "{r:#?}");
    assert!(fx.start().passed());

    // A new trail, a dangling symbolic link under the first segment's name.
    let fx = Fx::new();
    let seg_dir = fx.trail().join("segments");
    std::fs::create_dir_all(&seg_dir).unwrap();
    let first = format!("{:020}.seg", 1);
    std::os::unix::fs::symlink(fx.tmp.path().join("nowhere"), seg_dir.join(&first)).unwrap();
    let log = fx.open(cfg());
    assert_eq!(log.append(ev(1)).unwrap().seq, 2);
    log.close().unwrap();
    assert!(
        std::fs::symlink_metadata(seg_dir.join(&first))
            .unwrap()
            .is_file()
    );
    let aside = fx.trail().join("quarantine").join(format!("{first}.stray"));
    assert!(
        std::fs::symlink_metadata(&aside)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let rec = actions(&fx, "audit.recovery.quarantined");
    assert_eq!(rec.len(), 1);
    assert_eq!(
        (rec[0].seq, &rec[0].record.details["was"]),
        (1, &"symbolic link".into())
    );
    assert!(fx.verify().ok);
}

/// Pruning `checkpoints.log` behind an anchor removes only what the
/// verifier takes for a valid checkpoint that nothing contradicts. An
/// anchor (validly signed, as an anchor) copied into the log is a forged
/// checkpoint there: it stays, and so does the verdict; so do two valid
/// checkpoints for one record with different hashes. A checkpoint copied
/// into `anchor.json` is no anchor: the lines at or below its number stay.
#[test]
fn pruning_the_checkpoint_log_keeps_what_does_not_verify_as_a_checkpoint() {
    use drivesec_audit::FullPolicy::DropForwarded;
    let forged_in_log = |r: &Report, seq: u64| {
        r.problems.iter().any(|p| {
            p.kind == ProblemKind::ForgedCheckpoint
                && p.file == "checkpoints.log"
                && p.seq == Some(seq)
        })
    };
    // An anchor in the log.
    let fx = Fx::new();
    let c = small_full(DropForwarded);
    let log = fx.open(c.clone());
    let anchor_path = fx.trail().join("anchor.json");
    let mut i = 0;
    while !anchor_path.exists() {
        i += 1;
        assert!(i < 1000, "nothing was dropped");
        log.append(ev(i)).unwrap();
        log.mark_exported(log.status().unwrap().durable_seq)
            .unwrap();
    }
    log.close().unwrap();
    let anchor = std::fs::read_to_string(&anchor_path).unwrap();
    let seq: u64 = serde_json::from_str::<serde_json::Value>(&anchor).unwrap()["seq"]
        .as_u64()
        .unwrap();
    // And two valid checkpoints (the key signed both) that disagree about
    // a record the anchor covers: a forged checkpoint, however pruned.
    let sign = |hash: &str| {
        use base64::Engine;
        let time = "2026-01-01T00:00:00.000000Z";
        let msg = Checkpoint::signed_bytes(CheckpointKind::Checkpoint, seq - 1, hash, time);
        let sig = fx.signer.store.sign(&fx.signer.handle, &msg).unwrap();
        serde_json::to_string(&Checkpoint {
            kind: CheckpointKind::Checkpoint,
            seq: seq - 1,
            hash: hash.into(),
            time: time.into(),
            algorithm: "ecdsa-p256-sha256".into(),
            signature: base64::engine::general_purpose::STANDARD.encode(sig),
        })
        .unwrap()
    };
    let (one, two) = (sign(&"1".repeat(64)), sign(&"2".repeat(64)));
    let log_path = fx.trail().join("checkpoints.log");
    let lines = std::fs::read_to_string(&log_path).unwrap();
    std::fs::write(&log_path, format!("{anchor}\n{one}\n{two}\n{lines}")).unwrap();
    assert!(forged_in_log(&fx.verify(), seq));
    assert!(forged_in_log(&fx.verify(), seq - 1));
    // Starts, drops and checkpoints: each prunes the log.
    for _ in 0..2 {
        let log = fx.open(c.clone());
        for _ in 0..40 {
            i += 1;
            log.append(ev(i)).unwrap();
            log.mark_exported(log.status().unwrap().durable_seq)
                .unwrap();
        }
        log.close().unwrap();
    }
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.lines().any(|l| l == anchor),
        "the forged line was pruned"
    );
    assert!(text.lines().any(|l| l == one) && text.lines().any(|l| l == two));
    assert!(forged_in_log(&fx.verify(), seq));
    assert!(forged_in_log(&fx.verify(), seq - 1));

    // A checkpoint in anchor.json.
    let fx = Fx::new();
    fx.fill(200);
    let log_path = fx.trail().join("checkpoints.log");
    let before = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = before.lines().collect();
    assert!(lines.len() >= 4, "{before}");
    std::fs::write(fx.trail().join("anchor.json"), lines[1]).unwrap();
    let check = fx.start();
    assert!(
        check
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::ForgedCheckpoint && p.file == "anchor.json"),
        "{check:#?}"
    );
    let after = std::fs::read_to_string(&log_path).unwrap();
    assert!(after.starts_with(&before), "lines were pruned:\n{after}");
}

/// The summary of a segment's cuts beyond the first 16 says what they
/// were: their reason when they share one, `unreadable bytes` when they
/// are unreadable bytes of several kinds, and `unreadable bytes or
/// implausible sequence numbers` only when both kinds are among them.
#[test]
fn the_summary_of_many_cuts_names_their_kind() {
    // Damage after every record of a segment of 40: `damage(seq)` is put
    // after record `seq`; the summary's details.
    let summary = |damage: &dyn Fn(u64) -> Vec<u8>| {
        let fx = Fx::new();
        fx.fill(40);
        let (p, _, _) = frame_of(&fx.trail(), 1);
        let data = std::fs::read(&p).unwrap();
        let mut crafted = Vec::new();
        for (_, off, len, seq) in frames(&fx.trail()) {
            crafted.extend_from_slice(&data[off..off + len]);
            crafted.extend_from_slice(&damage(seq));
        }
        std::fs::write(&p, &crafted).unwrap();
        fx.start();
        let cut: Vec<serde_json::Value> = actions(&fx, "audit.recovery.quarantined")
            .into_iter()
            .map(|r| r.record.details)
            .collect();
        assert_eq!(cut.len(), 17, "{cut:?}");
        assert_eq!(cut[16]["cuts"], 24, "{}", cut[16]);
        cut[16].clone()
    };
    // A frame with a wrong checksum, or bytes without a frame's magic.
    let bad_checksum = |seq: u64| {
        let mut f = Vec::new();
        frame::encode(u64::MAX - seq, &[7; 32], PLANTED_BODY, &mut f);
        let last = f.len() - 1;
        f[last] ^= 0xff;
        f
    };
    let no_magic = |_: u64| b"not a frame at all".to_vec();
    let implausible = |seq: u64| {
        let mut f = Vec::new();
        frame::encode(u64::MAX - seq, &[7; 32], PLANTED_BODY, &mut f);
        f
    };
    let unreadable = summary(&|seq| {
        if seq % 2 == 0 {
            bad_checksum(seq)
        } else {
            no_magic(seq)
        }
    });
    assert_eq!(unreadable["reason"], "unreadable bytes", "{unreadable}");
    let same = summary(&bad_checksum);
    assert_eq!(same["reason"], "frame checksum mismatch", "{same}");
    let both = summary(&|seq| {
        if seq % 2 == 0 {
            implausible(seq)
        } else {
            no_magic(seq)
        }
    });
    assert_eq!(
        both["reason"], "unreadable bytes or implausible sequence numbers",
        "{both}"
    );
}
