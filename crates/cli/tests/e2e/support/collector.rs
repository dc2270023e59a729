//! A real syslog collector for the device's forwarder.

use std::path::{Path, PathBuf};

use super::lab::TestLab;
use super::pki::issue_over_csr;
use super::tool::s;

/// A real syslog collector (rsyslog, RFC 5425 over mutual TLS) on loopback,
/// with a server certificate from the lab's OEM CA (whose serial the test
/// knows, to revoke it) and the OEM chain as its trust for device
/// certificates; stopped when dropped.
pub struct Collector {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Where it writes `received.log`.
    pub rx: PathBuf,
    /// Its certificate's serial.
    pub serial: String,
    dir: tempfile::TempDir,
}

/// The script that starts and stops rsyslog.
fn rsyslog_receiver() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rsyslog-receiver")
}

impl Collector {
    pub fn start(lab: &TestLab) -> Collector {
        let t = tempfile::tempdir().unwrap();
        let (issued, key) = issue_over_csr(
            &lab.m.oem_ca_dir,
            drivesec_pki::Profile::Server {
                dns_names: vec!["collector.lab".into()],
                ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                days: 30,
            },
            "collector",
        );
        std::fs::write(t.path().join("c.crt"), &issued.chain_pem).unwrap();
        std::fs::write(t.path().join("c.key"), key.serialize_pem()).unwrap();
        let port = drivesec_testkit::net::free_port();
        let rx = t.path().join("rx");
        std::fs::create_dir_all(&rx).unwrap();
        let c = Collector {
            port,
            rx,
            serial: issued.serial,
            dir: t,
        };
        c.run_rsyslog(lab);
        c
    }

    fn run_rsyslog(&self, lab: &TestLab) {
        let t = self.dir.path();
        let o = std::process::Command::new(rsyslog_receiver())
            .args([
                "start",
                "--dir",
                s(&self.rx),
                "--port",
                &self.port.to_string(),
            ])
            .args(["--ca", s(&lab.m.oem_ca_dir.join("chain.pem"))])
            .args(["--cert", s(&t.join("c.crt"))])
            .args(["--key", s(&t.join("c.key"))])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "rsyslog: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Stops rsyslog and starts it again on the same port: the device's
    /// forwarder must make a new connection (a new handshake).
    pub fn restart(&self, lab: &TestLab) {
        self.stop();
        self.run_rsyslog(lab);
    }

    /// The body of `PUT /api/v1/audit/forwarding` that points at it.
    pub fn forwarding(&self, lab: &TestLab) -> serde_json::Value {
        serde_json::json!({"collector": format!("127.0.0.1:{}", self.port), "server_name": "127.0.0.1",
            "ca_pem": std::fs::read_to_string(&lab.m.oem_ca).unwrap()})
    }

    /// Every message received, one per line.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.rx.join("received.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Stops it (also done on drop).
    pub fn stop(&self) {
        let _ = std::process::Command::new(rsyslog_receiver())
            .args(["stop", "--dir", s(&self.rx)])
            .output();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}
