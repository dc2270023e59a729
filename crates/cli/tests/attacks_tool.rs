//! Attacks on the tool's side (issue 15): a genuine IDevID of another
//! device must not receive a credential, a tampered device is named as
//! such, `lab down` never signals a PID that is no longer the lab's
//! daemon, PKCS#11 devices log no false errors, and the deployed unit's
//! capabilities let the daemon bind the Modbus port its sample
//! configuration names (and nothing less would).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{commission_args, config, drivesec, s, sa_cert_args, test_lab, test_lab_on};
use drivesec_oem::client::{DeviceClient, DeviceTrust, Versions};
use drivesec_oem::lab::{Backend, LabManifest, LabOptions};
use serde_json::Value;

/// Stops a process this test started, by PID, when dropped.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A factory-state device whose genuine IDevID is for serial SN-10 is
/// offered to `device commission --serial SN-1`: refused with both serials
/// named before the credential is sent (the device stays in factory state
/// and the same credential still works for the right serial). Without
/// `--serial` the command does not run at all.
#[test]
fn commission_refuses_a_relabelled_serial() {
    let tmp = tempfile::tempdir().unwrap();
    let m = drivesec_oem::lab::up(&LabOptions::new(tmp.path().join("lab")), &mut |_| {}).unwrap();
    let dev = tmp.path().join("sn10");
    let cred = tmp.path().join("sn10.credential");
    let (code, _, err) = drivesec(&[
        "factory",
        "provision",
        "--ca",
        s(&m.manufacturer_ca_dir),
        "--device-dir",
        s(&dev),
        "--serial",
        "SN-10",
        "--credential-out",
        s(&cred),
    ]);
    assert_eq!(code, 0, "{err}");
    let daemon = Path::new(env!("CARGO_BIN_EXE_drivesecd"));
    let started = drivesec_oem::daemons::start(daemon, &dev, &config()).unwrap();
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            drivesec_oem::daemons::stop(self.0);
        }
    }
    let _stop = Stop(started.pid);
    let pw = tmp.path().join("admin.pw");
    std::fs::write(&pw, "Setup-Passw0rd-Sec-1\n").unwrap();
    let sa = &m.clients["security-admin"];
    let api = started.addr.to_string();
    let commission = |serial: Option<&str>| {
        let mut args = vec![
            "--json",
            "device",
            "--api",
            &api,
            "--name",
            "press-10.plant.example",
        ];
        args.extend(sa_cert_args(&m));
        args.extend(commission_args(&m, &cred, &pw));
        if let Some(sn) = serial {
            args.extend(["--serial", sn]);
        }
        drivesec(&args)
    };

    let (code, _, err) = commission(None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--serial"), "{err}");

    let (code, out, err) = commission(Some("SN-1"));
    assert_eq!(code, 2, "commissioned under the wrong serial: {out}");
    assert!(
        err.contains("serial SN-10") && err.contains("expected serial SN-1"),
        "{err}"
    );
    // Nothing reached the device: still in factory state, the credential alive.
    let factory = DeviceClient::new(
        started.addr,
        Some(&drivesec_oem::client::ClientIdentity::from_files(&sa.cert, &sa.key).unwrap()),
        &DeviceTrust::Idevid {
            roots: drivesec_pki::read_cert_chain(&m.manufacturer_ca).unwrap(),
            serial: Some("SN-10".into()),
            revocation: drivesec_oem::client::Revocation::manufacturer_from_file(
                &m.manufacturer_crl,
            )
            .unwrap()
            .0,
        },
        Versions::Default,
    )
    .unwrap();
    assert_eq!(
        factory.ok("GET", "/api/v1/info", None).unwrap()["state"],
        "factory"
    );
    drop(factory);

    let (code, out, err) = commission(Some("SN-10"));
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["serial_number"], "SN-10");
}

/// A device whose tamper response has run serves a throwaway self-signed
/// `CN=TAMPERED <serial>` certificate; the CLI says so, names the device
/// and what to do, instead of "invalid peer certificate: UnknownIssuer".
#[test]
fn cli_names_a_tampered_device() {
    let lab = test_lab(Some(config()));
    let dev = lab.m.devices[0].clone();
    let lab_dir = s(&lab.dir).to_string();
    let (code, _, err) = drivesec(&["device", "--lab", &lab_dir, "info"]);
    assert_eq!(code, 0, "{err}");

    let tamper = dev.tamper.clone().unwrap();
    std::fs::create_dir_all(tamper.parent().unwrap()).unwrap();
    std::fs::write(&tamper, b"").unwrap();
    let marker = DeviceClient::new(
        lab.addr(),
        Some(&lab.identity("viewer")),
        &DeviceTrust::TamperedStatusRisky {
            serial: dev.serial_number.clone(),
        },
        Versions::Default,
    )
    .unwrap();
    common::wait_until("the tamper response", || {
        marker
            .ok("GET", "/api/v1/info", None)
            .is_ok_and(|v| v["tampered"] == true)
    });

    for args in [
        vec!["device", "--lab", &lab_dir, "info"],
        vec![
            "device", "--lab", &lab_dir, "--as", "viewer", "drive", "status",
        ],
    ] {
        let (code, _, err) = drivesec(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(
            err.contains("drive-001")
                && err.contains("tamper response has run")
                && err.contains(&format!("CN=TAMPERED {}", dev.serial_number))
                && err.contains("drivesec factory reprovision"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("UnknownIssuer"), "{err}");
    }
}

/// The daemon of a PKCS#11 device logs no ERROR line from cryptoki when it
/// opens its keystore (it used to log one per mechanism type cryptoki has
/// no name for: about 30 on SoftHSM2).
#[test]
fn pkcs11_device_logs_no_false_errors() {
    let lab = test_lab_on(Some(config()), Backend::Pkcs11);
    let dev = &lab.m.devices[0];
    // The daemon has opened its keystore (it serves with its LDevID key).
    lab.admin().ok("GET", "/api/v1/info", None).unwrap();
    let log = std::fs::read_to_string(dev.dir.join("drivesecd.log")).unwrap();
    let false_errors: Vec<&str> = log.lines().filter(|l| l.contains("cryptoki")).collect();
    assert!(
        false_errors.is_empty(),
        "{} cryptoki lines, e.g. {:?}",
        false_errors.len(),
        false_errors.first()
    );
}

/// `lab down` signals a recorded PID only while it is still the lab's
/// drivesecd: a PID reused by an unrelated process (here a `sleep`,
/// recorded the way `lab up` records a daemon, with or without the
/// daemon's start time) is reported and left alone; the lab's real
/// daemon is stopped.
#[test]
fn lab_down_does_not_kill_a_reused_pid() {
    let lab = test_lab(Some(config()));
    let real = lab.m.devices[0].pid.unwrap();
    assert!(lab.m.devices[0].pid_start_time.is_some());
    let sleep = Reap(Command::new("sleep").arg("30").spawn().unwrap());
    let other = Reap(Command::new("sleep").arg("30").spawn().unwrap());

    let path = lab.dir.join("lab.json");
    let mut m: LabManifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // The daemon of drive-901 ended and `sleep` got its PID: its start time
    // was recorded at launch and no longer matches.
    let mut reused = m.devices[0].clone();
    reused.name = "drive-901".into();
    reused.pid = Some(sleep.0.id());
    // A lab.json from before start times were recorded: the command line decides.
    let mut old = m.devices[0].clone();
    old.name = "drive-902".into();
    old.pid = Some(other.0.id());
    old.pid_start_time = None;
    m.devices.extend([reused, old]);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();

    let (code, out, err) = drivesec(&["--json", "lab", "down", "--dir", s(&lab.dir)]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["stopped"], 1, "{r}");
    let skipped: Vec<(String, u64)> = r["not_ours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["device"].as_str().unwrap().to_string(),
                n["pid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        skipped,
        [
            ("drive-901".to_string(), u64::from(sleep.0.id())),
            ("drive-902".to_string(), u64::from(other.0.id()))
        ],
        "{r}"
    );
    assert!(
        drivesec_oem::daemons::alive(sleep.0.id()),
        "lab down killed an unrelated process"
    );
    assert!(drivesec_oem::daemons::alive(other.0.id()));
    assert!(
        !drivesec_oem::daemons::alive(real),
        "the lab's daemon runs on"
    );
}

/// The capabilities a systemd unit file grants (`CapabilityBoundingSet=`,
/// `AmbientCapabilities=`), in setpriv's spelling: `net_bind_service`.
fn unit_caps(unit: &str, key: &str) -> Vec<String> {
    let mut caps = vec![];
    for l in unit.lines().filter_map(|l| l.trim().strip_prefix(key)) {
        let l = l.strip_prefix('=').unwrap_or_else(|| panic!("{key}{l}"));
        if l.trim().is_empty() {
            caps.clear(); // an empty assignment resets the list
        }
        for c in l.split_whitespace() {
            let c = c.to_ascii_lowercase();
            caps.push(c.strip_prefix("cap_").unwrap_or(&c).to_string());
        }
    }
    caps
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs drivesecd under `setpriv` with the given capabilities, as the
/// unprivileged user `uid`, in a fresh network namespace (its own loopback,
/// where port 802 is free and unprivileged ports start at the kernel
/// default 1024, whatever the host sets). Returns the exit status (when it
/// exited) and its stderr.
fn run_confined(
    state: &Path,
    conf: &Path,
    uid: u32,
    caps: &[String],
    bounding: &[String],
    no_new_privs: bool,
) -> (Option<std::process::ExitStatus>, String) {
    let set = |caps: &[String]| {
        std::iter::once("-all".to_string())
            .chain(caps.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",")
    };
    let err = state.join("stderr.log");
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--", "setpriv"])
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(format!("--inh-caps={}", set(caps)))
        .arg(format!("--ambient-caps={}", set(caps)))
        .arg(format!("--bounding-set={}", set(bounding)));
    if no_new_privs {
        cmd.arg("--no-new-privs");
    }
    let child = cmd
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--state")
        .arg(state)
        .arg("--config")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // unshare and setpriv exec: the child's PID is the daemon's.
    let mut child = Reap(child);
    let addr = state.join("modbus.addr");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break Some(st);
        }
        if addr.exists() && state.join("api.addr").exists() {
            break None;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "drivesecd neither started nor failed: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.is_none() {
        assert!(drivesec_oem::daemons::stop(child.0.id()));
    }
    (status, std::fs::read_to_string(&err).unwrap_or_default())
}

/// deploy/drivesecd.service runs drivesecd as an unprivileged user with
/// only the capabilities its Capability lines grant; deploy/drivesecd.toml
/// has Modbus on port 802. The daemon, started under exactly those limits
/// (setpriv, no systemd) on a lab-provisioned state directory the user
/// owns, binds the API and Modbus on port 802; with no capability it
/// fails with an error naming the Modbus address.
#[test]
fn deploy_unit_can_bind_modbus_port_under_its_capabilities() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let unit = std::fs::read_to_string(deploy.join("drivesecd.service")).unwrap();
    let ambient = unit_caps(&unit, "AmbientCapabilities");
    let bounding = unit_caps(&unit, "CapabilityBoundingSet");
    let no_new_privs = unit.lines().any(|l| l.trim() == "NoNewPrivileges=yes");
    assert!(
        unit.lines().any(|l| l.trim() == "User=drivesec"),
        "the unit runs as root?"
    );
    for c in &ambient {
        assert!(bounding.contains(c), "ambient {c} outside the bounding set");
    }
    let sample = std::fs::read_to_string(deploy.join("drivesecd.toml")).unwrap();
    let mut conf: toml::Table = toml::from_str(&sample).unwrap();
    let modbus_listen: std::net::SocketAddr =
        conf["modbus"]["listen"].as_str().unwrap().parse().unwrap();
    assert_eq!(conf["modbus"]["enabled"].as_bool(), Some(true));

    // Root is needed to change user and capabilities (CI runs as root).
    let euid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap();
    if euid != "0" {
        eprintln!("skipped: needs root to run drivesecd as another user (euid {euid})");
        return;
    }
    for tool in ["setpriv", "unshare"] {
        if !have(tool) {
            eprintln!("skipped: `{tool}` is not installed (util-linux)");
            return;
        }
    }
    if !Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: cannot create a network namespace here");
        return;
    }

    // A lab-provisioned device, copied to a directory the user owns.
    let tmp = tempfile::tempdir().unwrap();
    let m = drivesec_oem::lab::up(&LabOptions::new(tmp.path().join("lab")), &mut |_| {}).unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let state = run.join("state");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&m.devices[0].dir)
        .arg(&state)
        .status()
        .unwrap();
    assert!(cp.success());
    // The listeners on loopback (in the namespace); Modbus on the sample's port.
    conf.insert("listen".into(), "127.0.0.1:0".into());
    let mut modbus = conf["modbus"].as_table().cloned().unwrap();
    let want: std::net::SocketAddr = format!("127.0.0.1:{}", modbus_listen.port())
        .parse()
        .unwrap();
    modbus.insert("listen".into(), want.to_string().into());
    conf.insert("modbus".into(), modbus.into());
    let conf_path = run.join("drivesecd.toml");
    std::fs::write(&conf_path, toml::to_string(&conf).unwrap()).unwrap();
    let uid = 65534u32; // nobody: no rights of its own anywhere
    let owned = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}")])
        .arg(&run)
        .status()
        .unwrap();
    assert!(owned.success());
    let mut p = PathBuf::from(tmp.path());
    loop {
        // Let the user reach its directory (only traverse).
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o001)).unwrap();
        }
        if !p.pop() || p.as_os_str() == "/" {
            break;
        }
    }

    let (status, err) = run_confined(&state, &conf_path, uid, &ambient, &bounding, no_new_privs);
    assert!(status.is_none(), "drivesecd exited ({status:?}): {err}");
    let bound: std::net::SocketAddr = std::fs::read_to_string(state.join("modbus.addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(bound, want);
    assert!(
        want.port() < 1024,
        "the sample needs no capability any more"
    );

    // Without the capability the same start fails, naming the address.
    for f in ["modbus.addr", "api.addr"] {
        let _ = std::fs::remove_file(state.join(f));
    }
    let (status, err) = run_confined(&state, &conf_path, uid, &[], &[], no_new_privs);
    let status = status.expect("drivesecd bound port 802 without CAP_NET_BIND_SERVICE");
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("bind Modbus {want}")) && err.contains("ermission denied"),
        "{err}"
    );
}
