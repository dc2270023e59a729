//! A lab of real drivesecd processes on loopback, started, commissioned
//! and populated by `drivesec lab`, and what the tests do with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drivesec_client::client::{ClientIdentity, DeviceClient, DeviceTrust, Versions};
use drivesec_lab::LabManifest;
use drivesec_lab::up::LabOptions;
use drivesec_state::config::DeviceConfig;

use super::pki::issue_client_identity;

pub struct TestLab {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub m: LabManifest,
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = drivesec_lab::up::down(&self.dir);
    }
}

pub fn test_lab(config: Option<DeviceConfig>) -> TestLab {
    test_lab_on(config, drivesec_lab::up::Backend::Soft)
}

/// A lab of `devices` running drives (soft keystores).
pub fn test_lab_n(config: Option<DeviceConfig>, devices: usize) -> TestLab {
    lab_with(config, |o| o.devices = devices)
}

/// A lab whose devices keep their keys on SoftHSM2 tokens (under `$SOFTHSM2_CONF`).
pub fn test_lab_on(config: Option<DeviceConfig>, keystore: drivesec_lab::up::Backend) -> TestLab {
    lab_with(config, |o| o.keystore = keystore)
}

/// A lab of this test's drivesecd, with `adjust` applied to the options.
fn lab_with(config: Option<DeviceConfig>, adjust: impl FnOnce(&mut LabOptions)) -> TestLab {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let mut opts = LabOptions {
        daemon: Some(drivesecd()),
        device_config: config,
        ..LabOptions::new(dir.clone())
    };
    adjust(&mut opts);
    let m = drivesec_lab::up::up(&opts, &mut |_| {}).unwrap();
    TestLab { _tmp: tmp, dir, m }
}

/// The drivesecd binary this test build made.
pub fn drivesecd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_drivesecd"))
}

pub fn config() -> DeviceConfig {
    DeviceConfig::new("127.0.0.1:0".parse().unwrap())
}

/// A device whose factory reset the lab's two fresh security
/// administrators may approve at once (the approver-age rule has its own
/// test, `reset::one_administrator_cannot_factory_reset_alone_and_the_trail_survives`).
pub fn fresh_lab_may_reset() -> DeviceConfig {
    let mut c = config();
    c.api.factory_reset_approver_min_age_secs = 0;
    c
}

/// A lab's PKI and clients (no device running) in a new temporary
/// directory.
pub fn pki_lab() -> (tempfile::TempDir, LabManifest) {
    let t = tempfile::tempdir().unwrap();
    let m = drivesec_lab::up::up(&LabOptions::new(t.path().join("lab")), &mut |_| {}).unwrap();
    (t, m)
}

/// A copy of the lab's manifest in `dir` with the first device's API at
/// `api`, and `extra` more devices like it at the given addresses: the
/// lab's commands then reach `api` as that device.
pub fn lab_pointing_at(
    m: &LabManifest,
    dir: &Path,
    api: SocketAddr,
    extra: &[(&str, SocketAddr)],
) -> PathBuf {
    let mut m = m.clone();
    m.devices[0].api = Some(format!("https://{api}"));
    m.devices[0].pid = None;
    for (name, addr) in extra {
        let mut d = m.devices[0].clone();
        d.name = name.to_string();
        d.api = Some(format!("https://{addr}"));
        m.devices.push(d);
    }
    std::fs::create_dir_all(dir).unwrap();
    // Private, as `lab up` writes it (it holds the lab's passwords).
    drivesec_fsutil::write_atomic(
        &dir.join("lab.json"),
        &serde_json::to_vec_pretty(&m).unwrap(),
        drivesec_fsutil::Mode::Private,
    )
    .unwrap();
    dir.to_path_buf()
}

/// The example plant (examples/packaging-line.toml).
pub fn example_plan() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/packaging-line.toml")
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

    /// A client of the first device with `id`, not logged in.
    pub fn client_with(&self, id: &ClientIdentity) -> DeviceClient {
        DeviceClient::new(self.addr(), Some(id), &self.trust(), Versions::Default).unwrap()
    }

    /// A client with `role`'s certificate, not logged in.
    pub fn client(&self, role: &str) -> DeviceClient {
        self.client_with(&self.identity(role))
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
        let (id, _) = issue_client_identity(&mut oem, d.path(), Some(role), None);
        self.client_with(&id)
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
    pub fn modbus(&self, role: &str) -> drivesec_client::modbus::ModbusClient {
        drivesec_client::modbus::ModbusClient::connect(
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
        let l = drivesec_iec62443::model::load(&example_plan()).unwrap();
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
        let (cfg, name) = drivesec_client::client::tls_config(
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

    /// Waits until the first device's trail counts at least `events` events
    /// (`drivesec_audit::events_counted`) in the records `pick` selects.
    /// What an attacker repeats is recorded aggregated (docs/audit.md,
    /// "Floods"): all but the first event of a ten-second window are
    /// counted only in the summary written once the window closes, so a
    /// test of a flood waits for that summary here (up to 30 s) before it
    /// reads the trail. The trail is read on disk, so waiting records
    /// nothing (no logins, no audit reads).
    pub fn wait_for_counted(
        &self,
        what: &str,
        events: u64,
        pick: impl Fn(&drivesec_audit::reader::StoredRecord) -> bool,
    ) {
        let trail = self.device_dir().join("audit");
        let q = drivesec_audit::reader::Query::default();
        drivesec_testkit::wait_until_every(
            &format!("the trail to count {events} {what}"),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                // A record being appended may not read yet: try again.
                drivesec_audit::reader::read(&trail, &q, usize::MAX).is_ok_and(|recs| {
                    let counted: u64 = recs
                        .iter()
                        .filter(|r| pick(r))
                        .map(|r| drivesec_audit::events_counted(&r.record.details))
                        .sum();
                    counted >= events
                })
            },
        );
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
        let again = drivesec_lab::daemons::start(&drivesecd(), &dev.dir, &cfg).unwrap();
        drivesec_lab::daemons::stop(again.pid);
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
    pub fn inventory(&self) -> drivesec_ops::inventory::Inventory {
        self.m
            .inventory(&self.dir, &|n| Some(n.to_string()))
            .unwrap()
    }

    /// The lab's devices as an inventory file in `dir` (what a plant would
    /// keep).
    pub fn inventory_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("inventory.toml");
        super::tool::write_inventory(&path, &self.inventory());
        path
    }

    /// Records a (re)started daemon in the manifest and `lab.json`, so the
    /// clients reach it and `lab down` stops it.
    pub fn started(&mut self, s: drivesec_lab::daemons::Started) {
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

    /// Stops the daemon the manifest records for the device, if it still
    /// runs as the process the lab started (same start time: a reused PID
    /// is left alone), and waits until it is gone (its lock released).
    fn stop_recorded(&mut self) {
        let d = &mut self.m.devices[0];
        let Some(pid) = d.pid.take() else {
            return;
        };
        let started = d.pid_start_time;
        let same = |pid| {
            drivesec_lab::daemons::alive(pid)
                && started.is_none_or(|t| drivesec_lab::daemons::start_time(pid) == Some(t))
        };
        if same(pid) {
            drivesec_lab::daemons::stop(pid);
            wait_until("the old daemon to end", || !same(pid));
        }
    }

    /// Stops the lab device's daemon (without checking its trail).
    pub fn stop_device(&mut self) {
        let pid = self.m.devices[0].pid.take().unwrap();
        assert!(drivesec_lab::daemons::stop(pid));
    }

    /// Stops the device's daemon, checks that its audit trail verifies
    /// against the IDevID, and returns the trail's records.
    pub fn stop_and_read_trail(&mut self) -> Vec<drivesec_audit::reader::StoredRecord> {
        let dev = self.m.devices[0].clone();
        assert!(drivesec_lab::daemons::stop(dev.pid.unwrap()));
        self.m.devices[0].pid = None;
        let chain = drivesec_pki::read_cert_chain(&dev.idevid).unwrap();
        let key = drivesec_pki::inspect::public_key(&chain[0]).unwrap();
        let report = drivesec_audit::verify::verify(&dev.dir.join("audit"), &key).unwrap();
        assert!(report.ok, "trail: {:#?}", report.problems);
        super::records::trail_records(&dev.dir.join("audit"))
    }

    /// Starts the device's daemon again from its state directory and
    /// `drivesecd.toml`; the daemon's complaint if it does not start.
    pub fn start_again(&mut self) -> Result<(), String> {
        // One daemon per state directory (it holds the directory's lock):
        // a daemon the manifest still records is stopped first.
        self.stop_recorded();
        let dir = self.device_dir();
        let cfg = DeviceConfig::load(&dir.join("drivesecd.toml")).map_err(|e| e.to_string())?;
        let s =
            drivesec_lab::daemons::start(&drivesecd(), &dir, &cfg).map_err(|e| e.to_string())?;
        self.started(s);
        Ok(())
    }

    /// `PUT /api/v1/security/crl` with `body` as the first security
    /// administrator (logged out after): the reply, whatever its status.
    pub fn put_crl(&self, body: &str) -> drivesec_client::client::Reply {
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
                revocation: drivesec_client::client::Revocation::manufacturer_from_file(
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

/// Stops the lab's daemon, verifies its trail against the IDevID and starts it
/// again from the same state directory: the attack left the state intact.
pub fn state_survives(lab: &TestLab) {
    let dev = &lab.m.devices[0];
    assert!(drivesec_lab::daemons::stop(dev.pid.unwrap()));
    let report = lab.verify_trail(&dev.dir.join("audit"));
    assert!(report.ok, "trail: {:#?}", report.problems);
    lab.restarts();
}

/// A lab whose device runs in factory state: the PKI, the clients and the
/// device's state directory are made, and its drivesecd started, but it is
/// not commissioned. `lab down` (on drop) stops it.
pub fn factory_lab(config: Option<DeviceConfig>) -> TestLab {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let m = drivesec_lab::up::up(&LabOptions::new(dir.clone()), &mut |_| {}).unwrap();
    let mut lab = TestLab { _tmp: tmp, dir, m };
    let mut cfg = config.unwrap_or_else(self::config);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.modbus.listen = "127.0.0.1:0".parse().unwrap();
    let device_dir = lab.device_dir();
    lab.started(drivesec_lab::daemons::start(&drivesecd(), &device_dir, &cfg).unwrap());
    lab
}

/// Stops a daemon the lab manifest does not know about (by PID) when
/// dropped.
pub struct Daemon(pub u32);

impl Drop for Daemon {
    fn drop(&mut self) {
        drivesec_lab::daemons::stop(self.0);
    }
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

/// A soft keystore the lab made in `dir` (`keystore/`, its secret in
/// `secret`): the firmware vendor's, the OEM's, the evidence signer's.
pub fn lab_keystore(dir: &Path) -> std::sync::Arc<dyn drivesec_keystore::KeyStore> {
    drivesec_keystore::open_keystore(
        &drivesec_keystore::KeystoreConfig::Soft {
            dir: "keystore".into(),
            secret_file: "secret".into(),
        },
        dir,
    )
    .unwrap()
}

/// What signs the trail of the device in the state directory `dir`: its
/// keystore and IDevID key, as drivesecd opens them.
pub fn device_signer(dir: &Path) -> drivesec_audit::Signer {
    let file = drivesec_factory::DeviceFile::load(dir).unwrap();
    drivesec_audit::Signer {
        store: drivesec_keystore::open_keystore(&file.keystore, dir).unwrap(),
        handle: file.idevid_key.clone(),
    }
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

/// The lab OEM's evidence-signing public key (PEM): it signs validation
/// evidence and bundles (not the firmware approval key).
pub fn evidence_public_key(lab: &TestLab) -> PathBuf {
    lab.m.evidence.as_ref().unwrap().public_key.clone()
}

/// Polls `f` every 20 ms until it holds; panics naming `what` after 30 s.
pub fn wait_until(what: &str, f: impl FnMut() -> bool) {
    drivesec_testkit::wait_until(what, Duration::from_secs(30), f);
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
