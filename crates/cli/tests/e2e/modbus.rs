//! Modbus/TCP Security end to end, against real drivesecd processes on
//! loopback: pymodbus (a third-party client) with the lab's role
//! certificates, the role x function-code x register-range matrix, the rights
//! table API, refusals aggregated in the trail, malformed frames, loss of the
//! controlling connection, plain Modbus/TCP counted in the posture, STO
//! holding against random commands from every role and against a flood, and
//! load.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    TestLab, config, counted_in, issue_client_files, rss_kib, test_lab, trail_records, wait_until,
};
use drivesec_client::client::{ClientIdentity, Versions};
use drivesec_client::modbus::{ModbusClient, load};
use drivesec_modbus::frame::fc;
use drivesec_testkit::Rng;
use serde_json::{Value, json};

/// While the operator's Modbus session runs the drive, an authorised role
/// floods the Modbus port with requests over several sessions. The local
/// STO input still stops the drive, and when the operator's session goes
/// silent the comm-loss reaction still stops it: no network load delays
/// the drive's own reactions.
#[test]
fn modbus_flood_does_not_hold_off_sto_or_the_comm_loss_reaction() {
    let mut cfg = config();
    cfg.modbus.comm_loss_timeout_ms = 300;
    let lab = test_lab(Some(cfg));
    let dev = lab.m.devices[0].clone();
    let connect = |role: &str| lab.modbus(role);
    let state = |c: &mut ModbusClient| c.read_input(0, 7).unwrap().unwrap();
    let wait = |c: &mut ModbusClient, what: &str, f: &dyn Fn(&[u16]) -> bool| {
        wait_until(&format!("the drive {what}"), || f(&state(c)));
    };
    // The flood: four viewer sessions reading as fast as they can.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let mut c = connect("viewer");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if c.read_input(0, 9).is_err() {
                        break;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut watch = connect("viewer");
    let mut op = connect("operator");
    wait(&mut watch, "ready", &|s| s[1] == 1);
    assert_eq!(op.write_single(0, 0).unwrap(), Ok(()));
    assert_eq!(op.write_multiple(0, &[1, 900]).unwrap(), Ok(()));
    wait(&mut watch, "running", &|s| s[1] == 2 && s[2] > 50);

    // The safety input, under load.
    let sto = dev.sto.clone().unwrap();
    std::fs::create_dir_all(sto.parent().unwrap()).unwrap();
    std::fs::write(&sto, b"1").unwrap();
    // (Watched over the operator's own session, which so stays the live
    // controlling connection: silence would be a comm loss.)
    wait(&mut op, "in STO", &|s| s[1] == 4 && s[6] == 1);
    std::fs::remove_file(&sto).unwrap();
    wait(&mut op, "out of STO and ready", &|s| s[6] == 0 && s[1] == 1);

    // Running again, then the operator's session goes silent: the drive stops.
    assert_eq!(op.write_single(0, 0).unwrap(), Ok(()));
    assert_eq!(op.write_multiple(0, &[1, 900]).unwrap(), Ok(()));
    wait(&mut op, "running again", &|s| s[1] == 2 && s[2] > 50);
    drop(op);
    wait(&mut watch, "stopped after the comm loss", &|s| {
        s[1] != 2 || s[2] == 0
    });

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: u64 = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(served > 100, "the flood never ran ({served} requests)");
    let lost = lab.audit_records("drive.connection-lost");
    assert!(!lost.is_empty(), "the comm loss was not recorded");
}

/// A Modbus session runs the drive, the API operator stops it, and the
/// same session writes "run" again: a restart of the motor, recorded
/// although the session wrote the same word before.
#[test]
fn a_modbus_restart_after_an_api_stop_is_recorded() {
    let lab = test_lab(None);
    let mut op = lab.modbus("operator");
    let state = |c: &mut ModbusClient| c.read_input(0, 3).unwrap().unwrap();
    let wait = |c: &mut ModbusClient, what: &str, f: &dyn Fn(&[u16]) -> bool| {
        wait_until(&format!("the drive {what}"), || f(&state(c)));
    };
    // A start is an edge seen in the ready state: wait for it first (a
    // freshly started drive is not ready for its first ticks).
    wait(&mut op, "ready", &|s| s[1] == 1);
    assert_eq!(op.write_single(0, 0).unwrap(), Ok(()));
    assert_eq!(op.write_multiple(0, &[1, 600]).unwrap(), Ok(()));
    wait(&mut op, "running", &|s| s[1] == 2);
    let before = lab.audit_records("drive.control").len();
    lab.session("operator")
        .ok(
            "PUT",
            "/api/v1/drive/control",
            Some(&json!({"command": "stop"})),
        )
        .unwrap();
    wait(&mut op, "stopped and ready", &|s| s[1] == 1);
    assert_eq!(op.write_single(0, 1).unwrap(), Ok(()));
    wait(&mut op, "running again", &|s| s[1] == 2);
    let after = lab.audit_records("drive.control");
    // The API's stop and the Modbus restart.
    assert_eq!(after.len(), before + 2, "{after:#?}");
    let last = after.last().unwrap();
    assert_eq!(last["details"]["via"], "modbus", "{last}");
    assert_eq!(last["details"]["control_word"], 1, "{last}");
}

/// Two sessions of one certificate trade control of the drive on every
/// write, with the word the drive already has: each takeover is counted,
/// aggregated, and the trail is not flooded (a control-word change is
/// still recorded on its own).
#[test]
fn two_modbus_sessions_trading_control_do_not_flood_the_trail() {
    let lab = test_lab(None);
    let connect = || lab.modbus("operator");
    let (mut a, mut b) = (connect(), connect());
    for _ in 0..200 {
        assert_eq!(a.write_single(0, 0).unwrap(), Ok(()));
        assert_eq!(b.write_single(0, 0).unwrap(), Ok(()));
    }
    lab.wait_for_counted("takeovers", 398, |r| {
        r.record.action == "drive.control-taken"
    });
    let taken = lab.audit_records("drive.control-taken");
    assert!(
        taken.len() <= 4,
        "{} records for 400 takeovers",
        taken.len()
    );
    let counted: u64 = taken.iter().map(counted_in).sum();
    assert!(counted >= 398, "takeovers counted: {counted}");
    assert!(lab.audit_records("drive.control").is_empty());
}

/// Runs the pymodbus client script with `ops`; `cert` is (chain, key).
fn pymodbus(lab: &TestLab, cert: Option<(&Path, &Path)>, ops: Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/support/pymodbus_client.py");
    let a = lab.modbus_addr();
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(a.ip().to_string())
        .arg(a.port().to_string())
        .arg(&lab.m.oem_ca);
    if let Some((c, k)) = cert {
        cmd.arg(c).arg(k);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with pymodbus (scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ops.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pymodbus client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "pymodbus output {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn role_files(lab: &TestLab, role: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let f = &lab.m.clients[role];
    (f.cert.clone(), f.key.clone())
}

/// The handshake (or the first request, for TLS 1.3's late client
/// certificate check) failed: nothing was served.
fn refused(out: &Value) -> bool {
    out["connected"] == false
        || out["results"]
            .as_array()
            .is_none_or(|r| r.first().is_none_or(|r| r["ok"] != true))
}

fn input(c: &mut ModbusClient) -> Vec<u16> {
    c.read_input(0, 9).unwrap().unwrap()
}

#[test]
fn pymodbus_interoperates_with_the_lab_role_certificates() {
    let lab = test_lab(Some(config()));
    let (vc, vk) = role_files(&lab, "viewer");
    let (oc, ok) = role_files(&lab, "operator");
    let (ec, ek) = role_files(&lab, "engineer");
    let (ac, ak) = role_files(&lab, "auditor");

    // The operator starts the drive: run low, then high, at 600 rpm.
    let out = pymodbus(
        &lab,
        Some((&oc, &ok)),
        json!([
            {"op": "write_register", "addr": 0, "value": 0},
            {"op": "write_registers", "addr": 0, "values": [1, 600]},
            {"op": "read_holding", "addr": 0, "count": 2},
            {"op": "write_register", "addr": 1002, "value": 1000},
            {"op": "sleep", "secs": 0.4},
            {"op": "read_input", "addr": 0, "count": 9},
        ]),
    );
    assert_eq!(out["error"], Value::Null, "{out}");
    let r = &out["results"];
    assert_eq!(r[0]["ok"], true, "{out}");
    assert_eq!(r[1]["ok"], true, "{out}");
    assert_eq!(r[2]["registers"], json!([1, 600]), "{out}");
    assert_eq!(
        (r[3]["ok"].clone(), r[3]["exception"].clone()),
        (json!(false), json!(1)),
        "the operator may not set max-speed: {out}"
    );
    let status = r[4]["registers"].as_array().unwrap();
    assert_eq!(status[1], 2, "state code running: {out}");
    assert_eq!(
        status[0].as_u64().unwrap() & 0b10,
        0b10,
        "running bit: {out}"
    );
    assert!(status[2].as_i64().unwrap() > 0, "speed: {out}");
    // pymodbus has gone: the controlling connection is lost, the drive
    // ramps to a stop, and the HTTPS side sees it.
    let viewer = lab.session("viewer");
    wait_until("the drive to stop after the client left", || {
        let d = viewer.ok("GET", "/api/v1/drive", None).unwrap();
        d["state"] == "ready" && d["speed_rpm"].as_f64().unwrap() == 0.0
    });
    // The viewer reads status and parameters, and may not write.
    let out = pymodbus(
        &lab,
        Some((&vc, &vk)),
        json!([
            {"op": "read_input", "addr": 0, "count": 9},
            {"op": "read_holding", "addr": 1000, "count": 10},
            {"op": "write_register", "addr": 0, "value": 0},
        ]),
    );
    let r = &out["results"];
    let status = r[0]["registers"].as_array().unwrap();
    assert_eq!(
        (status.len(), status[1].clone(), status[6].clone()),
        (9, json!(1), json!(0)),
        "ready, STO off: {out}"
    );
    let params = viewer.ok("GET", "/api/v1/params", None).unwrap()["values"].clone();
    let regs = r[1]["registers"].as_array().unwrap();
    assert_eq!(
        regs[4].as_f64().unwrap(),
        (params["accel-time"].as_f64().unwrap() * 10.0).round(),
        "register 1004 is accel-time in 0.1 s: {out}"
    );
    assert_eq!(
        regs[2].as_f64().unwrap(),
        params["max-speed"].as_f64().unwrap()
    );
    assert_eq!(r[2]["exception"], 1, "viewer write: {out}");
    // The engineer sets accel-time (register 1004, 0.1 s); an out-of-range
    // max-speed (5000 rpm) is exception 03 and changes nothing.
    let out = pymodbus(
        &lab,
        Some((&ec, &ek)),
        json!([
            {"op": "write_register", "addr": 1004, "value": 25},
            {"op": "write_registers", "addr": 1002, "values": [5000, 0]},
        ]),
    );
    assert_eq!(out["results"][0]["ok"], true, "{out}");
    assert_eq!(out["results"][1]["exception"], 3, "{out}");
    let after = viewer.ok("GET", "/api/v1/params", None).unwrap()["values"].clone();
    assert_eq!(after["accel-time"], json!(2.5));
    assert_eq!(after["max-speed"], params["max-speed"]);
    assert_eq!(after["min-speed"], params["min-speed"], "all or nothing");
    // The auditor has no Modbus rights in the lab's table.
    let out = pymodbus(
        &lab,
        Some((&ac, &ak)),
        json!([{"op": "read_input", "addr": 0, "count": 1}]),
    );
    assert_eq!(out["results"][0]["exception"], 1, "{out}");

    let probe = json!([{"op": "read_input", "addr": 0, "count": 1}]);
    // No client certificate: the handshake fails.
    let out = pymodbus(&lab, None, probe.clone());
    assert!(refused(&out), "no certificate got through: {out}");
    // A certificate from another CA.
    let d = tempfile::tempdir().unwrap();
    let mut foreign = drivesec_pki::Ca::init(
        &d.path().join("ca"),
        &drivesec_pki::CaOptions::new(drivesec_pki::CaKind::Oem, "Someone Else"),
    )
    .unwrap();
    let (fc, fk, _) = issue_client_files(&mut foreign, d.path(), Some("engineer"), None);
    let out = pymodbus(&lab, Some((&fc, &fk)), probe.clone());
    assert!(refused(&out), "a foreign certificate got through: {out}");
    // A revoked one: works first (positive control), refused after the CRL.
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (rc, rk, serial) = issue_client_files(&mut oem, d.path(), Some("viewer"), None);
    let out = pymodbus(&lab, Some((&rc, &rk)), probe.clone());
    assert_eq!(out["results"][0]["ok"], true, "{out}");
    let crl = oem.revoke(&serial, "key-compromise").unwrap();
    lab.install_crl(&crl);
    let out = pymodbus(&lab, Some((&rc, &rk)), probe.clone());
    assert!(refused(&out), "a revoked certificate got through: {out}");
    let out = pymodbus(&lab, Some((&vc, &vk)), probe);
    assert_eq!(out["results"][0]["ok"], true, "others still get in: {out}");
}

/// Key compromise while a session is open: the CRL closes the revoked
/// client's session at once (recorded), and another client's session stays.
#[test]
fn the_crl_closes_an_open_session_of_the_revoked_certificate() {
    let lab = test_lab(Some(config()));
    let d = tempfile::tempdir().unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (rc, rk, serial) = issue_client_files(&mut oem, d.path(), Some("viewer"), None);
    let mut victim = ModbusClient::connect(
        lab.modbus_addr(),
        Some(&ClientIdentity::from_files(&rc, &rk).unwrap()),
        &lab.trust(),
        Versions::Default,
    )
    .unwrap();
    let mut other = lab.modbus("viewer");
    assert_eq!(input(&mut victim).len(), 9, "positive control");
    assert_eq!(input(&mut other).len(), 9);
    let crl = oem.revoke(&serial, "key-compromise").unwrap();
    lab.install_crl(&crl);
    assert!(
        victim.closed_by_peer(),
        "the revoked certificate's session stayed open"
    );
    assert!(victim.read_input(0, 9).is_err());
    assert_eq!(input(&mut other).len(), 9, "the other session stays open");
    let t = lab
        .session("auditor")
        .ok("GET", "/api/v1/audit?action=modbus.session-closed", None)
        .unwrap();
    let records = t["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{t}");
    assert!(
        records[0]["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("no longer passes"),
        "{t}"
    );
}

/// The expected answer of each probe: Ok, or the exception code.
#[test]
fn every_role_against_every_function_and_range() {
    let lab = test_lab(Some(config()));
    let d = tempfile::tempdir().unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (nc, nk, _) = issue_client_files(&mut oem, d.path(), None, None);
    let no_role = ClientIdentity::from_files(&nc, &nk).unwrap();
    // Current parameter values, so allowed writes change nothing.
    let p = lab
        .modbus("engineer")
        .read_holding(1000, 10)
        .unwrap()
        .unwrap();
    let (speed_ref, ramps) = (p[0], [p[4], p[5]]);
    type Probe = (
        &'static str,
        Box<dyn Fn(&mut ModbusClient) -> Result<(), u8>>,
    );
    let probes: Vec<Probe> = vec![
        (
            "FC03 0..=1",
            Box::new(|c| c.read_holding(0, 2).unwrap().map(|_| ())),
        ),
        (
            "FC04 0..=8",
            Box::new(|c| c.read_input(0, 9).unwrap().map(|_| ())),
        ),
        (
            "FC03 1000..=1009",
            Box::new(|c| c.read_holding(1000, 10).unwrap().map(|_| ())),
        ),
        ("FC06 0", Box::new(|c| c.write_single(0, 0).unwrap())),
        ("FC16 1", Box::new(|c| c.write_multiple(1, &[0]).unwrap())),
        (
            "FC06 1000",
            Box::new(move |c| c.write_single(1000, speed_ref).unwrap()),
        ),
        (
            "FC16 1004..=1005",
            Box::new(move |c| c.write_multiple(1004, &ramps).unwrap()),
        ),
        (
            "FC04 9",
            Box::new(|c| c.read_input(9, 1).unwrap().map(|_| ())),
        ),
        (
            "FC03 2",
            Box::new(|c| c.read_holding(2, 1).unwrap().map(|_| ())),
        ),
        (
            "FC03 0..=125",
            Box::new(|c| c.read_holding(0, 125).unwrap().map(|_| ())),
        ),
    ];
    // ok, or the exception: 1 = not permitted, 2 = permitted but no such register.
    let expected: [(&str, [u8; 10]); 6] = [
        ("viewer", [0, 0, 0, 1, 1, 1, 1, 1, 2, 1]),
        ("operator", [0, 0, 0, 0, 0, 0, 1, 1, 2, 1]),
        ("engineer", [0, 0, 0, 0, 0, 0, 0, 1, 2, 1]),
        ("security-admin", [1; 10]),
        ("auditor", [1; 10]),
        ("(no role)", [1; 10]),
    ];
    let mut failures = vec![];
    for (role, want) in expected {
        let mut c = if role == "(no role)" {
            ModbusClient::connect(
                lab.modbus_addr(),
                Some(&no_role),
                &lab.trust(),
                Versions::Default,
            )
            .unwrap()
        } else {
            lab.modbus(role)
        };
        for ((name, probe), want) in probes.iter().zip(want) {
            let got = match probe(&mut c) {
                Ok(()) => 0,
                Err(e) => e,
            };
            if got != want {
                failures.push(format!("{role} {name}: got {got}, want {want}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Every refusal is in the trail, attributed to the certificate's role.
    let a = lab.session("auditor");
    let t = a
        .ok("GET", "/api/v1/audit?action=modbus.&limit=1000", None)
        .unwrap();
    let roles: std::collections::BTreeSet<String> = t["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "modbus.denied")
        .map(|r| {
            r["details"]["role"]
                .as_str()
                .unwrap_or("(no role)")
                .to_string()
        })
        .collect();
    for role in [
        "viewer",
        "operator",
        "engineer",
        "security-admin",
        "auditor",
        "(no role)",
    ] {
        assert!(
            roles.contains(role),
            "no modbus.denied record for {role}: {roles:?}"
        );
    }
}

#[test]
fn the_rights_table_is_set_by_the_security_admin_and_applies_at_once() {
    let lab = test_lab(Some(config()));
    let admin = lab.admin();
    let before = admin.ok("GET", "/api/v1/modbus/rights", None).unwrap();
    assert_eq!(before, drivesec_lab::up::lab_modbus_rights());
    let mut viewer = lab.modbus("viewer");
    assert!(viewer.read_input(0, 1).unwrap().is_ok());
    // Only write-security-settings may change it.
    for role in ["viewer", "operator", "engineer", "auditor"] {
        let r = lab
            .session(role)
            .call("PUT", "/api/v1/modbus/rights", Some(&json!({"roles": {}})))
            .unwrap();
        assert_eq!(r.status, 403, "{role}: {}", r.body);
    }
    // Bad tables: 400 naming the role and rule, or 422 for a wrong shape; nothing changes.
    for (body, status, says) in [
        (
            json!({"roles": {"viewer": [{"functions": [5], "start": 0, "end": 1}]}}),
            400,
            "role 'viewer', rule 0",
        ),
        (
            json!({"roles": {"viewer": [{"functions": [3], "start": 9, "end": 1}]}}),
            400,
            "start 9 is after end 1",
        ),
        (
            json!({"roles": {"viewer": [{"functions": [3], "start": 0, "end": 70000}]}}),
            422,
            "",
        ),
        (
            json!({"roles": {"viewer": []}, "default": "allow"}),
            422,
            "default",
        ),
    ] {
        let r = admin
            .call("PUT", "/api/v1/modbus/rights", Some(&body))
            .unwrap();
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(r.body.to_string().contains(says), "{}", r.body);
    }
    assert_eq!(
        admin.ok("GET", "/api/v1/modbus/rights", None).unwrap(),
        before
    );
    // Dropping the viewer applies to the session already open.
    let mut t = before.clone();
    t["roles"].as_object_mut().unwrap().remove("viewer");
    admin.ok("PUT", "/api/v1/modbus/rights", Some(&t)).unwrap();
    assert_eq!(viewer.read_input(0, 1).unwrap(), Err(1));
    let stored: Value = serde_json::from_slice(
        &std::fs::read(lab.device_dir().join("modbus-rights.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stored, t);
    let a = lab.session("auditor");
    let rec = a
        .ok("GET", "/api/v1/audit?action=modbus.rights.&limit=100", None)
        .unwrap();
    let recs = rec["records"].as_array().unwrap();
    assert!(
        recs.iter()
            .any(|r| r["outcome"] == "success" && r["details"]["new"] == t),
        "{rec}"
    );
    assert!(recs.iter().any(|r| r["outcome"] == "failure"), "{rec}");
}

#[test]
fn a_flood_of_refusals_is_aggregated_and_every_one_counted() {
    let lab = test_lab(Some(config()));
    let mut viewer = lab.modbus("viewer");
    const N: u64 = 400;
    for _ in 0..N {
        assert_eq!(viewer.write_single(0, 1).unwrap(), Err(1));
    }
    drop(viewer);
    // Stopping the daemon records what is still being counted.
    drivesec_lab::up::down(&lab.dir).unwrap();
    let recs = trail_records(&lab.device_dir().join("audit"));
    let denied: Vec<&drivesec_audit::reader::StoredRecord> = recs
        .iter()
        .filter(|r| r.record.action == "modbus.denied")
        .collect();
    let counted: u64 = denied
        .iter()
        .map(|r| drivesec_audit::events_counted(&r.record.details))
        .sum();
    assert_eq!(counted, N, "every refusal counted exactly once");
    assert!(
        denied.len() <= 4,
        "{} records for {N} refusals",
        denied.len()
    );
    assert_eq!(denied[0].record.details["role"], "viewer");
    assert_eq!(denied[0].record.details["function"], 6);
}

#[test]
fn malformed_frames_close_the_connection_and_the_server_carries_on() {
    let lab = test_lab(Some(config()));
    for bad in [
        // protocol id 1
        vec![0, 1, 0, 1, 0, 6, 1, 3, 0, 0, 0, 1],
        // length 0
        vec![0, 1, 0, 0, 0, 0, 1],
        // length 300
        vec![0, 1, 0, 0, 1, 44, 1, 3, 0, 0, 0, 1],
    ] {
        let mut c = lab.modbus("engineer");
        c.write_raw(&bad).unwrap();
        assert!(c.closed_by_peer(), "{bad:?} did not close the connection");
        let mut again = lab.modbus("engineer");
        assert!(again.read_input(0, 1).unwrap().is_ok());
    }
    // A well-framed but wrong PDU gets an exception, and the session goes on.
    let mut c = lab.modbus("engineer");
    assert_eq!(c.raw(&[3, 0, 0, 0]).unwrap(), vec![0x83, 3]);
    assert_eq!(c.raw(&[16, 0, 0, 0, 2, 3, 0, 1, 0]).unwrap(), vec![0x90, 3]);
    assert!(c.read_input(0, 1).unwrap().is_ok());
}

fn start_over_modbus(op: &mut ModbusClient, viewer: &mut ModbusClient, rpm: u16) {
    assert_eq!(op.write_single(0, 0).unwrap(), Ok(()));
    assert_eq!(op.write_multiple(0, &[1, rpm]).unwrap(), Ok(()));
    wait_until("running", || {
        let s = input(viewer);
        s[1] == 2 && (s[2] as i16) > 50
    });
}

#[test]
fn losing_the_controlling_connection_stops_the_drive() {
    let lab = test_lab(Some(config()));
    // Short ramps so the stop is quick.
    let engineer = lab.session("engineer");
    engineer
        .ok(
            "PUT",
            "/api/v1/params/decel-time",
            Some(&json!({"value": 0.5})),
        )
        .unwrap();
    engineer
        .ok(
            "PUT",
            "/api/v1/params/accel-time",
            Some(&json!({"value": 0.5})),
        )
        .unwrap();
    let mut viewer = lab.modbus("viewer");
    // 1. The connection closes.
    let mut op = lab.modbus("operator");
    start_over_modbus(&mut op, &mut viewer, 600);
    drop(op);
    wait_until("ramp to stop after the close", || {
        let s = input(&mut viewer);
        s[1] == 1 && s[2] == 0
    });
    // It does not restart by itself, although the last control word said run.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(input(&mut viewer)[1], 1);
    // 2. The controller falls silent (1 s by default) with the connection open.
    let mut op = lab.modbus("operator");
    start_over_modbus(&mut op, &mut viewer, 600);
    let mut reads = 0;
    wait_until("ramp to stop after silence", || {
        reads += 1;
        let s = input(&mut viewer);
        s[1] == 1 && s[2] == 0
    });
    assert!(
        op.read_input(0, 1).is_err(),
        "the silent session was closed"
    );
    // A reader going away changes nothing.
    let mut op = lab.modbus("operator");
    start_over_modbus(&mut op, &mut viewer, 300);
    drop(lab.modbus("viewer"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(input(&mut viewer)[1], 2, "still running");
    assert!(
        op.read_input(0, 1).unwrap().is_ok(),
        "keep the controller alive"
    );
    let a = lab.session("auditor");
    let t = a
        .ok("GET", "/api/v1/audit?action=drive.&limit=1000", None)
        .unwrap();
    let lost: Vec<&Value> = t["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "drive.connection-lost")
        .collect();
    assert_eq!(lost.len(), 2, "{t}");
    assert_eq!(lost[0]["details"]["reason"], "closed");
    assert!(
        lost[1]["details"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("silent")
    );
    assert_eq!(lost[0]["details"]["reaction"], "ramp-to-stop");
}

#[test]
fn plain_modbus_only_when_configured_and_then_posture_says_so() {
    // Off by default: no plain listener, no plain findings.
    let lab = test_lab(Some(config()));
    assert!(!lab.device_dir().join("modbus-plain.addr").exists());
    let p = lab.admin().ok("GET", "/api/v1/posture", None).unwrap();
    assert!(!p.to_string().contains("plain Modbus/TCP"), "{p}");
    assert_eq!(p["settings"]["modbus"]["client_certificate"], "required");
    drop(lab);

    let mut cfg = config();
    cfg.modbus.insecure_plain_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.modbus.insecure_plain_role = Some("viewer".into());
    let lab = test_lab(Some(cfg));
    let addr: SocketAddr = std::fs::read_to_string(lab.device_dir().join("modbus-plain.addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut ask = |pdu: &[u8]| -> Vec<u8> {
        use std::io::Read;
        tcp.write_all(&drivesec_modbus::frame::encode(7, 1, pdu))
            .unwrap();
        let mut head = [0u8; 7];
        tcp.read_exact(&mut head).unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes([head[4], head[5]])) - 1];
        tcp.read_exact(&mut body).unwrap();
        body
    };
    assert_eq!(
        ask(&[4, 0, 6, 0, 1]),
        vec![4, 2, 0, 0],
        "viewer's read: STO off"
    );
    assert_eq!(ask(&[6, 0, 0, 0, 1]), vec![0x86, 1], "viewer may not write");
    let p = lab.admin().ok("GET", "/api/v1/posture", None).unwrap();
    let fr = |i: usize| p["sl_a"][i].as_u64().unwrap();
    assert!(fr(0) <= 1 && fr(2) == 0 && fr(3) == 0, "{}", p["notation"]);
    let text = p.to_string();
    for why in [
        "SR 1.2 (SL 2): plain Modbus/TCP",
        "SR 3.1 (SL 1): plain Modbus/TCP",
        "SR 4.1 (SL 1): plain Modbus/TCP",
    ] {
        assert!(text.contains(why), "missing '{why}'");
    }
    assert_eq!(p["settings"]["modbus"]["insecure_plain_role"], "viewer");
}

#[test]
fn sto_holds_against_random_commands_from_every_role() {
    // The sessions here write the control word and may then sit idle while
    // other roles act: keep the connection-loss watchdog (tested elsewhere)
    // out of the way of this test.
    let mut cfg = config();
    cfg.modbus.comm_loss_timeout_ms = 120_000;
    let lab = test_lab(Some(cfg));
    let steps = if std::env::var_os("DRIVESEC_LONG_TESTS").is_some() {
        3000
    } else {
        300
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng::new(seed);
    let roles = [
        "viewer",
        "operator",
        "engineer",
        "security-admin",
        "auditor",
    ];
    let mut clients: Vec<ModbusClient> = roles.iter().map(|r| lab.modbus(r)).collect();
    let api: Vec<_> = roles.iter().map(|r| lab.session(r)).collect();
    let sto = lab.m.devices[0].sto.clone().unwrap();
    std::fs::create_dir_all(sto.parent().unwrap()).unwrap();
    let mut watcher = lab.modbus("viewer");
    let mut sto_on = false;
    let mut checked_active = 0;
    for step in 0..steps {
        let who = rng.below(roles.len());
        match rng.below(8) {
            0 => {
                // Toggle the local STO input.
                sto_on = !sto_on;
                if sto_on {
                    std::fs::write(&sto, b"").unwrap();
                } else {
                    std::fs::remove_file(&sto).unwrap();
                }
            }
            1 | 2 => {
                let cw = [0u16, 1, 2, 0x80, 0x81, 0xffff][rng.below(6)];
                let _ = clients[who].write_single(0, cw).unwrap();
            }
            3 => {
                let r = rng.below(6001) as i64 - 3000;
                let _ = clients[who]
                    .write_multiple(0, &[1, r as i16 as u16])
                    .unwrap();
            }
            4 => {
                // Try every register, including ones that do not exist.
                let a = rng.below(1100) as u16;
                let _ = clients[who].write_single(a, rng.next_u64() as u16).unwrap();
            }
            5 => {
                let cmd = [
                    "start",
                    "stop",
                    "quick-stop",
                    "reset",
                    "clear-sto",
                    "sto-off",
                ][rng.below(6)];
                let _ = api[who]
                    .call(
                        "PUT",
                        "/api/v1/drive/control",
                        Some(&json!({"command": cmd, "speed_reference": 900.0})),
                    )
                    .unwrap();
            }
            _ => std::thread::sleep(Duration::from_millis(rng.below(25) as u64)),
        }
        // The invariant, on a snapshot the tick published.
        let s = input(&mut watcher);
        if s[6] == 1 {
            checked_active += 1;
            assert_eq!(
                (s[1], s[3], s[4], s[0] & 0b10),
                (4, 0, 0, 0),
                "step {step} (seed {seed}): STO active but state {} torque {} current {}",
                s[1],
                s[3],
                s[4]
            );
        }
        if sto_on && rng.below(4) == 0 {
            // Once the input has been seen, it must be in force.
            wait_until("STO seen", || input(&mut watcher)[6] == 1);
        }
    }
    assert!(checked_active > 0, "STO was never observed active");
    let _ = std::fs::remove_file(&sto);
}

/// 64 Modbus/TCP Security sessions and 4 HTTPS API clients at once against
/// one drivesecd: every valid request answered, memory flat. 10 s by
/// default, 60 s with `scripts/test --long`.
#[test]
fn sixty_four_modbus_clients_and_api_clients_under_load() {
    let lab = test_lab(Some(config()));
    let secs = if std::env::var_os("DRIVESEC_LONG_TESTS").is_some() {
        60
    } else {
        10
    };
    let pid = lab.m.devices[0].pid.unwrap();
    let roles = ["viewer", "operator", "engineer"];
    let identities: Vec<_> = roles.iter().map(|r| lab.identity(r)).collect();
    let trust = lab.trust();
    let target = load::Target::Tls {
        addr: lab.modbus_addr(),
        identities: &identities,
        trust: &trust,
    };
    let steps = [
        load::Step::read(fc::READ_INPUT, 0, 9),
        load::Step::read(fc::READ_HOLDING, 1000, 10),
    ];
    // The generator counts a wrong answer (here an exception) as a failure,
    // so the zero below means something.
    let bad = load::run(
        &target,
        2,
        Duration::from_millis(200),
        &[load::Step::read(fc::READ_HOLDING, 9000, 1)],
    )
    .unwrap();
    assert!(bad.failures > 0 && bad.requests == 0, "{bad:?}");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (api_ok, api_failed, rss) = std::thread::scope(|s| {
        let api: Vec<_> = roles
            .iter()
            .chain(["auditor"].iter())
            .map(|role| {
                let c = lab.session(role);
                let stop = &stop;
                s.spawn(move || {
                    let (mut ok, mut failed) = (0u64, 0u64);
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        match c.call("GET", "/api/v1/drive", None) {
                            Ok(r) if r.status == 200 => ok += 1,
                            _ => failed += 1,
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        let sampler = s.spawn(|| {
            // After warm-up, then every second.
            std::thread::sleep(Duration::from_secs(2));
            let mut samples = vec![];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                samples.push(rss_kib(pid));
                std::thread::sleep(Duration::from_secs(1));
            }
            samples
        });
        let r = load::run(&target, 64, Duration::from_secs(secs), &steps).unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (mut ok, mut failed) = (0, 0);
        for h in api {
            let (o, f) = h.join().unwrap();
            ok += o;
            failed += f;
        }
        eprintln!("{}", serde_json::to_string(&r).unwrap());
        assert_eq!(r.failures, 0, "{r:?}");
        assert!(r.requests > 64, "{r:?}");
        (ok, failed, sampler.join().unwrap())
    });
    assert_eq!(api_failed, 0, "API requests failed ({api_ok} ok)");
    assert!(api_ok > 0);
    let first = rss[0];
    let last = *rss.last().unwrap();
    eprintln!("RSS KiB samples: {rss:?}");
    assert!(
        last <= first + first / 4 + 4096,
        "memory grew under steady load: {rss:?} KiB"
    );
}
