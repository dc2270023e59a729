//! A factory reset against the owner's settings changes, on a real
//! drivesecd (review findings 4 and 5): each test sets up the interleaving
//! the finding describes and shows that the device now ends safely.
//!
//! * A forwarding change in progress when a reset is approved finishes
//!   first and the reset then erases it: the previous owner's collector is
//!   never configured on the factory device (it would receive the next
//!   owner's trail).
//! * A reset that fails after it stopped the forwarder leaves forwarding
//!   running again, delivering to the collector.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use serde_json::{Value, json};

/// The test-only hold point in the forwarding change (docs/device-state.md).
const HOLD: &str = "forwarding:hold";

/// A lab device whose two fresh security administrators may approve a
/// factory reset at once (the approver-age rule has its own test).
fn reset_lab() -> TestLab {
    let mut c = config();
    c.api.factory_reset_approver_min_age_secs = 0;
    test_lab(Some(c))
}

/// The records of a trail directory, in order.
fn trail_records(trail: &std::path::Path) -> Vec<drivesec_audit::reader::StoredRecord> {
    drivesec_audit::reader::read(trail, &drivesec_audit::reader::Query::default(), usize::MAX)
        .unwrap()
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
    let forwarded = |c: &drivesec_oem::client::DeviceClient| -> Value {
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
