//! The audit trail: appends, reads, every tamper class, capacity policies,
//! crash recovery (including SIGKILL during bursts) and time-based checkpoints.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{Fx, frame_of, frames, modify_record_fixing_checksum, small};
use drivesec_audit::frame;
use drivesec_audit::reader::{self, Query};
use drivesec_audit::verify::{ProblemKind, Report, verify};
use drivesec_audit::{Actor, AuditConfig, AuditError, AuditLog, Event, FullPolicy, Outcome};

fn ev(i: u64) -> Event {
    Event::new(
        Actor::User(format!("user{}", i % 3)),
        if i.is_multiple_of(5) {
            "auth.login"
        } else {
            "param.write"
        },
    )
    .source("127.0.0.1:50000")
    .target(format!("param-{i}"))
    .outcome(if i.is_multiple_of(7) {
        Outcome::Denied
    } else {
        Outcome::Success
    })
    .details(serde_json::json!({ "i": i }))
}

fn fill(fx: &Fx, n: u64, cfg: AuditConfig) {
    let log = fx.open(cfg);
    for i in 1..=n {
        assert_eq!(log.append(ev(i)).unwrap().seq, i);
    }
    log.close().unwrap();
}

fn assert_bad(r: &Report, seq: u64, kind: ProblemKind) {
    assert!(!r.ok, "tampering not detected");
    assert_eq!(r.first_bad_seq, Some(seq), "{:#?}", r.problems);
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == kind && p.seq == Some(seq)),
        "{:#?}",
        r.problems
    );
}

#[test]
fn append_read_export_verify() {
    let fx = Fx::new();
    fill(&fx, 600, small());
    let r = fx.verify();
    assert!(r.ok, "{:#?}", r.problems);
    assert_eq!(
        (r.records, r.first_seq, r.last_seq),
        (600, Some(1), Some(600))
    );
    assert!(r.checkpoints_verified >= 15, "{r:?}");
    assert_eq!(
        r.latest_checkpoint,
        Some(600),
        "close() signs a final checkpoint"
    );
    assert!(
        frames(&fx.trail())
            .iter()
            .map(|f| &f.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 5
    );

    let range = reader::read(
        &fx.trail(),
        &Query {
            from_seq: Some(10),
            to_seq: Some(20),
            ..Query::default()
        },
        1000,
    )
    .unwrap();
    assert_eq!(
        range.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (10..=20).collect::<Vec<_>>()
    );
    assert_eq!(range[0].record.target.as_deref(), Some("param-10"));
    assert_eq!(range[1].prev, range[0].hash);
    let logins = reader::read(
        &fx.trail(),
        &Query {
            action: Some("auth.".into()),
            ..Query::default()
        },
        1000,
    )
    .unwrap();
    assert_eq!(logins.len(), 120);
    let denied = reader::read(
        &fx.trail(),
        &Query {
            outcome: Some(Outcome::Denied),
            actor: Some("user1".into()),
            ..Query::default()
        },
        1000,
    )
    .unwrap();
    assert!(denied.iter().all(|r| r.seq % 7 == 0 && r.seq % 3 == 1) && !denied.is_empty());
    let t = range[5].record.time.clone();
    let since = reader::read(
        &fx.trail(),
        &Query {
            since: Some(t.clone()),
            ..Query::default()
        },
        10_000,
    )
    .unwrap();
    assert!(since.first().unwrap().seq <= 15 && since.iter().all(|r| r.record.time >= t));
    assert_eq!(since.last().unwrap().seq, 600);
    let mut out = Vec::new();
    let (n, last) = reader::export_jsonl(
        &fx.trail(),
        &Query {
            from_seq: Some(590),
            ..Query::default()
        },
        &mut out,
    )
    .unwrap();
    assert_eq!((n, last), (11, 600));
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["seq"], 590);
    assert_eq!(lines[0]["actor"]["kind"], "user");
    assert_eq!(lines[0]["time_quality"], "unknown");
    assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    // Reopening continues the chain.
    let log = fx.open(small());
    assert_eq!(log.append(ev(601)).unwrap().seq, 601);
    log.close().unwrap();
    assert!(fx.verify().ok);
}

#[test]
fn concurrent_appenders_share_one_chain() {
    let fx = Fx::new();
    let log = Arc::new(fx.open(small()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..250)
                    .map(|i| log.append(ev(t * 1000 + i)).unwrap().seq)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
    Arc::try_unwrap(log).unwrap().close().unwrap();
    let r = fx.verify();
    assert!(r.ok && r.records == 1000, "{r:?}");
}

// ---- tamper classes --------------------------------------------------------

#[test]
fn tamper_modified_byte_is_named() {
    let fx = Fx::new();
    fill(&fx, 300, small());
    let (p, off, _) = frame_of(&fx.trail(), 123);
    let mut data = std::fs::read(&p).unwrap();
    data[off + frame::HEADER + 5] ^= 0x01;
    std::fs::write(&p, data).unwrap();
    assert_bad(&fx.verify(), 123, ProblemKind::DamagedRecord);
}

#[test]
fn tamper_modified_byte_with_fixed_checksum_is_named() {
    let fx = Fx::new();
    fill(&fx, 300, small());
    let (p, off, len) = frame_of(&fx.trail(), 150);
    let mut data = std::fs::read(&p).unwrap();
    modify_record_fixing_checksum(&mut data, off, len);
    std::fs::write(&p, data).unwrap();
    assert_bad(&fx.verify(), 150, ProblemKind::BrokenLink);
}

#[test]
fn tamper_removed_record_is_named() {
    let fx = Fx::new();
    fill(&fx, 300, small());
    let (p, off, len) = frame_of(&fx.trail(), 77);
    let mut data = std::fs::read(&p).unwrap();
    data.drain(off..off + len);
    std::fs::write(&p, data).unwrap();
    assert_bad(&fx.verify(), 77, ProblemKind::MissingRecords);
}

#[test]
fn tamper_inserted_record_is_named() {
    let fx = Fx::new();
    fill(&fx, 300, small());
    // A well-formed forged record 201 chained onto record 200, inserted before the real 201.
    let rec200 = reader::read(
        &fx.trail(),
        &Query {
            from_seq: Some(200),
            to_seq: Some(200),
            ..Query::default()
        },
        1,
    )
    .unwrap();
    let prev: [u8; 32] = hex::decode(&rec200[0].hash).unwrap().try_into().unwrap();
    let mut forged = Vec::new();
    frame::encode(201, &prev, br#"{"time":"2026-01-01T00:00:00.000000Z","time_quality":"unknown","actor":{"kind":"user","id":"mallory"},"action":"auth.login","outcome":"success"}"#, &mut forged);
    let (p, off, _) = frame_of(&fx.trail(), 201);
    let mut data = std::fs::read(&p).unwrap();
    data.splice(off..off, forged);
    std::fs::write(&p, data).unwrap();
    assert_bad(&fx.verify(), 201, ProblemKind::OutOfOrder);
}

#[test]
fn tamper_reordered_records_are_named() {
    let fx = Fx::new();
    fill(&fx, 300, small());
    let (p, a_off, a_len) = frame_of(&fx.trail(), 90);
    let (q, b_off, b_len) = frame_of(&fx.trail(), 91);
    assert_eq!(p, q, "pick two records in one segment");
    let data = std::fs::read(&p).unwrap();
    let mut swapped = data[..a_off].to_vec();
    swapped.extend_from_slice(&data[b_off..b_off + b_len]);
    swapped.extend_from_slice(&data[a_off..a_off + a_len]);
    swapped.extend_from_slice(&data[b_off + b_len..]);
    std::fs::write(&p, swapped).unwrap();
    assert_bad(&fx.verify(), 90, ProblemKind::MissingRecords);
}

#[test]
fn tamper_cut_tail_is_named() {
    let fx = Fx::new();
    fill(&fx, 300, small());
    // Remove records 291..300 and also the checkpoint log lines that mention them:
    // checkpoint.json, kept apart, still shows the cut.
    let (p, off, _) = frame_of(&fx.trail(), 291);
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..off]).unwrap();
    let log = fx.trail().join("checkpoints.log");
    let kept: String = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
                <= 290
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&log, kept).unwrap();
    assert_bad(&fx.verify(), 291, ProblemKind::CutTail);
}

#[test]
fn tamper_forged_checkpoint_is_named() {
    let fx = Fx::new();
    fill(&fx, 300, small());
    let path = fx.trail().join("checkpoint.json");
    let mut cp: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cp["seq"] = 310.into();
    std::fs::write(&path, serde_json::to_vec(&cp).unwrap()).unwrap();
    assert_bad(&fx.verify(), 310, ProblemKind::ForgedCheckpoint);

    // A checkpoint signed by another key is just as forged.
    let fx2 = Fx::new();
    fill(&fx2, 50, small());
    let r = verify(&fx2.trail(), &fx.key).unwrap();
    assert!(!r.ok);
    assert!(
        r.problems
            .iter()
            .all(|p| p.kind == ProblemKind::ForgedCheckpoint),
        "{:#?}",
        r.problems
    );
}

#[test]
fn tamper_rewritten_chain_is_caught_by_the_signed_checkpoint() {
    let fx = Fx::new();
    fill(&fx, 300, small());
    // Rewrite record 130 and re-chain everything after it with correct hashes and checksums.
    let all = reader::read(&fx.trail(), &Query::default(), 10_000).unwrap();
    let segs = frames(&fx.trail());
    let mut files: std::collections::BTreeMap<PathBuf, Vec<u8>> = Default::default();
    let mut prev = [0u8; 32];
    for (rec, (path, _, _, seq)) in all.iter().zip(&segs) {
        let mut r = rec.record.clone();
        if *seq == 130 {
            r.outcome = Outcome::Success;
            r.actor = Actor::User("someone-else".into());
        }
        let body = serde_json::to_vec(&r).unwrap();
        prev = frame::encode(*seq, &prev, &body, files.entry(path.clone()).or_default());
    }
    for (p, d) in files {
        std::fs::write(p, d).unwrap();
    }
    let r = fx.verify();
    assert!(!r.ok);
    // The first checkpoint at or after 130 no longer matches; the first bad
    // record is named as the start of that signed interval.
    let cps: Vec<u64> = std::fs::read_to_string(fx.trail().join("checkpoints.log"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let before = cps.iter().copied().filter(|&s| s < 130).max().unwrap_or(0);
    assert_eq!(r.first_bad_seq, Some(before + 1), "{:#?}", r.problems);
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::CheckpointMismatch)
    );
}

#[test]
fn tamper_removed_first_segment_is_named() {
    let fx = Fx::new();
    fill(&fx, 300, small());
    let first = frames(&fx.trail())[0].0.clone();
    std::fs::remove_file(first).unwrap();
    let r = fx.verify();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(1), "{:#?}", r.problems);
}

// ---- crash safety ----------------------------------------------------------

#[test]
fn torn_tail_is_cut_back_quarantined_and_recorded() {
    let fx = Fx::new();
    fill(&fx, 99, small());
    // Record 100 is written, then the process dies before any checkpoint.
    let log = fx.open(small());
    assert_eq!(log.append(ev(100)).unwrap().seq, 100);
    log.abandon();
    let frames_now = frames(&fx.trail());
    let (last_seg, off, len, seq) = frames_now.last().unwrap().clone();
    assert_eq!(seq, 100);
    // Half of record 100 reached the disk, then garbage.
    let mut data = std::fs::read(&last_seg).unwrap();
    data.truncate(off + len / 2);
    data.extend_from_slice(&[0xAB; 17]);
    std::fs::write(&last_seg, data).unwrap();
    let log = fx.open(small());
    let st = log.status().unwrap();
    assert_eq!(st.durable_seq, 100, "99 records + the recovery event");
    log.close().unwrap();
    let rec = reader::read(
        &fx.trail(),
        &Query {
            from_seq: Some(100),
            ..Query::default()
        },
        10,
    )
    .unwrap();
    assert_eq!(rec[0].record.action, "audit.recovery.truncated");
    assert!(rec[0].record.essential);
    let q: Vec<_> = std::fs::read_dir(fx.trail().join("quarantine"))
        .unwrap()
        .collect();
    assert_eq!(q.len(), 1);
    let r = fx.verify();
    assert!(r.ok, "{:#?}", r.problems);
}

#[test]
fn sigkill_during_bursts_never_breaks_the_chain() {
    use rand_core::RngCore;
    let fx = Fx::new();
    let rounds = if std::env::var_os("DRIVESEC_LONG_TESTS").is_some() {
        200
    } else {
        25
    };
    let mut total_acked = 0;
    for round in 0..rounds {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_audit-writer"))
            .arg(fx.trail())
            .arg(fx.tmp.path().join("ks"))
            .arg(fx.tmp.path().join("secret"))
            .arg("16384")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let ms = 20 + (rand_core::OsRng.next_u32() % 180) as u64;
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let acked = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("acked ")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        assert!(
            out.stderr.is_empty(),
            "round {round}: writer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Reopen: the chain continues at (at least) every acknowledged record.
        let log = fx.open(AuditConfig {
            segment_bytes: 16384,
            checkpoint_every: 50,
            ..AuditConfig::default()
        });
        let st = log.status().unwrap();
        assert!(
            st.durable_seq >= acked,
            "round {round}: acked {acked} but reopened at {}",
            st.durable_seq
        );
        total_acked = total_acked.max(acked);
        drop(log);
        let r = fx.verify();
        assert!(r.ok, "round {round}: {:#?}", r.problems);
    }
    assert!(
        total_acked > 100,
        "the writer barely ran ({total_acked} records)"
    );
}

// ---- capacity ---------------------------------------------------------------

fn bounded(policy: FullPolicy) -> AuditConfig {
    AuditConfig {
        segment_bytes: 8 * 1024,
        max_bytes: 64 * 1024,
        reserve_bytes: 4 * 1024,
        warn_percent: 80,
        when_full: policy,
        checkpoint_every: 40,
        ..AuditConfig::default()
    }
}

#[test]
fn full_trail_refuses_non_essential_and_never_loses_records() {
    let fx = Fx::new();
    let log = fx.open(bounded(FullPolicy::RefuseNonEssential));
    let mut n = 0u64;
    let err = loop {
        match log.append(ev(n)) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 10_000);
    };
    assert!(matches!(err, AuditError::Full { .. }), "{err}");
    let st = log.status().unwrap();
    assert!(st.warning);
    // Essential events still land, in the reserve.
    let a = log
        .append(Event::new(Actor::Device, "tamper.detected").essential())
        .unwrap();
    assert!(matches!(
        log.append(ev(0)).unwrap_err(),
        AuditError::Full { .. }
    ));
    log.close().unwrap();
    let all = reader::read(&fx.trail(), &Query::default(), 100_000).unwrap();
    assert_eq!(all.first().unwrap().seq, 1, "nothing was dropped");
    assert_eq!(all.last().unwrap().seq, a.seq);
    let warnings: Vec<_> = all
        .iter()
        .filter(|r| r.record.action == "audit.capacity.warning")
        .collect();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].record.essential);
    assert!(all.iter().any(|r| r.record.action == "audit.capacity.full"));
    assert!(fx.verify().ok);
}

#[test]
fn drop_policy_deletes_only_delivered_segments_behind_a_signed_anchor() {
    let fx = Fx::new();
    let log = fx.open(bounded(FullPolicy::DropForwarded));
    let mut n = 0u64;
    // Nothing delivered yet: the trail fills up and refuses, it does not drop.
    while log.append(ev(n)).is_ok() {
        n += 1;
    }
    let total = log.status().unwrap().durable_seq;
    assert_eq!(
        reader::read(&fx.trail(), &Query::default(), 1).unwrap()[0].seq,
        1
    );
    // Export the first 200 records; now older segments may go.
    log.mark_exported(200).unwrap();
    for i in 0..100 {
        log.append(ev(i)).unwrap();
    }
    log.close().unwrap();
    let r = fx.verify();
    assert!(r.ok, "{:#?}", r.problems);
    let anchor = r.anchor.expect("an anchor marks the dropped records");
    assert!(
        anchor <= 200,
        "dropped undelivered records: anchor {anchor}"
    );
    assert_eq!(r.first_seq, Some(anchor + 1));
    assert!(r.last_seq.unwrap() > total);
    // The drop is recorded, naming what went.
    let all = reader::read(&fx.trail(), &Query::default(), 100_000).unwrap();
    let drops: Vec<_> = all
        .iter()
        .filter(|r| r.record.action == "audit.capacity.dropped")
        .collect();
    assert!(!drops.is_empty(), "the drop was not recorded");
    assert!(drops.iter().all(|d| d.record.essential));
    assert_eq!(
        drops
            .iter()
            .map(|d| d.record.details["last_seq"].as_u64().unwrap())
            .max(),
        Some(anchor)
    );
    // Deleting one more (undelivered) segment behind the anchor's back is caught.
    let first = frames(&fx.trail())[0].0.clone();
    std::fs::remove_file(first).unwrap();
    let r = fx.verify();
    assert_eq!(r.first_bad_seq, Some(anchor + 1), "{:#?}", r.problems);
}

/// The seqs of `checkpoints.log`'s lines, in order.
fn log_seqs(fx: &Fx) -> Vec<u64> {
    std::fs::read_to_string(fx.trail().join("checkpoints.log"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn dropping_segments_prunes_the_checkpoint_log_behind_the_anchor() {
    let fx = Fx::new();
    let cfg = bounded(FullPolicy::DropForwarded);
    let log = fx.open(cfg.clone());
    let mut n = 0u64;
    while log.append(ev(n)).is_ok() {
        n += 1;
    }
    let before = log_seqs(&fx);
    assert!(before.len() >= 3, "{before:?}");
    // Delivered: segments go, and so do the log lines for their records.
    log.mark_exported(log.status().unwrap().durable_seq)
        .unwrap();
    for i in 0..2000 {
        log.append(ev(i)).unwrap();
        if i % 100 == 0 {
            log.mark_exported(log.status().unwrap().durable_seq)
                .unwrap();
        }
    }
    log.close().unwrap();
    let r = fx.verify();
    assert!(r.ok, "{:#?}", r.problems);
    let anchor = r.anchor.expect("segments were dropped");
    let seqs = log_seqs(&fx);
    let (last, rest) = seqs.split_last().unwrap();
    assert!(
        rest.iter().all(|&s| s > anchor),
        "lines at or below the anchor {anchor} stayed: {seqs:?}"
    );
    // The newest line is the latest checkpoint's; nothing above the anchor went.
    assert_eq!(Some(*last), r.latest_checkpoint);
    assert_eq!(Some(*last), r.signed_seq);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // Bounded: no more lines than the records present could need.
    assert!(
        (seqs.len() as u64) <= r.records / cfg.checkpoint_every + 3,
        "{} lines for {} records",
        seqs.len(),
        r.records
    );
    // The next start finds nothing to repair or report.
    let log = fx.open(cfg);
    assert!(log.startup_check().passed(), "{:#?}", log.startup_check());
    assert!(log.startup_check().recorded.is_empty());
    log.close().unwrap();
    assert!(fx.verify().ok);
}

#[test]
fn time_based_checkpoints_cover_quiet_periods() {
    let fx = Fx::new();
    let cfg = AuditConfig {
        checkpoint_every: 1_000_000,
        checkpoint_interval: Duration::from_secs(1),
        ..small()
    };
    let log = fx.open(cfg);
    log.append(ev(1)).unwrap();
    let mut covered = false;
    for _ in 0..100 {
        if log.status().unwrap().checkpoint_seq == 1 {
            covered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(covered, "no checkpoint within 10 s of a 1 s interval");
    drop(log);
    assert!(fx.verify().ok);
}

#[test]
fn bad_config_and_oversized_records_are_refused() {
    let fx = Fx::new();
    let bad = AuditConfig {
        segment_bytes: 10,
        ..AuditConfig::default()
    };
    assert!(matches!(
        AuditLog::open(&fx.trail(), bad, fx.signer.clone()).unwrap_err(),
        AuditError::Invalid(_)
    ));
    let log = fx.open(small());
    let huge =
        Event::new(Actor::Device, "x").details(serde_json::json!({"blob": "a".repeat(70_000)}));
    assert!(matches!(
        log.append(huge).unwrap_err(),
        AuditError::Invalid(_)
    ));
    assert_eq!(
        log.append(ev(1)).unwrap().seq,
        1,
        "a refused record consumes no sequence number"
    );
}

#[test]
fn checkpoint_failure_is_reported_not_hidden() {
    let fx = Fx::new();
    let cfg = AuditConfig {
        checkpoint_every: 5,
        ..small()
    };
    let log = fx.open(cfg);
    // Tamper response: every key is zeroized; records still land, checkpoints cannot.
    fx.signer.store.destroy_all().unwrap();
    for i in 0..20 {
        log.append(ev(i)).unwrap();
    }
    let mut reported = None;
    for _ in 0..100 {
        reported = log.status().unwrap().checkpoint_error;
        if reported.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let msg = reported.expect("the failed checkpoint is visible in status()");
    assert!(msg.contains("idevid"), "{msg}");
}

/// An action takes room first and records after: once the room is held,
/// a flood that fills the trail meanwhile cannot make its record fail,
/// and an unused reservation gives its room back.
#[test]
fn a_reservation_keeps_room_for_the_actions_record_against_a_flood() {
    let fx = Fx::new();
    let log = fx.open(bounded(FullPolicy::RefuseNonEssential));
    let held = log.reserve(false, "param.write").unwrap();
    let mut n = 0u64;
    while log.append(ev(n)).is_ok() {
        n += 1;
        assert!(n < 10_000);
    }
    // Full for routine records, and for new reservations of them...
    assert!(matches!(
        log.reserve(false, "param.write").unwrap_err(),
        AuditError::Full { .. }
    ));
    // ...but the held one is still good.
    let a = log
        .append_reserved(held, Event::new(Actor::Device, "param.write"))
        .unwrap();
    // Dropping an unused reservation frees its room: one more routine record fits.
    let fx2 = Fx::new();
    let log2 = fx2.open(bounded(FullPolicy::RefuseNonEssential));
    let mut m = 0u64;
    let spare = log2.reserve(false, "x").unwrap();
    while log2.append(ev(m)).is_ok() {
        m += 1;
    }
    drop(spare);
    log2.append(ev(m)).unwrap();
    log.close().unwrap();
    let all = reader::read(&fx.trail(), &Query::default(), 100_000).unwrap();
    assert_eq!(all.last().unwrap().seq, a.seq);
    assert_eq!(all.last().unwrap().record.action, "param.write");
    assert!(fx.verify().ok);
}

/// Essential records from the network (logins, security administration)
/// use only half of the reserve: once they have, the device's own records
/// (tamper, stop) still fit.
#[test]
fn network_records_cannot_eat_the_devices_half_of_the_reserve() {
    let fx = Fx::new();
    let log = fx.open(bounded(FullPolicy::RefuseNonEssential));
    let mut n = 0u64;
    while log.append(ev(n)).is_ok() {
        n += 1;
        assert!(n < 10_000);
    }
    let mut m = 0;
    while log
        .append(Event::new(Actor::User("admin".into()), "auth.login").essential())
        .is_ok()
    {
        m += 1;
        assert!(m < 10_000);
    }
    assert!(m > 0, "network essentials got no reserve at all");
    assert!(matches!(
        log.reserve(true, "user.add").unwrap_err(),
        AuditError::Full { .. }
    ));
    let a = log
        .append(Event::new(Actor::Device, "device.tamper-detected").essential())
        .unwrap();
    log.close().unwrap();
    let all = reader::read(&fx.trail(), &Query::default(), 100_000).unwrap();
    assert_eq!(all.last().unwrap().seq, a.seq);
    assert!(fx.verify().ok);
}
