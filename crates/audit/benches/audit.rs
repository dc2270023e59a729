//! Audit trail benchmarks, each beside its reference in the same run.
//!
//! 1. Durable appends per second, drivesec vs SQLite (WAL, synchronous=FULL)
//!    inserting the same records (the same JSON bodies) in the same batch
//!    sizes, one transaction / one group commit per batch, on the same file
//!    system. drivesec's figure includes hashing, checkpoint signing every
//!    1000 records (soft keystore, P-256) and fdatasync per batch.
//! 2. Verification of a 1,000,000-record trail (records per second).
//!
//! `DRIVESEC_BENCH_SECONDS` (default 3) sets the time per append figure;
//! `DRIVESEC_BENCH_VERIFY_RECORDS` (default 1000000) the trail size.
//! Prints one JSON object per figure.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use drivesec_audit::{Actor, AuditConfig, AuditLog, Event, Outcome, Record, Signer, TimeQuality};
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeystoreConfig};

fn ev(i: u64) -> Event {
    Event::new(Actor::User(format!("operator{}", i % 7)), "param.write")
        .source("10.0.0.17:50412")
        .target(format!("speed-reference/{}", i % 100))
        .outcome(if i.is_multiple_of(11) {
            Outcome::Denied
        } else {
            Outcome::Success
        })
        .details(serde_json::json!({"old": i % 1500, "new": (i + 7) % 1500, "unit": "rpm"}))
}

/// Default settings but room for a long run (the bound is not what is measured).
fn config() -> AuditConfig {
    AuditConfig {
        max_bytes: 16 << 30,
        ..AuditConfig::default()
    }
}

fn signer(dir: &std::path::Path) -> Signer {
    let (_, store) = KeystoreConfig::create_soft(dir, "ks", "secret").unwrap();
    let handle = KeyHandle::new("idevid").unwrap();
    store.generate(&handle, KeyAlgorithm::EcdsaP256).unwrap();
    Signer { store, handle }
}

fn drivesec_appends(root: &std::path::Path, batch: usize, secs: f64) -> f64 {
    let d = tempfile::tempdir_in(root).unwrap();
    let log = AuditLog::open(&d.path().join("trail"), config(), signer(d.path())).unwrap();
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        let b: Vec<Event> = (0..batch as u64).map(|k| ev(n + k)).collect();
        log.append_batch(b).unwrap();
        n += batch as u64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    log.close().unwrap();
    rate
}

fn sqlite_appends(root: &std::path::Path, batch: usize, secs: f64) -> f64 {
    let d = tempfile::tempdir_in(root).unwrap();
    let mut db = rusqlite::Connection::open(d.path().join("audit.db")).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    db.pragma_update(None, "synchronous", "FULL").unwrap();
    db.execute_batch("CREATE TABLE audit (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .unwrap();
    check_sqlite_settings(&db);
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        let tx = db.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO audit (seq, body) VALUES (?1, ?2)")
                .unwrap();
            for k in 0..batch as u64 {
                // The same record body drivesec stores: the event, stamped.
                let rec = Record::from_event(
                    ev(n + k),
                    "2026-11-28T04:00:00.000000Z".into(),
                    TimeQuality::Unknown,
                );
                stmt.execute(rusqlite::params![
                    (n + k + 1) as i64,
                    serde_json::to_string(&rec).unwrap()
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        n += batch as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// `threads` writers appending one record per call, concurrently.
fn drivesec_concurrent(root: &std::path::Path, threads: u64, secs: f64) -> f64 {
    let d = tempfile::tempdir_in(root).unwrap();
    let log = std::sync::Arc::new(
        AuditLog::open(&d.path().join("trail"), config(), signer(d.path())).unwrap(),
    );
    let start = Instant::now();
    let budget = Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while start.elapsed() < budget {
                    log.append(ev(t * 1_000_000 + n)).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let n: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    n as f64 / start.elapsed().as_secs_f64()
}

/// `threads` connections inserting one record per transaction, concurrently.
fn sqlite_concurrent(root: &std::path::Path, threads: u64, secs: f64) -> f64 {
    let d = tempfile::tempdir_in(root).unwrap();
    let path = d.path().join("audit.db");
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.pragma_update(None, "journal_mode", "WAL").unwrap();
        db.execute_batch(
            "CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)",
        )
        .unwrap();
    }
    let start = Instant::now();
    let budget = Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let db = rusqlite::Connection::open(&path).unwrap();
                db.pragma_update(None, "synchronous", "FULL").unwrap();
                db.busy_timeout(Duration::from_secs(30)).unwrap();
                let mut n = 0u64;
                while start.elapsed() < budget {
                    let rec = Record::from_event(
                        ev(t * 1_000_000 + n),
                        "2026-11-28T04:00:00.000000Z".into(),
                        TimeQuality::Unknown,
                    );
                    db.execute(
                        "INSERT INTO audit (body) VALUES (?1)",
                        [serde_json::to_string(&rec).unwrap()],
                    )
                    .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let n: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    n as f64 / start.elapsed().as_secs_f64()
}

fn check_sqlite_settings(db: &rusqlite::Connection) {
    let mode: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    let sync: i64 = db
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (mode.as_str(), sync),
        ("wal", 2),
        "SQLite must run in WAL mode with synchronous=FULL"
    );
}

/// The disk's own limit for one-at-a-time durability: 256-byte writes into
/// a preallocated file, each followed by `fdatasync` (no file growth, so no
/// metadata to journal). Neither engine can commit single records faster.
fn disk_syncs_per_sec(root: &std::path::Path, secs: f64) -> f64 {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir_in(root).unwrap();
    let f = std::fs::File::create(d.path().join("floor")).unwrap();
    let size = 8u64 << 20;
    f.write_all_at(&vec![0u8; size as usize], 0).unwrap();
    f.sync_all().unwrap();
    let rec = [b'x'; 256];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all_at(&rec, (n * 256) % size).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::var("DRIVESEC_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let verify_n: u64 = std::env::var("DRIVESEC_BENCH_VERIFY_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    // Same file system for both: the target directory, not a tmpfs.
    let root = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).unwrap();
    let floor = disk_syncs_per_sec(&root, secs);
    println!("{{\"bench\":\"disk-floor\",\"syncs_per_sec\":{floor:.1}}}");
    for batch in [1usize, 16, 256] {
        let ours = drivesec_appends(&root, batch, secs);
        let theirs = sqlite_appends(&root, batch, secs);
        println!(
            "{{\"bench\":\"audit-append\",\"batch\":{batch},\"drivesec_per_sec\":{ours:.1},\"sqlite_per_sec\":{theirs:.1},\"ratio\":{:.2}}}",
            ours / theirs
        );
    }
    let threads = 8;
    let ours = drivesec_concurrent(&root, threads, secs);
    let theirs = sqlite_concurrent(&root, threads, secs);
    println!(
        "{{\"bench\":\"audit-append-concurrent\",\"threads\":{threads},\"batch\":1,\"drivesec_per_sec\":{ours:.1},\"sqlite_per_sec\":{theirs:.1},\"ratio\":{:.2}}}",
        ours / theirs
    );

    let d = tempfile::tempdir_in(&root).unwrap();
    let s = signer(d.path());
    let key = s.store.info(&s.handle).unwrap().public_key;
    let trail = d.path().join("trail");
    let log = AuditLog::open(&trail, config(), s).unwrap();
    let mut n = 0;
    while n < verify_n {
        let b: Vec<Event> = (0..1024.min(verify_n - n)).map(|k| ev(n + k)).collect();
        n += b.len() as u64;
        log.append_batch(b).unwrap();
    }
    log.close().unwrap();
    let bytes: u64 = std::fs::read_dir(trail.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    // Warm the page cache once, then time a full verification.
    drivesec_audit::verify::verify(&trail, &key).unwrap();
    let start = Instant::now();
    let report = drivesec_audit::verify::verify(&trail, &key).unwrap();
    let el = start.elapsed().as_secs_f64();
    assert!(report.ok && report.records == verify_n);
    println!(
        "{{\"bench\":\"audit-verify\",\"records\":{verify_n},\"bytes\":{bytes},\"seconds\":{el:.3},\"records_per_sec\":{:.0},\"checkpoints\":{}}}",
        verify_n as f64 / el,
        report.checkpoints_verified
    );
}
