//! Store operations per second with 100k devices, on SQLite (a file, WAL,
//! synchronous=FULL) and on PostgreSQL (`DRIVESEC_PG_URL`, a server with
//! fsync on). Prints one JSON object per engine.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Instant;

use drivesec_fleet::{DeviceRecord, FleetStore, open};

const N: usize = 100_000;

fn dev(i: usize) -> DeviceRecord {
    DeviceRecord {
        name: format!("drive-{i:06}"),
        serial: format!("DS{i:08}"),
        api: format!("10.{}.{}.{}:8443", i / 65536, (i / 256) % 256, i % 256),
        device_name: format!("drive-{i:06}.plant.example"),
        zone: format!("z{}", i / 10),
        firmware_version: "1.0.0".into(),
        ldevid_not_after: "2028-11-28T00:00:00Z".into(),
        tampered: false,
        campaign: None,
        boot_issue: String::new(),
    }
}

fn run(s: &mut dyn FleetStore) -> serde_json::Value {
    let all: Vec<DeviceRecord> = (0..N).map(dev).collect();
    let t = Instant::now();
    for chunk in all.chunks(1000) {
        s.upsert_devices(chunk).unwrap();
    }
    let import = N as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let reads = 20_000;
    for k in 0..reads {
        let i = (k * 7919) % N;
        assert!(s.device(&format!("drive-{i:06}")).unwrap().is_some());
    }
    let read = reads as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let writes = 1_000;
    for k in 0..writes {
        s.set_tampered(&format!("drive-{:06}", (k * 31) % N), k % 2 == 0)
            .unwrap();
    }
    let write = writes as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let campaigns = 20;
    for c in 0..campaigns {
        let id = format!("bench-{c}");
        s.create_campaign(&id, "1.1.0", "bench").unwrap();
        let names: Vec<String> = (0..500)
            .map(|i| format!("drive-{:06}", c * 500 + i))
            .collect();
        assert_eq!(s.claim(&id, 0, &names).unwrap().len(), 500);
    }
    let claim = (campaigns * 500) as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let listed = s.devices().unwrap().len();
    let list = t.elapsed().as_secs_f64();
    assert_eq!(listed, N);
    serde_json::json!({"bench": "fleet-store", "engine": s.engine(), "devices": N,
        "import_per_sec": import, "point_reads_per_sec": read, "single_updates_per_sec": write,
        "claims_per_sec": claim, "list_all_s": list})
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sqlite = open(&format!("sqlite:{}", tmp.path().join("fleet.db").display())).unwrap();
    println!("{}", run(sqlite.as_mut()));
    match std::env::var("DRIVESEC_PG_URL") {
        Ok(base) => {
            let db = format!("drivesec_bench_{}", std::process::id());
            let mut c = postgres::Client::connect(&base, postgres::NoTls).unwrap();
            c.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
            let url = format!("{}/{db}", &base[..base.rfind('/').unwrap()]);
            let mut pg = open(&url).unwrap();
            println!("{}", run(pg.as_mut()));
            drop(pg);
            let _ = c.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"));
        }
        Err(_) => eprintln!("DRIVESEC_PG_URL not set: PostgreSQL not measured"),
    }
}
