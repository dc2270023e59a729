//! Modbus/TCP Security benchmarks, each beside its reference in one run:
//!
//! 1. Read-holding-registers (FC 03, 2 registers) requests per second over
//!    TLS with the role check, against the same drivesecd over plain
//!    Modbus/TCP (goal: at least 0.8x), 8 sessions each.
//! 2. The same against pymodbus's own TLS server (pymodbus_server.py) on
//!    this machine, with a certificate from the same OEM CA and client
//!    certificates required (goal: at least 10x).
//! 3. p50/p99 request latency with 64 concurrent TLS sessions.
//!
//! drivesecd is the release-profile binary of this workspace, started by
//! the lab with one device (soft keystore). The load generator
//! (`drivesec_oem::modbus::load`) runs in this process: one thread per
//! session, requests back to back, on the same 2-core machine as the
//! servers. `DRIVESEC_BENCH_SECONDS` sets the time per figure (default 3).
//! Prints one JSON object per figure.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use drivesec_oem::client::{ClientIdentity, DeviceTrust, Versions};
use drivesec_oem::lab::{self, LabOptions};
use drivesec_oem::modbus::{LoadResult, ModbusClient, load};

fn read2(c: &mut ModbusClient) -> drivesec_oem::Result<bool> {
    Ok(c.read_holding(0, 2)?.is_ok_and(|r| r.len() == 2))
}

fn run(
    n: usize,
    secs: f64,
    connect: &(dyn Fn() -> drivesec_oem::Result<ModbusClient> + Sync),
) -> LoadResult {
    let r = load(n, Duration::from_secs_f64(secs), connect, &read2).unwrap();
    assert_eq!(r.failures, 0, "{r:?}");
    r
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
        let _ = lab::down(&self.0);
    }
}

fn main() {
    let secs: f64 = std::env::var("DRIVESEC_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let mut cfg = drivesec_device::config::DeviceConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.modbus.insecure_plain_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.modbus.insecure_plain_role = Some("viewer".into());
    let m = lab::up(
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
    let trust = DeviceTrust::Ldevid {
        roots: roots.clone(),
        device_name: d.device_name.clone().unwrap(),
    };
    let tls = || ModbusClient::connect(tls_addr, Some(&id), &trust, Versions::Default);
    let plain = || ModbusClient::connect_plain_risky(plain_addr);

    // Warm up both paths.
    run(2, 0.5, &tls);
    run(2, 0.5, &plain);
    // The server's own CPU per request as well: the load generator shares
    // the 2 cores and pays for its side of TLS too.
    let pid = d.pid.unwrap();
    let c0 = cpu_secs(pid);
    let t = run(8, secs, &tls);
    let c1 = cpu_secs(pid);
    let p = run(8, secs, &plain);
    let c2 = cpu_secs(pid);
    let tls_cpu_us = (c1 - c0) * 1e6 / t.requests as f64;
    let plain_cpu_us = (c2 - c1) * 1e6 / p.requests as f64;
    println!(
        "{}",
        serde_json::json!({"bench": "modbus-tls-vs-plain", "connections": 8,
            "tls_per_sec": t.per_sec, "plain_per_sec": p.per_sec, "ratio": t.per_sec / p.per_sec,
            "tls_p50_us": t.p50_us, "tls_p99_us": t.p99_us, "plain_p99_us": p.p99_us,
            "tls_server_cpu_us": tls_cpu_us, "plain_server_cpu_us": plain_cpu_us,
            "server_capacity_ratio": plain_cpu_us / tls_cpu_us})
    );

    // pymodbus's TLS server with a certificate from the same OEM CA.
    let (chain, key) = m
        .issue_server(&["pymodbus.bench"], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    let (cert_p, key_p) = (tmp.path().join("py.crt"), tmp.path().join("py.key"));
    std::fs::write(&cert_p, chain).unwrap();
    std::fs::write(&key_p, key.as_bytes()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
    let py_trust = DeviceTrust::Ldevid {
        roots,
        device_name: "pymodbus.bench".into(),
    };
    let pyc = || ModbusClient::connect(py_addr, Some(&id), &py_trust, Versions::Default);
    run(2, 0.5, &pyc);
    let y0 = cpu_secs(py.id());
    let y = run(8, secs, &pyc);
    let py_cpu_us = (cpu_secs(py.id()) - y0) * 1e6 / y.requests as f64;
    let _ = py.kill();
    let _ = py.wait();
    let pyver = Command::new("python3")
        .args(["-c", "import pymodbus; print(pymodbus.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({"bench": "modbus-tls-vs-pymodbus", "connections": 8, "pymodbus": pyver,
            "drivesecd_per_sec": t.per_sec, "pymodbus_per_sec": y.per_sec, "ratio": t.per_sec / y.per_sec,
            "drivesecd_p99_us": t.p99_us, "pymodbus_p99_us": y.p99_us,
            "drivesecd_server_cpu_us": tls_cpu_us, "pymodbus_server_cpu_us": py_cpu_us,
            "server_capacity_ratio": py_cpu_us / tls_cpu_us})
    );

    // Latency with 64 concurrent sessions.
    let l = run(64, secs, &tls);
    println!(
        "{}",
        serde_json::json!({"bench": "modbus-latency-64", "connections": 64,
            "per_sec": l.per_sec, "p50_us": l.p50_us, "p99_us": l.p99_us})
    );
}
