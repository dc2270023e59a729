//! `audit-writer DIR KEYSTORE_DIR SECRET_FILE [SEGMENT_BYTES] [THREADS]`
//!
//! Appends records to the trail in DIR as fast as it can, from THREADS
//! threads (default 2), in batches of 1 to 16, signing checkpoints with the
//! `idevid` key of the soft keystore. After each batch is durable it prints
//! `acked SEQ` (the batch's last sequence number) on stdout. Runs until killed.
//! Used by the crash tests, which kill it with SIGKILL at random moments.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use drivesec_audit::{Actor, AuditConfig, AuditLog, Event, Signer};
use drivesec_keystore::KeyHandle;
use drivesec_keystore::soft::{DeviceSecret, SoftKeyStore};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: audit-writer DIR KEYSTORE_DIR SECRET_FILE [SEGMENT_BYTES] [THREADS]");
        std::process::exit(2);
    }
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let secret = DeviceSecret::load(&PathBuf::from(&args[2]))?;
        let store = Arc::new(SoftKeyStore::open(&PathBuf::from(&args[1]), &secret)?);
        let signer = Signer {
            store,
            handle: KeyHandle::new("idevid")?,
        };
        let mut config = AuditConfig {
            checkpoint_every: 50,
            ..AuditConfig::default()
        };
        if let Some(s) = args.get(3) {
            config.segment_bytes = s.parse()?;
        }
        let threads: usize = args.get(4).map(|t| t.parse()).transpose()?.unwrap_or(2);
        let log = Arc::new(AuditLog::open(&PathBuf::from(&args[0]), config, signer)?);
        let mut handles = Vec::new();
        for t in 0..threads {
            let log = log.clone();
            handles.push(std::thread::spawn(move || -> Result<(), String> {
                let mut i: u64 = 0;
                loop {
                    let n = 1 + (i % 16) as usize;
                    let batch = (0..n)
                        .map(|k| {
                            Event::new(Actor::User(format!("writer-{t}")), "test.burst")
                                .target(format!("item-{i}-{k}"))
                                .details(serde_json::json!({"thread": t, "i": i, "k": k}))
                        })
                        .collect();
                    let done = log.append_batch(batch).map_err(|e| e.to_string())?;
                    if let Some(last) = done.last() {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "acked {}", last.seq).map_err(|e| e.to_string())?;
                        out.flush().map_err(|e| e.to_string())?;
                    }
                    i += 1;
                }
            }));
        }
        for h in handles {
            h.join().map_err(|_| "writer thread panicked")??;
        }
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("audit-writer: {e}");
        std::process::exit(2);
    }
}
