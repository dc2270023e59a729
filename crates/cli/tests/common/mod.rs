//! What the end-to-end test files share: a lab of real drivesecd processes
//! on loopback, started, commissioned and populated by `drivesec lab`.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use drivesec_device::config::DeviceConfig;
use drivesec_oem::client::{ClientIdentity, DeviceClient, DeviceTrust, Versions};
use drivesec_oem::lab::{self, LabManifest, LabOptions};

pub struct TestLab {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub m: LabManifest,
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = lab::down(&self.dir);
    }
}

pub fn test_lab(config: Option<DeviceConfig>) -> TestLab {
    test_lab_on(config, drivesec_oem::lab::Backend::Soft)
}

/// A lab of `devices` running drives (soft keystores).
pub fn test_lab_n(config: Option<DeviceConfig>, devices: usize) -> TestLab {
    lab_with(config, |o| o.devices = devices)
}

/// A lab whose devices keep their keys on SoftHSM2 tokens (under `$SOFTHSM2_CONF`).
pub fn test_lab_on(config: Option<DeviceConfig>, keystore: drivesec_oem::lab::Backend) -> TestLab {
    lab_with(config, |o| o.keystore = keystore)
}

/// A lab of this test's drivesecd, with `adjust` applied to the options.
fn lab_with(config: Option<DeviceConfig>, adjust: impl FnOnce(&mut LabOptions)) -> TestLab {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let mut opts = LabOptions {
        daemon: Some(PathBuf::from(env!("CARGO_BIN_EXE_drivesecd"))),
        device_config: config,
        ..LabOptions::new(dir.clone())
    };
    adjust(&mut opts);
    let m = lab::up(&opts, &mut |_| {}).unwrap();
    TestLab { _tmp: tmp, dir, m }
}

pub fn config() -> DeviceConfig {
    DeviceConfig::new("127.0.0.1:0".parse().unwrap())
}

impl TestLab {
    /// The lab's accounts as a profile lists them: one per built-in role,
    /// and the first security administrator.
    pub fn profile_accounts(&self) -> Vec<drivesec_iec62443::profile::Account> {
        use drivesec_iec62443::profile::Account;
        self.m
            .users
            .iter()
            .map(|(role, u)| Account {
                username: u.username.clone(),
                role: role.clone(),
            })
            .chain(std::iter::once(Account {
                username: self.m.admin.as_ref().unwrap().username.clone(),
                role: "security-admin".into(),
            }))
            .collect()
    }

    pub fn addr(&self) -> SocketAddr {
        self.m.devices[0]
            .api
            .as_ref()
            .unwrap()
            .trim_start_matches("https://")
            .parse()
            .unwrap()
    }

    pub fn trust(&self) -> DeviceTrust {
        self.m.device_trust(&self.m.devices[0]).unwrap()
    }

    pub fn identity(&self, role: &str) -> ClientIdentity {
        let f = &self.m.clients[role];
        ClientIdentity::from_files(&f.cert, &f.key).unwrap()
    }

    /// A client with `role`'s certificate, not logged in.
    pub fn client(&self, role: &str) -> DeviceClient {
        DeviceClient::new(
            self.addr(),
            Some(&self.identity(role)),
            &self.trust(),
            Versions::Default,
        )
        .unwrap()
    }

    /// Logged in as the role's account over the role's certificate.
    pub fn session(&self, role: &str) -> DeviceClient {
        let mut c = self.client(role);
        let u = &self.m.users[role];
        c.login(&u.username, &u.password).unwrap();
        c
    }

    pub fn admin(&self) -> DeviceClient {
        let mut c = self.client("security-admin");
        let a = self.m.admin.as_ref().unwrap();
        c.login(&a.username, &a.password).unwrap();
        c
    }

    /// A client over a client certificate the OEM CA issues now, with
    /// `role` in it; not logged in.
    pub fn client_with_new_certificate(&self, role: &str) -> DeviceClient {
        let d = tempfile::tempdir().unwrap();
        let mut oem = drivesec_pki::Ca::open(&self.m.oem_ca_dir).unwrap();
        let (cert, key, _) = issue_client_files(&mut oem, d.path(), Some(role), None);
        DeviceClient::new(
            self.addr(),
            Some(&ClientIdentity::from_files(&cert, &key).unwrap()),
            &self.trust(),
            Versions::Default,
        )
        .unwrap()
    }

    /// The lab's other security administrator (the `security-admin` role's
    /// account), logged in over a client certificate of its own, as a second
    /// person approving a factory reset must be.
    pub fn second_admin(&self) -> DeviceClient {
        let mut c = self.client_with_new_certificate("security-admin");
        let u = &self.m.users["security-admin"];
        c.login(&u.username, &u.password).unwrap();
        c
    }

    /// The first device's Modbus/TCP Security address.
    pub fn modbus_addr(&self) -> SocketAddr {
        self.m.devices[0].modbus.as_ref().unwrap().parse().unwrap()
    }

    /// A Modbus/TCP Security session with `role`'s certificate.
    pub fn modbus(&self, role: &str) -> drivesec_oem::modbus::ModbusClient {
        drivesec_oem::modbus::ModbusClient::connect(
            self.modbus_addr(),
            Some(&self.identity(role)),
            &self.trust(),
            Versions::Default,
        )
        .unwrap()
    }

    /// The cell's derived profile (examples/packaging-line.toml), kept
    /// applicable to the lab: its own accounts, no collector, the lab's
    /// LDevID lifetime.
    pub fn cell_profile(&self) -> drivesec_iec62443::profile::Profile {
        let l = drivesec_iec62443::model::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/packaging-line.toml"),
        )
        .unwrap();
        let a = drivesec_iec62443::assess::assess(&l.model);
        let z = a.zones.iter().find(|z| z.zone == "cell").unwrap();
        let mut p = drivesec_iec62443::profile::derive(&l.model, "cell", z.sl_t);
        p.audit_forwarding = false;
        p.ldevid_days = 730;
        p.accounts = self.profile_accounts();
        p
    }

    /// The fingerprint the device knows `role`'s client certificate by.
    pub fn fingerprint(&self, role: &str) -> String {
        let der = drivesec_pki::read_cert_chain(&self.m.clients[role].cert).unwrap();
        drivesec_pki::inspect::summarize(der[0].as_ref())
            .unwrap()
            .sha256_fingerprint
    }

    /// A mutual-TLS stream to the lab device as `identity`, for tests that
    /// need the HTTP bytes themselves (reads time out after 20 s).
    pub fn raw_tls(
        &self,
        identity: &ClientIdentity,
    ) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
        let (cfg, name) = drivesec_oem::client::tls_config(
            self.addr(),
            Some(identity),
            &self.trust(),
            Versions::Default,
        )
        .unwrap();
        let tls = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let tcp = std::net::TcpStream::connect(self.addr()).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        rustls::StreamOwned::new(tls, tcp)
    }

    /// The device's audit records of `action` (all of them for ""), read
    /// over the API by the auditor.
    pub fn audit_records(&self, action: &str) -> Vec<serde_json::Value> {
        let query = if action.is_empty() {
            "/api/v1/audit?limit=100000".to_string()
        } else {
            format!("/api/v1/audit?action={action}&limit=100000")
        };
        let r = self.session("auditor").ok("GET", &query, None).unwrap();
        r["records"].as_array().unwrap().clone()
    }

    /// Verifies the trail in `trail` (a device's `audit/`, or a kept one)
    /// against the first device's IDevID.
    pub fn verify_trail(&self, trail: &Path) -> drivesec_audit::verify::Report {
        let chain = drivesec_pki::read_cert_chain(&self.m.devices[0].idevid).unwrap();
        let key = drivesec_pki::inspect::public_key(&chain[0]).unwrap();
        drivesec_audit::verify::verify(trail, &key).unwrap()
    }

    /// Starts the first device's daemon again from its state directory
    /// (after it was stopped) and stops it: the directory is intact.
    pub fn restarts(&self) {
        let dev = &self.m.devices[0];
        let cfg = DeviceConfig::load(&dev.dir.join("drivesecd.toml")).unwrap();
        let daemon = Path::new(env!("CARGO_BIN_EXE_drivesecd"));
        let again = drivesec_oem::daemons::start(daemon, &dev.dir, &cfg).unwrap();
        drivesec_oem::daemons::stop(again.pid);
    }

    /// A factory reset over the API: the first security administrator asks,
    /// the other one (`second_admin`) approves. Returns the approval's
    /// answer (with the new factory credential).
    pub fn factory_reset(&self) -> serde_json::Value {
        let asked = self
            .admin()
            .ok(
                "POST",
                "/api/v1/factory-reset",
                Some(&serde_json::json!({"password": self.m.admin.as_ref().unwrap().password})),
            )
            .unwrap();
        self.second_admin()
            .ok(
                "POST",
                "/api/v1/factory-reset",
                Some(
                    &serde_json::json!({"password": self.m.users["security-admin"].password,
                    "approve": asked["request"]}),
                ),
            )
            .unwrap()
    }

    /// Installs the CRL file `crl` on the device as the security admin.
    pub fn install_crl(&self, crl: &std::path::Path) {
        self.admin()
            .ok(
                "PUT",
                "/api/v1/security/crl",
                Some(&serde_json::json!({"crl_pem": std::fs::read_to_string(crl).unwrap()})),
            )
            .unwrap();
    }

    pub fn device_dir(&self) -> PathBuf {
        self.m.devices[0].dir.clone()
    }

    /// The lab's inventory, each device's asset named as the device.
    pub fn inventory(&self) -> drivesec_oem::inventory::Inventory {
        drivesec_oem::inventory::Inventory::from_lab(&self.dir, &self.m, &|n| Some(n.to_string()))
            .unwrap()
    }
}

/// Polls `f` every 20 ms until it holds; panics naming `what` after 30 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(30) {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// Reads one HTTP response head from `s` (None if the connection ended first).
pub fn read_head<S: std::io::Read>(s: &mut S) -> Option<String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// A server config for a fake device on loopback presenting `chain`
/// and `key` (ring provider, safe protocol versions, no client auth).
pub fn fake_server_config(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> std::sync::Arc<rustls::ServerConfig> {
    std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    )
}

/// Listens on a loopback port and hands every connection, on a thread of
/// its own, to `serve`. Returns the address.
pub fn spawn_server(serve: impl Fn(std::net::TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = std::sync::Arc::new(serve);
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let serve = serve.clone();
            std::thread::spawn(move || serve(tcp));
        }
    });
    addr
}

/// Reads the body that `head` (a request head) declares with its
/// Content-Length, none if absent (None if the connection ended first).
pub fn read_body<S: std::io::Read>(s: &mut S, head: &str) -> Option<Vec<u8>> {
    let len: usize = head
        .to_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap_or(0))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

/// Writes a JSON response with `status` (e.g. "200 OK") and `body` to
/// `s` and flushes; false if that failed.
pub fn write_json<S: std::io::Write>(s: &mut S, status: &str, body: &serde_json::Value) -> bool {
    let b = body.to_string();
    let out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
        b.len()
    );
    s.write_all(out.as_bytes()).and_then(|_| s.flush()).is_ok()
}

/// Sends one HTTP/1.1 request on `s` and reads its response (head and
/// Content-Length body), leaving the connection open.
pub fn exchange<S: std::io::Read + std::io::Write>(s: &mut S, head: &str, body: &[u8]) -> String {
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s.flush().unwrap();
    let got = read_head(s).expect("closed mid-head");
    let len: usize = got
        .to_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).unwrap();
    got + &String::from_utf8_lossy(&rest)
}

/// A new P-256 key and a certificate request (PEM) over it with an empty
/// subject, as a device or an operator sends one: the CA's profile says
/// what the certificate holds.
pub fn key_and_csr() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key, csr)
}

/// A request for a certificate of `profile` over a new P-256 key, sent as
/// a CSR from `source`; and the key.
pub fn csr_request(
    profile: drivesec_pki::Profile,
    source: &str,
) -> (drivesec_pki::IssueRequest, rcgen::KeyPair) {
    let (key, pem) = key_and_csr();
    let req = drivesec_pki::IssueRequest {
        profile,
        key: drivesec_pki::SubjectKey::CsrPem {
            source: source.into(),
            pem,
        },
    };
    (req, key)
}

/// A certificate of `profile` (a server, a stand-in device's LDevID or
/// IDevID) that the CA in `ca_dir` issues now over a new P-256 key, sent as
/// a CSR from `source`: the CA's answer (chain PEM, serial) and the key.
pub fn issue_over_csr(
    ca_dir: &Path,
    profile: drivesec_pki::Profile,
    source: &str,
) -> (drivesec_pki::Issued, rcgen::KeyPair) {
    let (req, key) = csr_request(profile, source);
    let issued = drivesec_pki::Ca::open(ca_dir).unwrap().issue(&req).unwrap();
    (issued, key)
}

/// Issues a client certificate from `ca` (with `role` in the role extension,
/// or none) into `dir`; returns the chain and key files and the serial.
pub fn issue_client_files(
    ca: &mut drivesec_pki::Ca,
    dir: &std::path::Path,
    role: Option<&str>,
    validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
) -> (PathBuf, PathBuf, String) {
    let (req, key) = csr_request(
        drivesec_pki::Profile::Client {
            name: "x".into(),
            role: role.map(|r| drivesec_pki::Role::new(r).unwrap()),
            days: 30,
        },
        "test",
    );
    let issued = match validity {
        Some((nb, na)) => ca.dangerous_issue_with_validity(&req, nb, na).unwrap(),
        None => ca.issue(&req).unwrap(),
    };
    let (k, c) = (
        dir.join(format!("{}.key", issued.serial)),
        dir.join(format!("{}.crt", issued.serial)),
    );
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::write(&c, &issued.chain_pem).unwrap();
    (c, k, issued.serial)
}

/// A firmware release for the lab's devices: packed by the vendor and
/// approved by the OEM (`release-VERSION.packed`, `.img` in `dir`).
pub fn lab_release(
    lab: &TestLab,
    dir: &std::path::Path,
    version: &str,
    counter: u64,
    size: usize,
) -> PathBuf {
    lab.m.release(dir, version, counter, size, true).unwrap()
}

/// Runs `drivesec ARGS`: exit code, stdout, stderr.
pub fn drivesec(args: &[&str]) -> (i32, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_drivesec"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `drivesec fleet scan --store STORE ARGS` (`json`: `drivesec --json
/// fleet scan ...`): exit code, stdout, stderr.
pub fn fleet_scan(json: bool, store: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["fleet", "scan", "--store", store];
    if json {
        all.insert(0, "--json");
    }
    all.extend_from_slice(args);
    drivesec(&all)
}

/// A fleet store URL: an SQLite file in `dir`.
pub fn store_url(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("fleet.db").display())
}

/// Writes `inv` to `path` as TOML.
pub fn write_inventory(path: &Path, inv: &drivesec_oem::inventory::Inventory) {
    std::fs::write(path, toml::to_string(inv).unwrap()).unwrap();
}

/// A plan of one zone holding the lab's drive, whose SL-T the lab's
/// soft-keystore drive can reach (SI 2: TLS 1.3 only; RA 0: the owner
/// accepted the missing backup, SR 7.3).
pub const ONE_ZONE_PLAN: &str = r#"
[system]
name = "Validation bench"

[[assets]]
id = "drive"
kind = "drive"
component = "drivesecd"
device = "drive-001"

[[zones]]
id = "line"
members = ["drive"]
sl_t = [1, 1, 2, 1, 1, 1, 0]
"#;

/// `drivesec --json fleet renew` of every device of `lab`, due by a margin
/// beyond their expiry: each gets a new LDevID for a year.
pub fn renew_every_ldevid(lab: &TestLab) -> (i32, String, String) {
    drivesec(&[
        "--json",
        "fleet",
        "renew",
        "--lab",
        s(&lab.dir),
        "--margin-days",
        "1000",
        "--days",
        "365",
    ])
}

/// `--cert` and `--key` of the lab's security administrator, for
/// `drivesec device --api`.
pub fn sa_cert_args(m: &LabManifest) -> [&str; 4] {
    let sa = &m.clients["security-admin"];
    ["--cert", s(&sa.cert), "--key", s(&sa.key)]
}

/// `commission` and its arguments for `drivesec device`: the lab's
/// manufacturer root and OEM CA, the factory credential in `credential`,
/// and the new administrator `admin` with the password in `password`.
pub fn commission_args<'a>(
    m: &'a LabManifest,
    credential: &'a Path,
    password: &'a Path,
) -> Vec<&'a str> {
    vec![
        "commission",
        "--manufacturer-root",
        s(&m.manufacturer_ca),
        "--oem-ca",
        s(&m.oem_ca_dir),
        "--credential-file",
        s(credential),
        "--admin",
        "admin",
        "--admin-password-file",
        s(password),
    ]
}

/// A path as a command-line argument.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// The lab OEM's approval key (PEM): it signs approvals and evidence.
pub fn oem_public_key(lab: &TestLab) -> PathBuf {
    lab.m
        .firmware
        .as_ref()
        .unwrap()
        .oem_keystore
        .join("approval.pub")
}

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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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

/// A process's resident memory, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

/// A lab whose device runs in factory state: the PKI, the clients and the
/// device's state directory are made, and its drivesecd started, but it is
/// not commissioned. `lab down` (on drop) stops it.
pub fn factory_lab(config: Option<DeviceConfig>) -> TestLab {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let m = lab::up(&LabOptions::new(dir.clone()), &mut |_| {}).unwrap();
    let mut lab = TestLab { _tmp: tmp, dir, m };
    let mut cfg = config.unwrap_or_else(self::config);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.modbus.listen = "127.0.0.1:0".parse().unwrap();
    let device_dir = lab.device_dir();
    lab.started(
        drivesec_oem::daemons::start(
            Path::new(env!("CARGO_BIN_EXE_drivesecd")),
            &device_dir,
            &cfg,
        )
        .unwrap(),
    );
    lab
}

/// A self-signed client certificate and its key, written into `dir`.
pub fn self_signed_identity(dir: &Path, name: &str) -> ClientIdentity {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    let cert = p.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    ClientIdentity::from_files(&c, &k).unwrap()
}

impl TestLab {
    /// Records a (re)started daemon in the manifest and `lab.json`, so the
    /// clients reach it and `lab down` stops it.
    pub fn started(&mut self, s: drivesec_oem::daemons::Started) {
        let d = &mut self.m.devices[0];
        d.pid = Some(s.pid);
        d.pid_start_time = s.start_time;
        d.api = Some(format!("https://{}", s.addr));
        d.modbus = s.modbus.map(|m| m.to_string());
        std::fs::write(
            self.dir.join("lab.json"),
            serde_json::to_vec_pretty(&self.m).unwrap(),
        )
        .unwrap();
    }

    /// Stops the device's daemon, checks that its audit trail verifies
    /// against the IDevID, and returns the trail's records.
    pub fn stop_and_read_trail(&mut self) -> Vec<drivesec_audit::reader::StoredRecord> {
        let dev = self.m.devices[0].clone();
        assert!(drivesec_oem::daemons::stop(dev.pid.unwrap()));
        self.m.devices[0].pid = None;
        let chain = drivesec_pki::read_cert_chain(&dev.idevid).unwrap();
        let key = drivesec_pki::inspect::public_key(&chain[0]).unwrap();
        let report = drivesec_audit::verify::verify(&dev.dir.join("audit"), &key).unwrap();
        assert!(report.ok, "trail: {:#?}", report.problems);
        drivesec_audit::reader::read(
            &dev.dir.join("audit"),
            &drivesec_audit::reader::Query::default(),
            usize::MAX,
        )
        .unwrap()
    }

    /// Starts the device's daemon again from its state directory and
    /// `drivesecd.toml`; the daemon's complaint if it does not start.
    pub fn start_again(&mut self) -> Result<(), String> {
        let dir = self.device_dir();
        let cfg = DeviceConfig::load(&dir.join("drivesecd.toml")).map_err(|e| e.to_string())?;
        let s =
            drivesec_oem::daemons::start(Path::new(env!("CARGO_BIN_EXE_drivesecd")), &dir, &cfg)
                .map_err(|e| e.to_string())?;
        self.started(s);
        Ok(())
    }

    /// `PUT /api/v1/security/crl` with `body` as the first security
    /// administrator (logged out after): the reply, whatever its status.
    pub fn put_crl(&self, body: &str) -> drivesec_oem::client::Reply {
        let admin = self.admin();
        let r = admin
            .call(
                "PUT",
                "/api/v1/security/crl",
                Some(&serde_json::json!({ "crl_pem": body })),
            )
            .unwrap();
        let _ = admin.call("POST", "/api/v1/logout", None);
        r
    }

    /// A client of the factory-state device with `identity`, checking the
    /// IDevID against the manufacturer root and the device's serial.
    pub fn factory_client(&self, identity: &ClientIdentity) -> DeviceClient {
        DeviceClient::new(
            self.addr(),
            Some(identity),
            &DeviceTrust::Idevid {
                roots: drivesec_pki::read_cert_chain(&self.m.manufacturer_ca).unwrap(),
                serial: Some(self.m.devices[0].serial_number.clone()),
                revocation: drivesec_oem::client::Revocation::manufacturer_from_file(
                    &self.m.manufacturer_crl,
                )
                .unwrap()
                .0,
            },
            Versions::Default,
        )
        .unwrap()
    }

    /// The device's one-time factory credential.
    pub fn factory_credential(&self) -> String {
        std::fs::read_to_string(&self.m.devices[0].factory_credential)
            .unwrap()
            .trim()
            .to_string()
    }
}

/// The lab OEM's evidence-signing public key (PEM): it signs validation
/// evidence and bundles (not the firmware approval key).
pub fn evidence_public_key(lab: &TestLab) -> PathBuf {
    lab.m.evidence.as_ref().unwrap().public_key.clone()
}
