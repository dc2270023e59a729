//! What the device API does with bad input: malformed, oversized and deeply
//! nested bodies are refused with a 4xx and change nothing; a request
//! naming what does not exist is told which name that is; a setting the
//! device cannot store changes nothing; every answer forbids caching and
//! sniffing, and errors leak no paths.

use std::io::Write;

use crate::support::{read_head, state_survives, test_lab};
use serde_json::json;

/// Every answer forbids caching and content sniffing, and an internal
/// error names no path of the device.
#[test]
fn answers_carry_no_store_and_nosniff_and_errors_leak_no_paths() {
    let lab = test_lab(None);
    let mut s = lab.raw_tls(&lab.identity("viewer"));
    s.write_all(b"GET /api/v1/info HTTP/1.1\r\nHost: d\r\n\r\n")
        .unwrap();
    let head = read_head(&mut s).unwrap().to_lowercase();
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    let auditor = lab.session("auditor");
    let r = auditor
        .call(
            "GET",
            "/api/v1/audit/trail/segment?name=00000000000000099999.seg&bytes=10",
            None,
        )
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let text = r.body.to_string();
    assert!(
        !text.contains(lab.m.devices[0].dir.to_str().unwrap()) && !text.contains("/audit/"),
        "{text}"
    );
}

/// A body nested thousands of levels deep (inside the size limit) is
/// refused with a 4xx by the JSON parser's depth limit; nothing changes
/// and the device keeps serving.
#[test]
fn deeply_nested_json_is_refused_and_changes_nothing() {
    let lab = test_lab(None);
    let engineer = lab.session("engineer");
    let before = engineer.ok("GET", "/api/v1/params", None).unwrap();
    let depth = 20_000;
    let body = format!("{{\"value\": {}1{}}}", "[".repeat(depth), "]".repeat(depth));
    let token = engineer.session.clone().unwrap();
    let mut s = lab.raw_tls(&lab.identity("engineer"));
    s.write_all(
        format!(
            "PUT /api/v1/params/max-speed HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let head = read_head(&mut s).expect("no answer");
    assert!(head.starts_with("HTTP/1.1 4"), "{head}");
    assert_eq!(engineer.ok("GET", "/api/v1/params", None).unwrap(), before);
    state_survives(&lab);
}

#[test]
fn bad_input_is_refused_with_4xx_and_changes_nothing() {
    let lab = test_lab(None);
    let c = lab.session("engineer");
    let before = c.ok("GET", "/api/v1/params", None).unwrap()["values"].clone();
    let raw = |body: &[u8], ct: &str| {
        c.call_raw("PUT", "/api/v1/params/accel-time", Some(body.to_vec()), ct)
            .unwrap()
    };
    let r = raw(b"{\"value\": ", "application/json");
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("bad-json")),
        "{}",
        r.body
    );
    let r = raw(b"{\"value\": 3, \"extra\": true}", "application/json");
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field"),
        "{}",
        r.body
    );
    let r = raw(b"{\"value\": \"fast\"}", "application/json");
    assert_eq!(r.status, 422, "{}", r.body);
    let r = raw(b"value=3", "application/x-www-form-urlencoded");
    assert_eq!(r.status, 415, "{}", r.body);
    // Just over the 64 KiB limit (small enough to be written before the answer).
    let big = format!("{{\"value\": 3, \"pad\": \"{}\"}}", "a".repeat(70_000));
    let r = raw(big.as_bytes(), "application/json");
    assert_eq!(r.status, 413, "{}", r.body);
    for (name, value) in [
        ("accel-time", 0.0),
        ("max-speed", 99_999.0),
        ("motor-poles", 5.0),
        ("motor-rated-speed", 1460.5),
    ] {
        let r = c
            .call(
                "PUT",
                &format!("/api/v1/params/{name}"),
                Some(&json!({"value": value})),
            )
            .unwrap();
        assert_eq!(r.status, 422, "{name}={value}: {}", r.body);
        assert!(
            r.body["message"].as_str().unwrap().contains(name),
            "{}",
            r.body
        );
    }
    let r = c
        .call(
            "PUT",
            "/api/v1/params/no-such-param",
            Some(&json!({"value": 1})),
        )
        .unwrap();
    assert_eq!(r.status, 404);
    let r = c.call("GET", "/api/v1/no/such/endpoint", None).unwrap();
    assert_eq!(r.status, 404);
    let after = c.ok("GET", "/api/v1/params", None).unwrap()["values"].clone();
    assert_eq!(before, after, "a refused write changed something");
    // The daemon is alive and well.
    assert_eq!(c.call("GET", "/api/v1/info", None).unwrap().status, 200);
}

/// A role change for an account that does not exist, to a role that does
/// not exist either, is refused naming the account (the first thing
/// wrong), not the role: the unknown-role answer, which lists the roles,
/// is given only when the role is what is unknown.
#[test]
fn a_role_change_for_an_unknown_account_names_the_account_not_the_role() {
    let lab = test_lab(None);
    let admin = lab.admin();
    let r = admin
        .call(
            "PUT",
            "/api/v1/users/ghost/role",
            Some(&json!({"role": "nope"})),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("not-found")),
        "{}",
        r.body
    );
    let message = r.body["message"].as_str().unwrap();
    assert!(message.contains("no such user: ghost"), "{message}");
    assert!(!message.contains("role"), "{message}");
    // An existing account and an unknown role: the role is named, with
    // the roles there are.
    let viewer = &lab.m.users["viewer"].username;
    let r = admin
        .call(
            "PUT",
            &format!("/api/v1/users/{viewer}/role"),
            Some(&json!({"role": "nope"})),
        )
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let message = r.body["message"].as_str().unwrap();
    assert!(
        message.starts_with("no such role: nope (the roles are: "),
        "{message}"
    );
}

/// An access policy the device cannot store (here `access-policy.json`
/// cannot be replaced: a directory stands in its place) is refused and
/// applied nowhere: not half, with the accounts already checking
/// passwords against it while the stored policy and the one read back are
/// the old. A password the old policy accepts is still accepted.
#[test]
fn an_access_policy_the_device_cannot_store_is_not_applied() {
    let lab = test_lab(None);
    let admin = lab.admin();
    let before = admin.ok("GET", "/api/v1/security/access", None).unwrap();
    let mut stricter = before.clone();
    stricter["password"]["min_length"] = 64.into();
    let file = lab.device_dir().join("access-policy.json");
    let _ = std::fs::remove_file(&file);
    std::fs::create_dir(&file).unwrap();
    std::fs::write(file.join("in-the-way"), b"").unwrap();
    let r = admin
        .call("PUT", "/api/v1/security/access", Some(&stricter))
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (500, Some("internal")),
        "{}",
        r.body
    );
    assert_eq!(
        admin.ok("GET", "/api/v1/security/access", None).unwrap(),
        before
    );
    // 20 characters: enough for the old policy, not for the refused one.
    admin
        .ok(
            "POST",
            "/api/v1/users",
            Some(&json!({"username": "newcomer", "role": "viewer",
                "password": "Temporary-Passw0rd-1"})),
        )
        .unwrap();
}
