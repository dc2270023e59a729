//! Forwarding the audit trail (issue 16, item 5), against real drivesecd
//! processes and real rsyslog collectors (RFC 5425, mutual TLS) on
//! loopback: configured over the API, a collector whose certificate the
//! owner revoked gets nothing, a CRL installed while a connection is open
//! ends it, nothing is lost meanwhile, the structured data carries the
//! project's enterprise number (or the configured one) and the latest
//! checkpoint, and forwarding follows an LDevID renewal.

use crate::support::{
    Collector, TestLab, config, fresh_lab_may_reset, renew_every_ldevid, test_lab, wait_until,
};
use drivesec_client::client::DeviceClient;
use drivesec_pki::Ca;
use serde_json::{Value, json};

impl Collector {
    /// The `seq` of every message received, in arrival order.
    fn seqs(&self) -> Vec<u64> {
        self.lines()
            .iter()
            .filter_map(|l| param(l, "seq"))
            .collect()
    }
}

/// An SD param's numeric value in a received message.
fn param(line: &str, name: &str) -> Option<u64> {
    line.split(&format!(" {name}=\""))
        .nth(1)?
        .split('"')
        .next()?
        .parse()
        .ok()
}

/// `GET /api/v1/audit/forwarding`'s `status`.
fn status(admin: &DeviceClient) -> Value {
    admin.ok("GET", "/api/v1/audit/forwarding", None).unwrap()["status"].clone()
}

/// Points the device's forwarding at `c`, as `admin`.
fn forward_to(admin: &DeviceClient, lab: &TestLab, c: &Collector) {
    admin
        .ok("PUT", "/api/v1/audit/forwarding", Some(&c.forwarding(lab)))
        .unwrap();
}

/// A fresh test record, handed to the forwarder now: its sequence number.
fn test_record(admin: &DeviceClient) -> u64 {
    admin
        .ok("POST", "/api/v1/audit/forwarding/test", None)
        .unwrap()["seq"]
        .as_u64()
        .unwrap()
}

/// Revokes `serial` at the lab's OEM CA and installs the new CRL on the device.
fn revoke_and_install(lab: &TestLab, serial: &str) {
    let mut oem = Ca::open(&lab.m.oem_ca_dir).unwrap();
    let crl = oem.revoke(serial, "key-compromise").unwrap();
    let r = lab.put_crl(&std::fs::read_to_string(crl).unwrap());
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The device holds its owner's CRL naming the collector's certificate:
/// it used to forward its trail to that collector anyway. Now the handshake
/// is refused, nothing reaches the collector, the status says why and the
/// cursor stays, so a good collector later gets everything.
#[test]
fn a_revoked_collector_receives_nothing() {
    let lab = test_lab(Some(config()));
    let revoked = Collector::start(&lab);
    revoke_and_install(&lab, &revoked.serial);
    let admin = lab.admin();
    forward_to(&admin, &lab, &revoked);
    let seq = test_record(&admin);
    wait_until("the record delivered or two refused attempts", || {
        let st = status(&admin);
        st["forwarded"].as_u64().unwrap() >= seq || st["failures"].as_u64().unwrap() >= 2
    });
    let st = status(&admin);
    assert!(
        revoked.lines().is_empty(),
        "the revoked collector received the trail: {:?}",
        revoked.lines().first()
    );
    assert_eq!(st["forwarded"], 0, "{st}");
    assert_eq!(st["connected"], false, "{st}");
    let why = st["collector_refused"].as_str().unwrap_or_default();
    assert!(why.contains("revoked"), "{st}");
    assert!(
        st["last_error"].as_str().unwrap().contains("revoked"),
        "{st}"
    );
    // The posture says forwarding does not deliver, and why.
    let posture = admin.ok("GET", "/api/v1/posture", None).unwrap();
    let reasons = posture["foundational_requirements"].to_string();
    assert!(
        reasons.contains("collector's certificate was refused") && reasons.contains("revoked"),
        "{reasons}"
    );

    // A good collector: everything arrives, from record 1, once, in order.
    let good = Collector::start(&lab);
    forward_to(&admin, &lab, &good);
    let seq = test_record(&admin);
    wait_until("delivery to the good collector", || {
        good.seqs().last().is_some_and(|l| *l >= seq)
    });
    let got = good.seqs();
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
    let st = status(&admin);
    assert!(st["collector_refused"].is_null(), "{st}");

    // Its certificate revoked while connected: the open connection ends at
    // the installation, and records after it go nowhere.
    revoke_and_install(&lab, &good.serial);
    // (Adopting the CRL closed the API's open connections.)
    let admin = lab.admin();
    let later = test_record(&admin);
    wait_until("the forwarder to refuse the collector", || {
        let st = status(&admin);
        st["collector_refused"]
            .as_str()
            .is_some_and(|w| w.contains("revoked"))
            || st["forwarded"].as_u64().unwrap() >= later
    });
    assert!(
        !good.seqs().contains(&later),
        "a record reached the collector after its certificate was revoked"
    );
    let st = status(&admin);
    assert!(st["forwarded"].as_u64().unwrap() < later, "{st}");
}

/// The structured data's SD-ID carries the project's private enterprise
/// number (50316, not RFC 5612's documentation number 32473), or the one
/// configured; a number that is not a positive integer is refused. Every
/// message carries the device's latest signed checkpoint.
#[test]
fn messages_carry_the_enterprise_number_and_the_checkpoint() {
    let mut cfg = config();
    cfg.audit.checkpoint_every = 5;
    let lab = test_lab(Some(cfg));
    let c = Collector::start(&lab);
    let checkpoint = || -> u64 {
        let p = lab.device_dir().join("audit").join("checkpoint.json");
        let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        v["seq"].as_u64().unwrap()
    };
    let signed_before = checkpoint();
    assert!(
        signed_before > 0,
        "the lab's device signed no checkpoint yet"
    );
    let admin = lab.admin();
    forward_to(&admin, &lab, &c);
    let seq = test_record(&admin);
    wait_until("delivery", || c.seqs().contains(&seq));
    for l in c.lines() {
        assert!(l.contains(" [drivesec@50316 seq=\""), "{l}");
        assert!(!l.contains("32473"), "{l}");
        assert!(param(&l, "checkpoint").is_some(), "{l}");
    }

    // The settings pointing at `c`, with `field` set to `v`, put by the admin.
    let put_with = |field: &str, v: &Value| {
        let mut body = c.forwarding(&lab);
        body[field] = v.clone();
        admin
            .call("PUT", "/api/v1/audit/forwarding", Some(&body))
            .unwrap()
    };
    // Zero is refused by the check (400), what is not an unsigned 32-bit
    // integer by the body's parser (422, bad-json).
    for (bad, status) in [
        (json!(0), 400),
        (json!(-1), 422),
        (json!(1.5), 422),
        (json!("50316"), 422),
        (json!(4294967296u64), 422),
    ] {
        let r = put_with("enterprise_number", &bad);
        assert_eq!(r.status, status, "{bad}: {}", r.body);
        if status == 400 {
            let m = r.body["message"].as_str().unwrap();
            assert!(m.contains("enterprise number 0"), "{m}");
        }
    }
    let got = admin.ok("GET", "/api/v1/audit/forwarding", None).unwrap();
    assert!(got["settings"].get("enterprise_number").is_none(), "{got}");
    // The message size limit is checked the same way.
    for (bad, status) in [(json!(2047), 400), (json!(262145), 400), (json!(-5), 422)] {
        let r = put_with("max_message_bytes", &bad);
        assert_eq!(r.status, status, "{bad}: {}", r.body);
    }
    let mut body = c.forwarding(&lab);
    body["enterprise_number"] = json!(99999);
    body["max_message_bytes"] = json!(4096);
    admin
        .ok("PUT", "/api/v1/audit/forwarding", Some(&body))
        .unwrap();
    let got = admin.ok("GET", "/api/v1/audit/forwarding", None).unwrap();
    assert_eq!(got["settings"]["enterprise_number"], 99999, "{got}");
    assert_eq!(got["settings"]["max_message_bytes"], 4096, "{got}");
    let seq = test_record(&admin);
    wait_until("delivery", || c.seqs().contains(&seq));
    let last = c.lines().last().cloned().unwrap();
    assert!(last.contains(" [drivesec@99999 seq=\""), "{last}");

    // The checkpoint param is the device's latest signed checkpoint when
    // the message left: never below the one signed before forwarding
    // began, never beyond the latest, never going backwards.
    let cps: Vec<u64> = c
        .lines()
        .iter()
        .filter_map(|l| param(l, "checkpoint"))
        .collect();
    assert_eq!(cps.len(), c.lines().len());
    assert!(cps.windows(2).all(|w| w[0] <= w[1]), "{cps:?}");
    assert!(cps[0] >= signed_before, "{signed_before}: {cps:?}");
    assert!(*cps.last().unwrap() <= checkpoint(), "{cps:?}");
}

/// A renewal replaces the LDevID key the forwarder signed its handshakes
/// with (the old one is destroyed): forwarding goes on under the new
/// identity, without a restart or new settings.
#[test]
fn forwarding_follows_an_ldevid_renewal() {
    let lab = test_lab(Some(config()));
    let c = Collector::start(&lab);
    let admin = lab.admin();
    forward_to(&admin, &lab, &c);
    let seq = test_record(&admin);
    wait_until("delivery before", || c.seqs().contains(&seq));
    drop(admin);
    let (code, out, err) = renew_every_ldevid(&lab);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("\"renewed\": true") || out.contains("\"renewed\":true"),
        "{out}"
    );
    // A new connection needs a new handshake, signed with the new key.
    c.restart(&lab);
    let admin = lab.admin();
    let seq = test_record(&admin);
    wait_until("delivery after the renewal", || c.seqs().contains(&seq));
    let st = status(&admin);
    assert!(
        st["last_error"].is_null() || st["connected"] == true,
        "{st}"
    );
}

#[test]
fn audit_forwarding_configured_through_the_api_reaches_a_real_collector() {
    let lab = test_lab(Some(fresh_lab_may_reset()));
    let collector = Collector::start(&lab);
    let port = collector.port;
    let admin = lab.admin();
    // A viewer may not configure it; the security admin may.
    let body = json!({"collector": format!("127.0.0.1:{port}"), "server_name": "127.0.0.1", "ca_pem": std::fs::read_to_string(&lab.m.oem_ca).unwrap()});
    assert_eq!(
        lab.session("viewer")
            .call("PUT", "/api/v1/audit/forwarding", Some(&body))
            .unwrap()
            .status,
        403
    );
    admin
        .ok("PUT", "/api/v1/audit/forwarding", Some(&body))
        .unwrap();
    lab.session("operator")
        .ok(
            "PUT",
            "/api/v1/params/speed-reference",
            Some(&json!({"value": 321})),
        )
        .unwrap();
    wait_until("the parameter write at the collector", || {
        collector.lines().iter().any(|l| l.contains("\"new\":321"))
    });
    let got = collector.seqs();
    assert_eq!(
        got,
        (1..=got.len() as u64).collect::<Vec<_>>(),
        "every record from the first, in order, once"
    );
    // The forwarder's cursor follows the collector's acknowledgements.
    wait_until("the forwarder's cursor to follow the collector", || {
        status(&admin)["forwarded"].as_u64().unwrap() >= got.len() as u64 - 1
    });
    // A test record: its sequence number arrives at the collector, and the
    // device's status says it was delivered.
    let seq = test_record(&admin);
    wait_until("the test record at the collector", || {
        collector.seqs().contains(&seq)
    });
    let text = collector.lines().join("\n");
    assert!(text.contains("audit.forwarding.test"), "{text}");
    // The device counts it delivered once the write returned (it may log
    // at the collector a moment before).
    wait_until("the status to count the test record delivered", || {
        status(&admin)["forwarded"].as_u64().unwrap() >= seq
    });
    // The posture no longer loses points for missing forwarding.
    let p = admin.ok("GET", "/api/v1/posture", None).unwrap();
    assert!(
        !p.to_string().contains("audit forwarding not configured"),
        "{p}"
    );
    // A factory reset archives the local trail, and its own record reaches the collector first.
    lab.factory_reset();
    wait_until(
        "the reset's record at the collector (sent before the wipe)",
        || {
            collector
                .lines()
                .iter()
                .any(|l| l.contains("device.factory-reset"))
        },
    );
}
