//! Device runtime benchmarks, each beside its reference in one run:
//!
//! 1. Full mutual-TLS 1.3 handshakes per second against drivesecd and
//!    against nginx, both with a P-256 server certificate from the same OEM
//!    CA and client-certificate verification against the same root; every
//!    handshake is a new TCP connection without resumption. drivesecd signs
//!    through its soft keystore (its key never leaves it); nginx reads its
//!    key from a file. Both get two CPU-bound workers; the client runs 4
//!    threads on the same 2-core machine.
//! 2. Idle resident memory of drivesecd (VmRSS, after start-up and
//!    commissioning) beside nginx's master + worker processes.
//! 3. Login latency at the configured Argon2id cost (default: 19 MiB, 2
//!    passes) beside the bare Argon2id hash with the same parameters.
//!
//! `DRIVESEC_BENCH_SECONDS` sets the time per handshake figure (default 3).
//! Prints one JSON object per figure.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drivesec_client::client::{ClientIdentity, DeviceClient, Versions};
use drivesec_lab::up::LabOptions;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn client_config(cert: &Path, key: &Path, root: &Path) -> Arc<rustls::ClientConfig> {
    let chain = drivesec_pki::read_cert_chain(cert).unwrap();
    let block = pem::parse(std::fs::read(key).unwrap()).unwrap();
    let key = PrivateKeyDer::Pkcs8(block.into_contents().into());
    let mut roots = rustls::RootCertStore::empty();
    for r in drivesec_pki::read_cert_chain(root).unwrap() {
        roots.add(r).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    Arc::new(cfg)
}

/// Full handshakes per second: connect, complete TLS 1.3 including the
/// server's verdict on our certificate (one round trip of application data),
/// close.
fn handshakes(addr: SocketAddr, name: &str, cfg: Arc<rustls::ClientConfig>, secs: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let cfg = cfg.clone();
            let name = ServerName::try_from(name.to_string()).unwrap();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let mut sock = TcpStream::connect(addr).unwrap();
                    sock.set_nodelay(true).unwrap();
                    let mut conn =
                        rustls::ClientConnection::new(cfg.clone(), name.clone()).unwrap();
                    while conn.is_handshaking() {
                        conn.complete_io(&mut sock).unwrap();
                    }
                    // TLS 1.3: the server judges the client certificate after the
                    // client's Finished; one request-response proves acceptance.
                    let mut s = rustls::Stream::new(&mut conn, &mut sock);
                    use std::io::{Read, Write};
                    s.write_all(
                        b"GET /api/v1/info HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n",
                    )
                    .unwrap();
                    let mut buf = [0u8; 12];
                    s.read_exact(&mut buf).unwrap();
                    assert!(
                        buf.starts_with(b"HTTP/1.1 200"),
                        "{}",
                        String::from_utf8_lossy(&buf)
                    );
                    n += 1;
                }
                n
            })
        })
        .collect();
    let n: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    n as f64 / start.elapsed().as_secs_f64()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let secs: f64 = std::env::var("DRIVESEC_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    // `DRIVESEC_BENCH_NETWORK_THREADS=2` measures drivesecd with a second
    // event-loop thread (docs/benchmarks.md).
    let device_config = common::network_threads().map(|n| {
        let mut c = drivesec_state::config::DeviceConfig::new("127.0.0.1:0".parse().unwrap());
        c.runtime.network_threads = n;
        c
    });
    let m = drivesec_lab::up::up(
        &LabOptions {
            daemon: Some(PathBuf::from(env!("CARGO_BIN_EXE_drivesecd"))),
            device_config,
            ..LabOptions::new(dir.clone())
        },
        &mut |_| {},
    )
    .unwrap();
    struct Down(PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = drivesec_lab::up::down(&self.0);
        }
    }
    let _down = Down(dir.clone());
    let dev = &m.devices[0];
    let addr: SocketAddr = dev
        .api
        .as_ref()
        .unwrap()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let viewer = &m.clients["viewer"];
    let cfg = client_config(&viewer.cert, &viewer.key, &m.oem_ca);

    // nginx with a P-256 server certificate from the same OEM CA.
    let (chain, key) = m.issue_server(&["nginx.lab.drivesec"], &[]).unwrap();
    let ng = tmp.path().join("nginx");
    std::fs::create_dir_all(ng.join("logs")).unwrap();
    std::fs::write(ng.join("server.crt"), chain).unwrap();
    std::fs::write(ng.join("server.key"), key.as_bytes()).unwrap();
    let port = drivesec_testkit::net::free_port();
    let conf = format!(
        "worker_processes 2;\nerror_log {d}/logs/error.log;\npid {d}/nginx.pid;\ndaemon off;\nevents {{ worker_connections 1024; }}\nhttp {{\n access_log off;\n server {{\n  listen 127.0.0.1:{port} ssl;\n  ssl_certificate {d}/server.crt;\n  ssl_certificate_key {d}/server.key;\n  ssl_protocols TLSv1.3;\n  ssl_verify_client on;\n  ssl_verify_depth 2;\n  ssl_client_certificate {root};\n  ssl_session_tickets off;\n  ssl_session_cache off;\n  location / {{ return 200 '{{}}'; }}\n }}\n}}\n",
        d = ng.display(),
        root = m.oem_ca.display()
    );
    std::fs::write(ng.join("nginx.conf"), conf).unwrap();
    let mut nginx = Command::new("nginx")
        .args([
            "-c",
            ng.join("nginx.conf").to_str().unwrap(),
            "-p",
            ng.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is installed by scripts/bench");
    let ng_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..200 {
        if TcpStream::connect(ng_addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }

    // 2. Idle memory first, before any load.
    std::thread::sleep(Duration::from_millis(500));
    let d_rss = rss_kib(dev.pid.unwrap());
    let ng_pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains(ng.to_str().unwrap()) || c.starts_with("nginx: worker"))
        })
        .collect();
    let ng_rss: u64 = ng_pids.iter().map(|p| rss_kib(*p)).sum();
    println!(
        "{{\"bench\":\"idle-rss\",\"drivesecd_mib\":{:.1},\"nginx_mib\":{:.1},\"nginx_processes\":{}}}",
        d_rss as f64 / 1024.0,
        ng_rss as f64 / 1024.0,
        ng_pids.len()
    );

    // 1. Handshakes.
    let ours = handshakes(addr, dev.device_name.as_deref().unwrap(), cfg.clone(), secs);
    let theirs = handshakes(ng_addr, "nginx.lab.drivesec", cfg, secs);
    println!(
        "{{\"bench\":\"mtls-handshakes\",\"drivesecd_per_sec\":{ours:.1},\"nginx_per_sec\":{theirs:.1},\"ratio\":{:.2}}}",
        ours / theirs
    );
    // Graceful stop, so its workers go too.
    let _ = Command::new("kill")
        .arg("-QUIT")
        .arg(nginx.id().to_string())
        .status();
    let _ = nginx.wait();

    // 3. Login latency at the configured cost, beside the bare hash.
    let id = ClientIdentity::from_files(&viewer.cert, &viewer.key).unwrap();
    let trust = m.device_trust(dev).unwrap();
    let user = &m.users["viewer"];
    let mut lat = Vec::new();
    for _ in 0..20 {
        let mut c = DeviceClient::new(addr, Some(&id), &trust, Versions::Default).unwrap();
        let t = Instant::now();
        c.login(&user.username, &user.password).unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        c.ok("POST", "/api/v1/logout", None).unwrap();
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = drivesec_access::HashParams::default();
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, None).unwrap(),
    );
    let mut hash = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let mut out = [0u8; 32];
        argon
            .hash_password_into(b"Some-Passw0rd-2026", b"saltsaltsaltsalt", &mut out)
            .unwrap();
        hash.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    hash.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{{\"bench\":\"login-latency\",\"argon2_memory_kib\":{},\"argon2_iterations\":{},\"login_median_ms\":{:.1},\"login_p95_ms\":{:.1},\"bare_hash_median_ms\":{:.1},\"ratio\":{:.2}}}",
        p.memory_kib,
        p.iterations,
        lat[lat.len() / 2],
        lat[lat.len() * 95 / 100],
        hash[hash.len() / 2],
        lat[lat.len() / 2] / hash[hash.len() / 2]
    );
    let _ = CertificateDer::from(Vec::new());
}
