//! One suite, run against both engines: SQLite in a temporary file and a
//! real PostgreSQL server (scripts/test starts one on loopback and sets
//! DRIVESEC_PG_URL; each test gets a database of its own).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use drivesec_fleet::{DeviceRecord, DeviceState, ValidationRecord, open};

struct Engine {
    url: String,
    _tmp: Option<tempfile::TempDir>,
    drop_db: Option<(String, String)>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some((base, db)) = &self.drop_db
            && let Ok(mut c) = postgres::Client::connect(base, postgres::NoTls)
        {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

static N: AtomicUsize = AtomicUsize::new(0);

fn engines() -> Vec<Engine> {
    let tmp = tempfile::tempdir().unwrap();
    let sqlite = Engine {
        url: format!("sqlite:{}", tmp.path().join("fleet.db").display()),
        _tmp: Some(tmp),
        drop_db: None,
    };
    let base = std::env::var("DRIVESEC_PG_URL").expect(
        "DRIVESEC_PG_URL is not set: run the suite through scripts/test, which starts a PostgreSQL server",
    );
    let db = format!(
        "drivesec_t_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let mut c = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    c.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let url = match base.rfind('/') {
        Some(i) if base[..i].contains('@') || base[..i].ends_with(|c: char| c.is_ascii_digit()) => {
            format!("{}/{db}", &base[..i])
        }
        _ => format!("{base}/{db}"),
    };
    vec![
        sqlite,
        Engine {
            url,
            _tmp: None,
            drop_db: Some((base, db)),
        },
    ]
}

fn dev(name: &str) -> DeviceRecord {
    DeviceRecord {
        name: name.into(),
        serial: format!("SN-{name}"),
        api: "127.0.0.1:8443".into(),
        device_name: format!("{name}.example"),
        zone: "cell".into(),
        firmware_version: "1.0.0".into(),
        ldevid_not_after: "2028-11-28T00:00:00Z".into(),
        tampered: false,
        campaign: None,
        boot_issue: String::new(),
    }
}

#[test]
fn both_engines_migrate_once_and_refuse_bad_urls() {
    for e in engines() {
        let mut s = open(&e.url).unwrap();
        assert_eq!(s.migrate().unwrap(), 3, "{}", s.engine());
        assert_eq!(open(&e.url).unwrap().migrate().unwrap(), 3);
    }
    let err = open("mysql://x")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("not a store URL"), "{err}");
}

#[test]
fn devices_validations_and_campaigns() {
    for e in engines() {
        let mut s = open(&e.url).unwrap();
        let engine = s.engine();
        for n in ["d1", "d2", "d3"] {
            s.upsert_device(&dev(n)).unwrap();
        }
        let mut d2 = dev("d2");
        d2.firmware_version = "1.1.0".into();
        d2.boot_issue = "slot b failed verification".into();
        s.upsert_device(&d2).unwrap();
        let got = s.device("d2").unwrap().unwrap();
        assert_eq!(
            (got.firmware_version.as_str(), got.boot_issue.as_str()),
            ("1.1.0", "slot b failed verification"),
            "{engine}"
        );
        assert!(s.device("nope").unwrap().is_none());
        assert_eq!(s.devices().unwrap().len(), 3);
        s.set_tampered("d3", true).unwrap();
        assert!(s.device("d3").unwrap().unwrap().tampered);
        assert!(s.set_tampered("nope", true).is_err());
        for (passed, findings) in [(false, 4), (true, 0)] {
            s.record_validation(&ValidationRecord {
                device: "d1".into(),
                at: "2026-11-28T07:00:00Z".into(),
                passed,
                findings,
                evidence_sha: "ab".repeat(32),
                profile: format!("cell.toml sha256:{findings}"),
            })
            .unwrap();
        }
        let v = s.validations("d1").unwrap();
        assert_eq!(
            (v.len(), v[0].findings, v[1].passed, v[0].profile.as_str()),
            (2, 4, true, "cell.toml sha256:4"),
            "{engine}"
        );

        s.create_campaign("c1", "1.2.0", "alice").unwrap();
        assert!(
            s.create_campaign("c1", "1.2.0", "bob").is_err(),
            "{engine}: duplicate campaign"
        );
        let got = s.claim("c1", 0, &["d1".into()]).unwrap();
        assert_eq!(got, vec!["d1"]);
        let got = s.claim("c1", 1, &["d1".into(), "d2".into()]).unwrap();
        assert_eq!(got, vec!["d2"], "{engine}: d1 is already held");
        s.set_state("c1", "d1", DeviceState::Done, "1.2.0").unwrap();
        s.set_state("c1", "d2", DeviceState::Reverted, "health check failed")
            .unwrap();
        assert!(s.set_state("c1", "d3", DeviceState::Done, "").is_err());
        let cd = s.campaign_devices("c1").unwrap();
        assert_eq!(
            cd.iter()
                .map(|c| (c.device.as_str(), c.wave, c.state))
                .collect::<Vec<_>>(),
            vec![
                ("d1", 0, DeviceState::Done),
                ("d2", 1, DeviceState::Reverted)
            ]
        );
        // An upsert keeps the device's campaign.
        s.upsert_device(&dev("d1")).unwrap();
        assert_eq!(
            s.device("d1").unwrap().unwrap().campaign.as_deref(),
            Some("c1")
        );
        s.finish_campaign("c1", "halted").unwrap();
        assert!(
            s.devices().unwrap().iter().all(|d| d.campaign.is_none()),
            "{engine}"
        );
    }
}

/// Two operators start campaigns over the same devices at the same moment,
/// many times: every device lands in exactly one campaign.
#[test]
fn concurrent_campaigns_never_share_a_device() {
    for e in engines() {
        let mut s = open(&e.url).unwrap();
        let names: Vec<String> = (0..40).map(|i| format!("d{i:02}")).collect();
        for n in &names {
            s.upsert_device(&dev(n)).unwrap();
        }
        for round in 0..10 {
            let barrier = Arc::new(Barrier::new(2));
            let handles: Vec<_> = ["alice", "bob"]
                .into_iter()
                .map(|op| {
                    let (url, names, barrier) = (e.url.clone(), names.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let mut s = open(&url).unwrap();
                        let id = format!("{op}-{round}");
                        s.create_campaign(&id, "1.2.0", op).unwrap();
                        // Opposite orders, to provoke interleaving.
                        let mut order = names;
                        if op == "bob" {
                            order.reverse();
                        }
                        barrier.wait();
                        let mut got = vec![];
                        for chunk in order.chunks(5) {
                            got.extend(s.claim(&id, 0, chunk).unwrap());
                        }
                        (id, got)
                    })
                })
                .collect();
            let results: Vec<(String, Vec<String>)> =
                handles.into_iter().map(|h| h.join().unwrap()).collect();
            let mut all: Vec<&String> = results.iter().flat_map(|(_, g)| g).collect();
            all.sort();
            let before = all.len();
            all.dedup();
            assert_eq!(
                before,
                all.len(),
                "{}: a device in two campaigns",
                s.engine()
            );
            assert_eq!(all.len(), names.len(), "{}: a device in none", s.engine());
            for (id, got) in &results {
                let mut listed: Vec<String> = s
                    .campaign_devices(id)
                    .unwrap()
                    .into_iter()
                    .map(|c| c.device)
                    .collect();
                listed.sort();
                let mut g = got.clone();
                g.sort();
                assert_eq!(listed, g);
                s.finish_campaign(id, "done").unwrap();
            }
        }
    }
}

/// A store made by an older drivesec (schema 1) is brought to the current
/// schema on open, and its rows stay readable (new columns are empty).
#[test]
fn a_schema_1_store_is_migrated_in_place() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("old.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(drivesec_fleet::MIGRATIONS[0].1).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY);
             INSERT INTO schema_migrations (version) VALUES (1);
             INSERT INTO devices (name, serial, api, device_name, updated_at)
                 VALUES ('d1', 'SN1', '127.0.0.1:1', 'd1.lab', '2026-01-01T00:00:00Z');
             INSERT INTO validations (id, device, at, passed, findings, evidence_sha)
                 VALUES (1, 'd1', '2026-01-01T00:00:00Z', 1, 0, 'ab');",
        )
        .unwrap();
    }
    let url = format!("sqlite:{}", path.display());
    let mut s = open(&url).unwrap();
    assert_eq!(s.migrate().unwrap(), 3);
    let v = s.validations("d1").unwrap();
    assert_eq!((v.len(), v[0].profile.as_str()), (1, ""));
    let d1 = s.device("d1").unwrap().unwrap();
    assert_eq!((d1.serial.as_str(), d1.boot_issue.as_str()), ("SN1", ""));
}
