//! The deployed units (deploy/): drivesecd under the capabilities its
//! systemd unit grants binds the Modbus port its sample configuration names
//! (and nothing less would); the renewal timer runs commands the tool
//! takes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Reap, run_env};
use drivesec_lab::up::LabOptions;

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
        assert!(drivesec_lab::daemons::stop(child.0.id()));
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
    let m = drivesec_lab::up::up(&LabOptions::new(tmp.path().join("lab")), &mut |_| {}).unwrap();
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

/// The daily renewal unit (deploy/drivesec-renew.service, .timer) runs
/// commands the tool takes: each, run as written with its paths moved to an
/// empty directory, fails on the missing inventory or CA by name, not on
/// its arguments (a renamed or dropped flag would be a usage error).
#[test]
fn the_renewal_timer_runs_commands_the_tool_takes() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let unit = std::fs::read_to_string(deploy.join("drivesec-renew.service")).unwrap();
    let timer = std::fs::read_to_string(deploy.join("drivesec-renew.timer")).unwrap();
    assert!(timer.contains("OnCalendar=daily") && timer.contains("Persistent=true"));
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    let moved = |s: &str| {
        s.replace("/var/lib/drivesec-fleet", &root)
            .replace("/etc/drivesec", &root)
    };
    let env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), moved(v)))
        .collect();
    assert!(env.iter().any(|(k, _)| k == "DRIVESEC_FLEET_STORE"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut ran = vec![];
    for line in unit.lines().filter_map(|l| l.strip_prefix("ExecStart=")) {
        let mut words = line.trim_start_matches('-').split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/drivesec"), "{line}");
        let args: Vec<String> = words.map(moved).collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_env(&argv, &env, false);
        assert_eq!(o.code, 2, "{line}: {}", o.stderr);
        assert!(
            o.stderr.contains(&root) && !o.stderr.contains("Usage:"),
            "{line}: {}",
            o.stderr
        );
        ran.push(argv[1].to_string());
    }
    assert_eq!(ran, ["scan", "renew"]);
}
