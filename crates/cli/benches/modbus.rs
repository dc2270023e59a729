//! Modbus/TCP Security benchmarks, each beside its reference in one run:
//!
//! 1. Read-holding-registers (FC 03, 2 registers) requests per second over
//!    TLS with the role check, against the same drivesecd over plain
//!    Modbus/TCP (goal: at least 0.8x), 8 sessions each.
//! 2. The same against pymodbus's own TLS server (pymodbus_server.py) on
//!    this machine, with a certificate from the same OEM CA and client
//!    certificates required (goal: at least 10x).
//! 3. p50/p99 request latency with 64 concurrent TLS sessions, on
//!    drivesecd and on pymodbus.
//!
//! drivesecd is the release-profile binary of this workspace, started by
//! the lab with one device (soft keystore). The load generator
//! (`drivesec_client::modbus::load`) runs in this process on one thread: N
//! closed-loop sessions multiplexed on one event loop, each sending its
//! next request when the answer came, on the same 2-core machine as the
//! servers. The three targets are measured in interleaved rounds
//! (`DRIVESEC_BENCH_ROUNDS`, default 5) sharing `DRIVESEC_BENCH_SECONDS`
//! per target (default 3), and reported as medians over the rounds, so a
//! change in the shared machine's speed cannot favour one of them.
//! Prints one JSON object per figure.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{median, median_spread};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use drivesec_client::client::{ClientIdentity, DeviceTrust};
use drivesec_client::modbus::load::{self, LoadResult, Step, Target};
use drivesec_lab::up::LabOptions;

/// FC 03, 2 holding registers from 0, back to back on `n` sessions.
fn run(n: usize, secs: f64, target: &Target<'_>) -> LoadResult {
    let steps = [Step::read(3, 0, 2)];
    let r = load::run(target, n, Duration::from_secs_f64(secs), &steps).unwrap();
    assert_eq!(r.failures, 0, "{r:?}");
    r
}

/// One run and the CPU each side spent per answered request.
struct Figures {
    result: LoadResult,
    /// The server process, µs per request.
    server_us: f64,
    /// This process (the load generator), µs per request.
    client_us: f64,
}

fn measure(n: usize, secs: f64, target: &Target<'_>, server: u32) -> Figures {
    let me = std::process::id();
    let (s0, c0) = (cpu_secs(server), cpu_secs(me));
    let result = run(n, secs, target);
    let per = |d: f64| d * 1e6 / result.requests as f64;
    Figures {
        server_us: per(cpu_secs(server) - s0),
        client_us: per(cpu_secs(me) - c0),
        result,
    }
}

/// utime + stime of a process, seconds (clock ticks of 1/100 s).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// Stops the lab's daemons however the benchmark ends.
struct LabGuard(PathBuf);
impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = drivesec_lab::up::down(&self.0);
    }
}

fn main() {
    let secs: f64 = std::env::var("DRIVESEC_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rounds: usize = std::env::var("DRIVESEC_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let mut cfg = drivesec_state::config::DeviceConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.modbus.insecure_plain_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.modbus.insecure_plain_role = Some("viewer".into());
    // The load generator's 64 sessions share one certificate (and, plain,
    // one address); a plant's controller needs a handful (default 32).
    cfg.modbus.max_connections_per_certificate = 64;
    // `DRIVESEC_BENCH_NETWORK_THREADS=2` reproduces the comparison with a
    // second event-loop thread (docs/benchmarks.md).
    if let Some(n) = common::network_threads() {
        cfg.runtime.network_threads = n;
    }
    let cfg_threads = cfg.runtime.network_threads;
    let m = drivesec_lab::up::up(
        &LabOptions {
            daemon: Some(PathBuf::from(env!("CARGO_BIN_EXE_drivesecd"))),
            device_config: Some(cfg),
            devices: 1,
            ..LabOptions::new(dir.clone())
        },
        &mut |_| {},
    )
    .unwrap();
    let _guard = LabGuard(dir.clone());

    let d = &m.devices[0];
    let tls_addr: SocketAddr = d.modbus.as_ref().unwrap().parse().unwrap();
    let plain_addr: SocketAddr = std::fs::read_to_string(d.dir.join("modbus-plain.addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let viewer = &m.clients["viewer"];
    let id = ClientIdentity::from_files(&viewer.cert, &viewer.key).unwrap();
    let roots = drivesec_pki::read_cert_chain(&m.oem_ca).unwrap();
    let trust = m.device_trust(d).unwrap();
    let ids = [id];
    let tls = Target::Tls {
        addr: tls_addr,
        identities: &ids,
        trust: &trust,
    };
    let plain = Target::PlainRisky(plain_addr);

    // pymodbus's TLS server with a certificate from the same OEM CA.
    let (chain, key) = m
        .issue_stand_in_device(
            "BENCH-PYMODBUS",
            "pymodbus.bench",
            &["127.0.0.1".parse().unwrap()],
        )
        .unwrap();
    let (cert_p, key_p) = (tmp.path().join("py.crt"), tmp.path().join("py.key"));
    std::fs::write(&cert_p, chain).unwrap();
    std::fs::write(&key_p, key.as_bytes()).unwrap();
    let port = drivesec_testkit::net::free_port();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/pymodbus_server.py");
    let mut py = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .arg(&cert_p)
        .arg(&key_p)
        .arg(&m.oem_ca)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with pymodbus");
    let py_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(py_addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "pymodbus server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let py_trust = DeviceTrust::owned(
        roots,
        "pymodbus.bench",
        Some("BENCH-PYMODBUS".into()),
        drivesec_client::client::Revocation::from_file(&m.crl)
            .unwrap()
            .0,
    );
    let pyc = Target::Tls {
        addr: py_addr,
        identities: &ids,
        trust: &py_trust,
    };

    // Warm up every path, then interleave short rounds of the three so a
    // change in the shared machine's speed hits all of them alike; report
    // medians over the rounds, and the spread of the per-round ratios.
    for t in [&tls, &plain, &pyc] {
        run(2, 0.5, t);
    }
    let pid = d.pid.unwrap();
    let per_round = secs / rounds as f64;
    let mut rows: Vec<[Figures; 3]> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        rows.push([
            measure(8, per_round, &tls, pid),
            measure(8, per_round, &plain, pid),
            measure(8, per_round, &pyc, py.id()),
        ]);
    }
    // Under load: 64 sessions on each server.
    let l = run(64, secs, &tls);
    let ly = run(64, secs, &pyc);
    let _ = py.kill();
    let _ = py.wait();
    let pyver = Command::new("python3")
        .args(["-c", "import pymodbus; print(pymodbus.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let col = |i: usize, f: fn(&Figures) -> f64| median(rows.iter().map(|r| f(&r[i])).collect());
    let ratios = |i: usize| {
        median_spread(
            rows.iter()
                .map(|r| r[0].result.per_sec / r[i].result.per_sec)
                .collect(),
        )
    };
    let rate = |f: &Figures| f.result.per_sec;
    let p50 = |f: &Figures| f.result.p50_us;
    let p99 = |f: &Figures| f.result.p99_us;
    let server = |f: &Figures| f.server_us;
    let client = |f: &Figures| f.client_us;
    let (r, lo, hi) = ratios(1);
    println!(
        "{}",
        serde_json::json!({"bench": "modbus-tls-vs-plain", "connections": 8,
            "network_threads": cfg_threads, "rounds": rounds, "seconds_per_round": per_round,
            "tls_per_sec": col(0, rate), "plain_per_sec": col(1, rate),
            "ratio": r, "ratio_min": lo, "ratio_max": hi,
            "tls_p50_us": col(0, p50), "tls_p99_us": col(0, p99), "plain_p99_us": col(1, p99),
            "tls_server_cpu_us": col(0, server), "plain_server_cpu_us": col(1, server),
            "tls_client_cpu_us": col(0, client), "plain_client_cpu_us": col(1, client),
            "server_capacity_ratio": col(1, server) / col(0, server)})
    );
    let (r, lo, hi) = ratios(2);
    println!(
        "{}",
        serde_json::json!({"bench": "modbus-tls-vs-pymodbus", "connections": 8, "pymodbus": pyver,
            "rounds": rounds,
            "drivesecd_per_sec": col(0, rate), "pymodbus_per_sec": col(2, rate),
            "ratio": r, "ratio_min": lo, "ratio_max": hi,
            "drivesecd_p99_us": col(0, p99), "pymodbus_p99_us": col(2, p99),
            "drivesecd_server_cpu_us": col(0, server), "pymodbus_server_cpu_us": col(2, server),
            "pymodbus_client_cpu_us": col(2, client),
            "server_capacity_ratio": col(2, server) / col(0, server)})
    );

    println!(
        "{}",
        serde_json::json!({"bench": "modbus-latency-64", "connections": 64,
            "per_sec": l.per_sec, "p50_us": l.p50_us, "p99_us": l.p99_us,
            "pymodbus_per_sec": ly.per_sec, "pymodbus_p50_us": ly.p50_us, "pymodbus_p99_us": ly.p99_us})
    );
}
