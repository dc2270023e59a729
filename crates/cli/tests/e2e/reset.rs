//! Factory reset: the factory credential dies at commissioning and a reset
//! starts over; one administrator cannot reset alone and the trail survives;
//! and a reset against the owner's settings changes in progress, on a real
//! drivesecd (review findings 4 and 5): each test sets up the interleaving
//! the finding describes and shows that the device now ends safely.
//!
//! * A forwarding change in progress when a reset is approved finishes
//!   first and the reset then erases it: the previous owner's collector is
//!   never configured on the factory device (it would receive the next
//!   owner's trail).
//! * A reset that fails after it stopped the forwarder leaves forwarding
//!   running again, delivering to the collector.
//! * An account change in progress, and a role change that finished while
//!   the approval waited, are honoured.
//! * The offline reset (`drivesecd factory-reset`) erases the drive
//!   parameters, as the API's does.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    Collector, TestLab, config, fresh_lab_may_reset, test_lab, trail_records, wait_until,
};
use drivesec_client::client::{DeviceClient, DeviceTrust, Versions};
use serde_json::{Value, json};

/// A security administrator (or whoever holds its session) tries to erase
/// the device and its trail alone: it must give its password again, a
/// second account must approve, and the trail survives the reset sealed,
/// verifiable against the IDevID, with the request and the approval in it.
#[test]
fn one_administrator_cannot_factory_reset_alone_and_the_trail_survives() {
    let mut cfg = config();
    // An approver must have held its role and password this long (a day
    // by default; seconds here, so the lab's own second admin can approve).
    cfg.api.factory_reset_approver_min_age_secs = 5;
    let lab = test_lab(Some(cfg));
    let lab_ready = Instant::now();
    let admin = lab.admin();
    let admin_pw = lab.m.admin.as_ref().unwrap().password.clone();
    // A stolen session without the password gets nowhere.
    let r = admin
        .call(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": "guessed"})),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("reauthentication-failed"))
    );
    // Asked with the password: only a request. (A refused approval ends
    // the request, so each attempt below follows a new one.)
    let ask = || {
        let asked = admin
            .ok(
                "POST",
                "/api/v1/factory-reset",
                Some(&json!({"password": admin_pw})),
            )
            .unwrap();
        assert_eq!(asked["pending"], true);
        asked["request"].as_str().unwrap().to_string()
    };
    let id = ask();
    // The same account cannot approve its own request.
    let r = admin
        .call(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": admin_pw, "approve": id})),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("second-person-required"))
    );
    // A sock puppet: the rogue administrator makes another security
    // administrator, logs in as it and sets its password. It cannot
    // approve: not over the rogue's certificate, and not as a brand-new
    // account over a certificate of its own (the owner gets the settling
    // time to see the user.add in the trail).
    admin
        .ok(
            "POST",
            "/api/v1/users",
            Some(&json!({"username": "sockpuppet", "role": "security-admin",
                "password": "Temporary-Passw0rd-1"})),
        )
        .unwrap();
    let mut puppet = lab.client("security-admin");
    puppet.login("sockpuppet", "Temporary-Passw0rd-1").unwrap();
    puppet
        .ok(
            "POST",
            "/api/v1/me/password",
            Some(&json!({"old_password": "Temporary-Passw0rd-1",
                "new_password": "Puppet-Passw0rd-22"})),
        )
        .unwrap();
    // Each approval the puppet tries is refused, naming why.
    let puppet_approves = |c: &drivesec_client::client::DeviceClient, why: &str| {
        let id = ask();
        let r = c
            .call(
                "POST",
                "/api/v1/factory-reset",
                Some(&json!({"password": "Puppet-Passw0rd-22", "approve": id})),
            )
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (403, Some("second-person-required")),
            "{}",
            r.body
        );
        assert!(
            r.body["message"].as_str().unwrap().contains(why),
            "{}",
            r.body
        );
        id
    };
    let mut same_cert = lab.client("security-admin");
    same_cert.login("sockpuppet", "Puppet-Passw0rd-22").unwrap();
    puppet_approves(&same_cert, "certificate");
    let mut own = lab.client_with_new_certificate("security-admin");
    own.login("sockpuppet", "Puppet-Passw0rd-22").unwrap();
    let id = puppet_approves(&own, "settled");
    // That refusal ended the request too.
    let r = lab
        .second_admin()
        .call(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": lab.m.users["security-admin"].password, "approve": id})),
        )
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    let id = ask();
    // Still commissioned and working.
    assert_eq!(
        lab.session("engineer")
            .call("GET", "/api/v1/params", None)
            .unwrap()
            .status,
        200
    );
    // A made-up id is refused.
    let second = lab.second_admin();
    let second_pw = lab.m.users["security-admin"].password.clone();
    let r = second
        .call(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": second_pw, "approve": "00"})),
        )
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    // The lab's other security administrator, settled long enough, approves:
    // the reset runs.
    let settle = Duration::from_secs(6).saturating_sub(lab_ready.elapsed());
    std::thread::sleep(settle);
    let done = second
        .ok(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": second_pw, "approve": id})),
        )
        .unwrap();
    assert!(done["factory_credential"].is_string(), "{done}");
    // The old trail is kept, sealed and verifiable, with the whole story.
    let dev = &lab.m.devices[0];
    let archive = dev.dir.join("audit-archive");
    let kept: Vec<_> = std::fs::read_dir(&archive).unwrap().flatten().collect();
    assert_eq!(kept.len(), 1, "one archived trail");
    let report = lab.verify_trail(&kept[0].path());
    assert!(report.ok, "{:#?}", report.problems);
    let recs = trail_records(&kept[0].path());
    let actions: Vec<&str> = recs.iter().map(|r| r.record.action.as_str()).collect();
    for a in [
        "auth.reauthenticate",
        "device.factory-reset-requested",
        "device.factory-reset",
    ] {
        assert!(actions.contains(&a), "{a} missing from the kept trail");
    }
    let reset = recs
        .iter()
        .rfind(|r| {
            r.record.action == "device.factory-reset"
                && r.record.outcome == drivesec_audit::Outcome::Success
        })
        .unwrap();
    assert!(
        report.latest_checkpoint.unwrap() >= reset.seq,
        "the kept trail is not sealed over the reset"
    );
}

/// The test-only hold point in the forwarding change (docs/device-state.md).
const HOLD: &str = "forwarding:hold";

/// A lab device whose two fresh security administrators may approve a
/// factory reset at once (the approver-age rule has its own test).
fn reset_lab() -> TestLab {
    test_lab(Some(fresh_lab_may_reset()))
}

/// Review finding 4. `PUT /api/v1/audit/forwarding` is held (a test hold
/// point) after it authenticated and before it starts the forwarder and
/// stores its settings; meanwhile a factory reset is approved. The reset
/// waits for the change to finish (the device logs that it waits), then
/// erases what it stored: no `forwarding.json` on the factory device, and
/// the archived trail has the change before the reset. Before the fix, the
/// reset ran at once and the change, let go, then wrote the previous
/// owner's collector into the factory device and started forwarding the
/// new trail to it.
#[test]
fn a_forwarding_change_in_progress_never_outlives_a_factory_reset() {
    let lab = reset_lab();
    let dir = lab.device_dir();
    let admin = lab.admin();
    // A collector nobody listens on: starting the forwarder needs none.
    let body = json!({"collector": "127.0.0.1:9", "server_name": "127.0.0.1",
        "ca_pem": std::fs::read_to_string(&lab.m.oem_ca).unwrap()});
    std::fs::write(dir.join("test-failpoint"), HOLD).unwrap();
    let (put, reset) = std::thread::scope(|s| {
        let put = s.spawn(|| {
            admin
                .call("PUT", "/api/v1/audit/forwarding", Some(&body))
                .unwrap()
        });
        wait_until("the forwarding change to reach its hold point", || {
            std::fs::read_to_string(dir.join("test-failpoint-reached")).is_ok_and(|p| p == HOLD)
        });
        let reset = s.spawn(|| lab.factory_reset());
        // The reset either runs through (as before the fix) or waits for
        // the change, and says so in the device log.
        let log = dir.join("drivesecd.log");
        wait_until("the reset to end or to wait for the change", || {
            reset.is_finished()
                || std::fs::read_to_string(&log).is_ok_and(|l| {
                    l.contains("waiting for the settings changes in progress to finish")
                })
        });
        std::fs::remove_file(dir.join("test-failpoint")).unwrap();
        (put.join().unwrap(), reset.join().unwrap())
    });
    assert_eq!(reset["state"], "factory", "{reset}");
    assert!(
        !dir.join("forwarding.json").exists(),
        "the previous owner's forwarding settings survived the reset: {}",
        std::fs::read_to_string(dir.join("forwarding.json")).unwrap_or_default()
    );
    // The change itself went through, before the reset.
    assert_eq!(put.status, 200, "{}", put.body);
    // The change went into the trail the reset sealed, before the reset.
    let archived: Vec<_> = std::fs::read_dir(dir.join("audit-archive"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(archived.len(), 1);
    let old = trail_records(&archived[0].path());
    let at = |action: &str| {
        old.iter()
            .rposition(|r| {
                r.record.action == action && r.record.outcome == drivesec_audit::Outcome::Success
            })
            .unwrap_or_else(|| panic!("no {action} in the archived trail"))
    };
    assert!(at("audit.forwarding.set") < at("device.factory-reset"));
    // Nothing of it in the new trail.
    let fresh = trail_records(&dir.join("audit"));
    assert!(
        fresh
            .iter()
            .all(|r| !r.record.action.starts_with("audit.forwarding")),
        "{fresh:#?}"
    );
}

/// Review finding 5. A factory reset that fails (here at its first
/// erasure: `params.json` cannot be shredded) after it stopped the
/// forwarder and retired the trail reopens the trail and starts forwarding
/// again from the stored settings: the forwarder runs and the collector
/// receives a record made after the failure. Before the fix, forwarding
/// stayed stopped until the next restart.
#[test]
fn forwarding_runs_again_after_a_factory_reset_that_failed() {
    let lab = reset_lab();
    let dir = lab.device_dir();
    let collector = Collector::start(&lab);
    let admin = lab.admin();
    admin
        .ok(
            "PUT",
            "/api/v1/audit/forwarding",
            Some(&collector.forwarding(&lab)),
        )
        .unwrap();
    let forwarded = |c: &drivesec_client::client::DeviceClient| -> Value {
        c.ok("GET", "/api/v1/audit/forwarding", None).unwrap()
    };
    let seq = admin
        .ok("POST", "/api/v1/audit/forwarding/test", None)
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    wait_until("the first test record at the collector", || {
        forwarded(&admin)["status"]["forwarded"].as_u64() >= Some(seq)
    });

    // The reset's first erasure fails: a directory where params.json goes.
    let params = dir.join("params.json");
    let _ = std::fs::remove_file(&params);
    std::fs::create_dir(&params).unwrap();
    let asked = lab
        .admin()
        .ok(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": lab.m.admin.as_ref().unwrap().password})),
        )
        .unwrap();
    let r = lab
        .second_admin()
        .call(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": lab.m.users["security-admin"].password,
                "approve": asked["request"]})),
        )
        .unwrap();
    assert_eq!(r.status, 500, "{}", r.body);
    std::fs::remove_dir(&params).unwrap();

    // Still the owner's device, forwarding as before (the reset ended
    // every session: log in again).
    let admin = lab.admin();
    let f = forwarded(&admin);
    assert!(f["settings"].is_object(), "{f:#}");
    assert!(
        f["status"].is_object(),
        "forwarding did not start again after the failed reset: {f:#}"
    );
    let after = admin
        .ok("POST", "/api/v1/audit/forwarding/test", None)
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert!(after > seq);
    wait_until(
        "a record made after the failed reset at the collector",
        || forwarded(&admin)["status"]["forwarded"].as_u64() >= Some(after),
    );
    let sd = format!(" seq=\"{after}\"");
    wait_until("the collector to write the record down", || {
        collector.lines().iter().any(|l| l.contains(&sd))
    });
}

/// The device log says an approved reset waits for the changes in progress.
fn reset_waits(dir: &std::path::Path) -> bool {
    std::fs::read_to_string(dir.join("drivesecd.log"))
        .is_ok_and(|l| l.contains("waiting for the settings changes in progress to finish"))
}

/// The hold point last reached (`test-failpoint-reached`).
fn reached(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("test-failpoint-reached")).unwrap_or_default()
}

/// Review finding (account handlers and the reset gate). `POST
/// /api/v1/users` is held (hold point `accounts:hold`) after it
/// authenticated and before it writes the accounts; a factory reset is
/// approved meanwhile, and would be held (`reset:erased`) after it erased
/// the owner's files and before it adopts the factory state. The reset
/// waits for the account change (the device says so), the change finishes
/// first, and the factory device has no `accounts.json`. Before the fix the
/// reset ran at once, and the account change, let go between the erasure
/// and the factory state, wrote the previous owner's accounts (hashes and
/// all) into the factory device.
#[test]
fn an_account_change_in_progress_never_outlives_a_factory_reset() {
    let lab = reset_lab();
    let dir = lab.device_dir();
    let admin = lab.admin();
    let failpoint = dir.join("test-failpoint");
    std::fs::write(&failpoint, "accounts:hold\nreset:erased\n").unwrap();
    let body = json!({"username": "newcomer", "role": "operator",
        "password": "Temporary-Passw0rd-2026"});
    let (add, reset) = std::thread::scope(|s| {
        let add = s.spawn(|| admin.call("POST", "/api/v1/users", Some(&body)));
        wait_until("the account change to reach its hold point", || {
            reached(&dir) == "accounts:hold"
        });
        let reset = s.spawn(|| lab.factory_reset());
        // The reset either waits for the change (the fix) or runs to its
        // own hold point, past the erasure.
        wait_until("the reset to wait or to erase", || {
            reset_waits(&dir) || reached(&dir) == "reset:erased"
        });
        // The account change goes on; a reset past its erasure stays held.
        std::fs::write(&failpoint, "reset:erased\n").unwrap();
        wait_until("the account change to end", || add.is_finished());
        std::fs::remove_file(&failpoint).unwrap();
        (add.join().unwrap(), reset.join().unwrap())
    });
    assert_eq!(reset["state"], "factory", "{reset}");
    assert!(
        !dir.join("accounts.json").exists(),
        "the previous owner's accounts survived the reset: {}",
        std::fs::read_to_string(dir.join("accounts.json")).unwrap_or_default()
    );
    // The change went through, before the reset (and into the trail it sealed).
    let add = add.unwrap();
    assert_eq!(add.status, 200, "{}", add.body);
    let archived: Vec<_> = std::fs::read_dir(dir.join("audit-archive"))
        .unwrap()
        .flatten()
        .collect();
    let old = trail_records(&archived[0].path());
    let at = |action: &str| {
        old.iter()
            .rposition(|r| r.record.action == action)
            .unwrap_or_else(|| panic!("no {action} in the archived trail"))
    };
    assert!(at("user.add") < at("device.factory-reset"));
}

/// Review finding (the approval and the gate). A factory reset is asked
/// for by the first administrator; a role change that takes
/// `factory-reset` from it is in progress (held at `accounts:hold`) when
/// the other administrator approves. The approval waits for the change
/// and then checks the second person again: the requester no longer holds
/// `factory-reset`, so the reset is refused (403 `second-person-required`,
/// recorded) and the device is still the owner's. Before the fix the
/// approval was checked and taken before it waited, and the reset ran
/// after the change.
#[test]
fn a_reset_approval_honours_a_role_change_that_finished_while_it_waited() {
    let lab = reset_lab();
    let dir = lab.device_dir();
    let requester = lab.m.admin.as_ref().unwrap().clone();
    let asked = lab
        .admin()
        .ok(
            "POST",
            "/api/v1/factory-reset",
            Some(&json!({"password": requester.password})),
        )
        .unwrap();
    let (changer, approver) = (lab.second_admin(), lab.second_admin());
    let failpoint = dir.join("test-failpoint");
    std::fs::write(&failpoint, "accounts:hold").unwrap();
    let role = json!({"role": "auditor"});
    let approve = json!({"password": lab.m.users["security-admin"].password,
        "approve": asked["request"]});
    let (changed, approved) = std::thread::scope(|s| {
        let change = s.spawn(|| {
            changer
                .call(
                    "PUT",
                    &format!("/api/v1/users/{}/role", requester.username),
                    Some(&role),
                )
                .unwrap()
        });
        wait_until("the role change to reach its hold point", || {
            reached(&dir) == "accounts:hold"
        });
        let approval = s.spawn(|| {
            approver
                .call("POST", "/api/v1/factory-reset", Some(&approve))
                .unwrap()
        });
        wait_until("the approval to wait for the change", || reset_waits(&dir));
        std::fs::remove_file(&failpoint).unwrap();
        (change.join().unwrap(), approval.join().unwrap())
    });
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(approved.status, 403, "{}", approved.body);
    assert_eq!(approved.body["error"], "second-person-required");
    assert!(
        approved.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("the account that asked no longer holds factory-reset")),
        "{}",
        approved.body
    );
    // Still the owner's device, and the refusal is recorded.
    assert!(!dir.join("audit-archive").exists());
    let refusal = lab
        .audit_records("device.factory-reset")
        .into_iter()
        .find(|r| r["outcome"] == "denied");
    assert!(refusal.is_some(), "no refusal recorded");
}

#[test]
fn factory_credential_dies_and_factory_reset_starts_over() {
    let lab = test_lab(Some(fresh_lab_may_reset()));
    let cred = std::fs::read_to_string(&lab.m.devices[0].factory_credential).unwrap();
    // Commissioned: the old credential opens nothing.
    let c = lab.client("security-admin");
    let r = c
        .call(
            "POST",
            "/api/v1/commission/begin",
            Some(&json!({"factory_credential": cred.trim(), "device_name": "x.example"})),
        )
        .unwrap();
    assert_eq!(r.status, 409);
    assert!(!lab.device_dir().join("factory-credential.hash").exists());
    // Factory reset, asked by the first security admin and approved by the
    // other, returns a new one-time credential.
    let admin = lab.admin();
    let r = lab.factory_reset();
    let new_cred = r["factory_credential"].as_str().unwrap().to_string();
    assert_ne!(new_cred, cred.trim());
    // Back in factory state: the device presents its IDevID again, sessions are gone.
    assert!(
        admin.call("GET", "/api/v1/me", None).is_err(),
        "the LDevID no longer serves"
    );
    let mfg_roots = drivesec_pki::read_cert_chain(&lab.m.manufacturer_ca).unwrap();
    let factory = DeviceClient::new(
        lab.addr(),
        Some(&lab.identity("security-admin")),
        &DeviceTrust::Idevid {
            roots: mfg_roots.clone(),
            serial: Some(lab.m.devices[0].serial_number.clone()),
            revocation: drivesec_client::client::Revocation::manufacturer_from_file(
                &lab.m.manufacturer_crl,
            )
            .unwrap()
            .0,
        },
        Versions::Default,
    )
    .unwrap();
    let info = factory.ok("GET", "/api/v1/info", None).unwrap();
    assert_eq!(info["state"], "factory");
    assert_eq!(
        factory
            .call(
                "POST",
                "/api/v1/login",
                Some(&json!({"username": "admin", "password": "x"}))
            )
            .unwrap()
            .status,
        409
    );
    // The old credential is still dead; wrong ones lock commissioning after five tries.
    for _ in 0..5 {
        let r = factory
            .call(
                "POST",
                "/api/v1/commission/begin",
                Some(&json!({"factory_credential": cred.trim(), "device_name": "x.example"})),
            )
            .unwrap();
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = factory
        .call(
            "POST",
            "/api/v1/commission/begin",
            Some(&json!({"factory_credential": new_cred, "device_name": "x.example"})),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("locked")),
        "{}",
        r.body
    );
    // The state directory is consistent for a restart in factory state
    // (checked once the daemon is stopped: `check` refuses a directory a
    // drivesecd runs on).
    assert!(drivesec_lab::daemons::stop(lab.m.devices[0].pid.unwrap()));
    let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--state")
        .arg(lab.device_dir())
        .arg("check")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The offline factory reset (`drivesecd --state DIR factory-reset`,
/// physical access) erases what the reset over the API does, the drive
/// parameters the owner set included: no `params.json` is left for the
/// next owner. (Before, only the API's reset shredded it.)
#[test]
fn an_offline_factory_reset_erases_the_owners_parameters() {
    let mut lab = test_lab(None);
    let params = lab.device_dir().join("params.json");
    lab.session("engineer")
        .ok(
            "PUT",
            "/api/v1/params/max-speed",
            Some(&json!({"value": 1400})),
        )
        .unwrap();
    assert!(params.exists(), "the parameter was not stored");
    lab.stop_device();
    let o = Command::new(env!("CARGO_BIN_EXE_drivesecd"))
        .arg("--state")
        .arg(lab.device_dir())
        .arg("factory-reset")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !params.exists(),
        "the previous owner's parameters survived the reset"
    );
    // The directory starts as a factory device.
    lab.start_again().unwrap();
    let info = lab
        .factory_client(&lab.identity("viewer"))
        .ok("GET", "/api/v1/info", None)
        .unwrap();
    assert_eq!(info["state"], "factory");
}
