//! Power-fail safety of the update and boot paths, proven by enumeration:
//! count the storage operations of a full update + confirm (and of an
//! update that is never confirmed and reverts), then for every k crash
//! before operation k, reboot to completion and check the invariants:
//! a valid image boots, it is the old or the new one as the protocol says,
//! the security counter never decreases, and never are both slots
//! unbootable. Plus chains of up to five random crashes in a row. Each also
//! with a power cut that loses the page cache (unsynced data and directory
//! changes).
//! `DRIVESEC_LONG_TESTS` uses a larger image (more crash points) and more
//! random chains.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::h;
use drivesec_firmware::image::PackOptions;
use drivesec_firmware::slots::{BootDecision, Slots};
use drivesec_firmware::storage::{CrashStorage, DirStorage, Storage};
use drivesec_firmware::trust::TrustStore;
use drivesec_keystore::{KeyHandle, KeyStore};

struct Fx {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    ks: Arc<dyn KeyStore>,
    trust: TrustStore,
    v1: Vec<u8>,
    v2: Vec<u8>,
    v3: Vec<u8>,
}

fn long() -> bool {
    std::env::var_os("DRIVESEC_LONG_TESTS").is_some()
}

impl Fx {
    fn new() -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let ks = common::keystore(&root, &["root", "vendor", "oem", "fw"]);
        let trust = common::vendor_oem_trust(ks.as_ref());
        let chunks = if long() { 24 } else { 4 };
        let fw = [common::pk(ks.as_ref(), "fw")];
        let make = |name: &str, counter: u64| -> Vec<u8> {
            let plain = root.join(format!("{name}.bin"));
            std::fs::write(&plain, vec![counter as u8; 4096 * chunks - 100]).unwrap();
            let opts = PackOptions {
                product: "iC7-Sim".into(),
                hw_class: "ctrl-a".into(),
                version: format!("{counter}.0.0"),
                security_counter: counter,
                chunk_size: 4096,
                sbom: None,
                build_time: "2026-11-28T00:00:00Z".into(),
            };
            std::fs::read(common::release(
                ks.as_ref(),
                &plain,
                &root,
                name,
                &opts,
                &fw,
            ))
            .unwrap()
        };
        let (v1, v2, v3) = (make("v1", 1), make("v2", 2), make("v3", 3));
        Fx {
            _tmp: tmp,
            root,
            ks,
            trust,
            v1,
            v2,
            v3,
        }
    }

    fn slots<'a>(&'a self, st: &'a dyn Storage, key: &'a KeyHandle) -> Slots<'a> {
        Slots::new(st, &self.trust, "iC7-Sim", "ctrl-a", self.ks.as_ref(), key)
    }

    /// A device dir with v1 installed and confirmed.
    fn device(&self, name: &str) -> std::path::PathBuf {
        let dir = self.root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let st = DirStorage::new(&dir).unwrap();
        let key = h("fw");
        self.slots(&st, &key)
            .install_initial(&mut self.v1.as_slice())
            .unwrap();
        dir
    }
}

/// Reboots until a confirmed image runs; a trial is confirmed only when
/// `healthy` says so. Checks the invariants on the way; returns (version, counter).
fn recover(fx: &Fx, dir: &Path, healthy: impl Fn(&str) -> bool, min_counter: u64) -> (String, u64) {
    let st = DirStorage::new(dir).unwrap();
    let key = h("fw");
    for _ in 0..10 {
        let mut s = fx.slots(&st, &key);
        let before = s.state().unwrap().counter;
        assert!(
            before >= min_counter,
            "security counter decreased: {before} < {min_counter}"
        );
        match s
            .boot()
            .unwrap_or_else(|e| panic!("both slots unbootable: {e}"))
        {
            BootDecision::Confirmed { version, .. } => {
                let c = s.state().unwrap().counter;
                assert!(c >= before);
                return (version, c);
            }
            BootDecision::Trial { version, .. } => {
                if healthy(&version) {
                    let after = s.confirm().unwrap().counter;
                    assert!(after >= before);
                }
            }
        }
    }
    panic!("the device never settled on a confirmed image");
}

fn update_and_confirm(fx: &Fx, st: &dyn Storage) -> Result<(), String> {
    let key = h("fw");
    let mut s = fx.slots(st, &key);
    s.stage(&mut fx.v2.as_slice()).map_err(|e| e.to_string())?;
    match s.boot().map_err(|e| e.to_string())? {
        BootDecision::Trial { .. } => {
            s.confirm().map_err(|e| e.to_string())?;
            Ok(())
        }
        other => Err(format!("expected a trial, got {other:?}")),
    }
}

#[test]
fn every_crash_point_of_an_update_and_confirm() {
    let fx = Fx::new();
    // Count the operations, and where the update becomes pending.
    let dir = fx.device("count");
    let counting = CrashStorage::new(DirStorage::new(&dir).unwrap(), None);
    {
        let key = h("fw");
        let s = fx.slots(&counting, &key);
        s.stage(&mut fx.v2.as_slice()).unwrap();
    }
    let staged = counting.ops();
    update_and_confirm_rest(&fx, &counting);
    let total = counting.ops();
    println!("update + confirm: {total} crash points (stage ends at {staged})");
    assert!(total > 10);
    for k in 1..=total {
        let dir = fx.device(&format!("k{k}"));
        let crashing = CrashStorage::new(DirStorage::new(&dir).unwrap(), Some(k));
        let r = update_and_confirm(&fx, &crashing);
        assert!(
            r.is_err() && crashing.crashed(),
            "k={k}: the run did not crash: {r:?}"
        );
        let (version, counter) = recover(&fx, &dir, |_| true, 1);
        // The pending record is renamed into place by the stage's last-but-one operation.
        let expect = if k < staged {
            ("1.0.0", 1)
        } else {
            ("2.0.0", 2)
        };
        assert_eq!(
            (version.as_str(), counter),
            expect,
            "crash before operation {k}"
        );
    }
}

fn update_and_confirm_rest(fx: &Fx, st: &dyn Storage) {
    let key = h("fw");
    let mut s = fx.slots(st, &key);
    assert!(matches!(s.boot().unwrap(), BootDecision::Trial { .. }));
    s.confirm().unwrap();
}

/// An update that boots but never passes its health check.
fn update_and_fail_health(fx: &Fx, st: &dyn Storage) -> Result<(), String> {
    let key = h("fw");
    let s = fx.slots(st, &key);
    s.stage(&mut fx.v3.as_slice()).map_err(|e| e.to_string())?;
    for _ in 0..6 {
        let mut s = fx.slots(st, &key);
        if let BootDecision::Confirmed { .. } = s.boot().map_err(|e| e.to_string())? {
            return Ok(());
        }
    }
    Err("never reverted".into())
}

#[test]
fn every_crash_point_of_an_update_that_reverts() {
    let fx = Fx::new();
    let dir = fx.device("count");
    let counting = CrashStorage::new(DirStorage::new(&dir).unwrap(), None);
    update_and_fail_health(&fx, &counting).unwrap();
    let total = counting.ops();
    println!("update + revert: {total} crash points");
    let st = DirStorage::new(&dir).unwrap();
    let key = h("fw");
    let state = fx.slots(&st, &key).state().unwrap();
    assert_eq!(
        state.counter, 1,
        "an unconfirmed image never advances the counter"
    );
    assert!(
        state
            .last_revert
            .as_deref()
            .unwrap()
            .contains("attempts exhausted"),
        "{state:?}"
    );
    for k in 1..=total {
        let dir = fx.device(&format!("k{k}"));
        let crashing = CrashStorage::new(DirStorage::new(&dir).unwrap(), Some(k));
        assert!(update_and_fail_health(&fx, &crashing).is_err());
        let (version, counter) = recover(&fx, &dir, |v| v != "3.0.0", 1);
        assert_eq!(
            (version.as_str(), counter),
            ("1.0.0", 1),
            "crash before operation {k}"
        );
    }
}

/// The same enumeration when the power cut also loses the page cache: data
/// not fsynced and directory changes not followed by a directory fsync are
/// gone. The update then counts only from the stage's final directory
/// fsync; before it, the device boots the old image.
#[test]
fn every_crash_point_losing_the_page_cache() {
    let fx = Fx::new();
    let dir = fx.device("count");
    let counting = CrashStorage::new(DirStorage::new(&dir).unwrap(), None);
    {
        let key = h("fw");
        let s = fx.slots(&counting, &key);
        s.stage(&mut fx.v2.as_slice()).unwrap();
    }
    let staged = counting.ops();
    update_and_confirm_rest(&fx, &counting);
    let total = counting.ops();
    for k in 1..=total {
        let dir = fx.device(&format!("k{k}"));
        let crashing =
            CrashStorage::losing_page_cache(DirStorage::new(&dir).unwrap(), Some(k)).unwrap();
        let r = update_and_confirm(&fx, &crashing);
        assert!(r.is_err() && crashing.crashed(), "k={k}: {r:?}");
        let (version, counter) = recover(&fx, &dir, |_| true, 1);
        let expect = if k <= staged {
            ("1.0.0", 1)
        } else {
            ("2.0.0", 2)
        };
        assert_eq!(
            (version.as_str(), counter),
            expect,
            "crash before operation {k}, page cache lost"
        );
    }
    // And an update that never passes its health check: always the old image.
    let dir = fx.device("count-revert");
    let counting = CrashStorage::new(DirStorage::new(&dir).unwrap(), None);
    update_and_fail_health(&fx, &counting).unwrap();
    for k in 1..=counting.ops() {
        let dir = fx.device(&format!("r{k}"));
        let crashing =
            CrashStorage::losing_page_cache(DirStorage::new(&dir).unwrap(), Some(k)).unwrap();
        assert!(update_and_fail_health(&fx, &crashing).is_err());
        let (version, counter) = recover(&fx, &dir, |v| v != "3.0.0", 1);
        assert_eq!(
            (version.as_str(), counter),
            ("1.0.0", 1),
            "crash before operation {k}, page cache lost"
        );
    }
}

#[test]
fn chains_of_random_crashes() {
    let fx = Fx::new();
    let rounds = if long() { 200 } else { 25 };
    let mut rng = drivesec_testkit::Rng::new(0x1234_5678_9ABC_DEF1);
    let mut rnd = |n: u64| rng.below(n as usize) as u64;
    for round in 0..rounds {
        let dir = fx.device(&format!("r{round}"));
        // Up to five crashes in a row: during the update, then during recovery.
        let crashes = 1 + rnd(5);
        for c in 0..crashes {
            let at = Some(1 + rnd(30));
            // Every other round also loses the page cache at each crash.
            let crashing = if round % 2 == 0 {
                CrashStorage::new(DirStorage::new(&dir).unwrap(), at)
            } else {
                CrashStorage::losing_page_cache(DirStorage::new(&dir).unwrap(), at).unwrap()
            };
            if c == 0 {
                let _ = update_and_confirm(&fx, &crashing);
            } else {
                let key = h("fw");
                let mut s = fx.slots(&crashing, &key);
                if let Ok(BootDecision::Trial { .. }) = s.boot() {
                    let _ = s.confirm();
                }
            }
        }
        let (version, counter) = recover(&fx, &dir, |_| true, 1);
        assert!(
            (version == "1.0.0" && counter == 1) || (version == "2.0.0" && counter == 2),
            "round {round}: {version} with counter {counter}"
        );
    }
}

#[test]
fn a_refused_update_changes_nothing_and_rollback_is_refused_after_confirm() {
    let fx = Fx::new();
    let dir = fx.device("d");
    let st = DirStorage::new(&dir).unwrap();
    let key = h("fw");
    let before = std::fs::read(dir.join("boot.json")).unwrap();
    let mut broken = fx.v2.clone();
    let n = broken.len();
    broken[n - 10] ^= 1;
    let s = fx.slots(&st, &key);
    assert!(matches!(
        s.stage(&mut broken.as_slice()),
        Err(drivesec_firmware::FirmwareError::BadChunk(_))
    ));
    assert_eq!(
        std::fs::read(dir.join("boot.json")).unwrap(),
        before,
        "state unchanged"
    );
    assert!(
        !dir.join("slot-b.img").exists() && !dir.join("slot-b.img.tmp").exists(),
        "nothing unverified lands in a slot"
    );
    // Update to v2 and confirm; v1 is then refused as a rollback.
    update_and_confirm(&fx, &st).unwrap();
    let s = fx.slots(&st, &key);
    assert!(matches!(
        s.stage(&mut fx.v1.as_slice()),
        Err(drivesec_firmware::FirmwareError::Rollback { .. })
    ));
    assert_eq!(s.state().unwrap().counter, 2);
}
