//! The device API's access control: every built-in role against every
//! operation (the role x operation matrix), on a real drivesecd.

use crate::support::{outcome, test_lab};
use drivesec_client::client::Reply;
use serde_json::{Value, json};

fn status(r: &Reply) -> u16 {
    r.status
}

/// One API operation with a request that passes validation, or that fails
/// only after authorisation (so 401/403 can only come from access control).
struct Op {
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    permission: &'static str,
}

fn operations() -> Vec<Op> {
    let strong = "Matrix-Passw0rd-2026";
    vec![
        Op {
            method: "GET",
            path: "/api/v1/params",
            body: None,
            permission: "read-params",
        },
        Op {
            method: "PUT",
            path: "/api/v1/params/speed-reference",
            body: Some(json!({"value": 10})),
            permission: "write-params-operation",
        },
        Op {
            method: "PUT",
            path: "/api/v1/params/accel-time",
            body: Some(json!({"value": 5})),
            permission: "write-params-limits",
        },
        Op {
            method: "PUT",
            path: "/api/v1/params/motor-rated-power",
            body: Some(json!({"value": 7.5})),
            permission: "write-params-motor",
        },
        Op {
            method: "GET",
            path: "/api/v1/users",
            body: None,
            permission: "read-users",
        },
        Op {
            method: "POST",
            path: "/api/v1/users",
            body: Some(json!({"username": "matrix-user", "role": "viewer", "password": strong})),
            permission: "manage-users",
        },
        Op {
            method: "DELETE",
            path: "/api/v1/users/nobody",
            body: None,
            permission: "manage-users",
        },
        Op {
            method: "PUT",
            path: "/api/v1/users/nobody/role",
            body: Some(json!({"role": "viewer"})),
            permission: "manage-users",
        },
        Op {
            method: "POST",
            path: "/api/v1/users/nobody/unlock",
            body: None,
            permission: "manage-users",
        },
        Op {
            method: "POST",
            path: "/api/v1/users/nobody/password",
            body: Some(json!({"password": strong})),
            permission: "manage-users",
        },
        Op {
            method: "GET",
            path: "/api/v1/roles",
            body: None,
            permission: "read-users",
        },
        Op {
            method: "POST",
            path: "/api/v1/roles",
            body: Some(json!({"name": "matrix-role", "permissions": ["read-info"]})),
            permission: "manage-roles",
        },
        Op {
            method: "DELETE",
            path: "/api/v1/roles/no-such-role",
            body: None,
            permission: "manage-roles",
        },
        Op {
            method: "GET",
            path: "/api/v1/sessions",
            body: None,
            permission: "read-sessions",
        },
        Op {
            method: "DELETE",
            path: "/api/v1/sessions/0000000000000000",
            body: None,
            permission: "terminate-sessions",
        },
        Op {
            method: "GET",
            path: "/api/v1/audit?limit=1",
            body: None,
            permission: "read-audit",
        },
        Op {
            method: "GET",
            path: "/api/v1/audit/export?from=1&to=2",
            body: None,
            permission: "read-audit",
        },
        Op {
            method: "GET",
            path: "/api/v1/audit/forwarding",
            body: None,
            permission: "read-security-settings",
        },
        Op {
            method: "PUT",
            path: "/api/v1/audit/forwarding",
            body: Some(json!({"collector": "not-an-address", "server_name": "x", "ca_pem": "x"})),
            permission: "configure-audit-forwarding",
        },
        Op {
            method: "GET",
            path: "/api/v1/audit/trail",
            body: None,
            permission: "read-audit",
        },
        Op {
            method: "GET",
            path: "/api/v1/audit/trail/segment?name=00000000000000000001.seg&bytes=0",
            body: None,
            permission: "read-audit",
        },
        // Forwarding is not configured here: allowed callers get 409.
        Op {
            method: "POST",
            path: "/api/v1/audit/forwarding/test",
            body: None,
            permission: "configure-audit-forwarding",
        },
        Op {
            method: "GET",
            path: "/api/v1/posture",
            body: None,
            permission: "read-security-settings",
        },
        Op {
            method: "GET",
            path: "/api/v1/security/access",
            body: None,
            permission: "read-security-settings",
        },
        Op {
            method: "PUT",
            path: "/api/v1/security/access",
            body: Some(serde_json::to_value(drivesec_access::AccessPolicy::default()).unwrap()),
            permission: "write-security-settings",
        },
        Op {
            method: "PUT",
            path: "/api/v1/security/crl",
            body: Some(json!({"crl_pem": "not a CRL"})),
            permission: "manage-trust",
        },
        Op {
            method: "GET",
            path: "/api/v1/firmware",
            body: None,
            permission: "read-info",
        },
        // Not an image: refused with 400 where allowed, nothing staged.
        Op {
            method: "POST",
            path: "/api/v1/firmware",
            body: Some(json!({"not": "an image"})),
            permission: "update-firmware",
        },
        Op {
            method: "POST",
            path: "/api/v1/firmware/reboot",
            body: None,
            permission: "update-firmware",
        },
        Op {
            method: "POST",
            path: "/api/v1/attest",
            body: Some(json!({"nonce": "00112233445566778899aabbccddeeff"})),
            permission: "read-info",
        },
        Op {
            method: "PUT",
            path: "/api/v1/firmware/trust",
            body: Some(json!({"statement": "bm90IGEgc3RhdGVtZW50"})),
            permission: "manage-trust",
        },
        Op {
            method: "GET",
            path: "/api/v1/drive",
            body: None,
            permission: "read-info",
        },
        Op {
            method: "PUT",
            path: "/api/v1/drive/control",
            body: Some(json!({"command": "stop"})),
            permission: "drive-control",
        },
        Op {
            method: "GET",
            path: "/api/v1/modbus/rights",
            body: None,
            permission: "read-security-settings",
        },
        Op {
            method: "PUT",
            path: "/api/v1/modbus/rights",
            body: Some(drivesec_lab::up::lab_modbus_rights()),
            permission: "write-security-settings",
        },
        Op {
            method: "GET",
            path: "/api/v1/profile",
            body: None,
            permission: "read-security-settings",
        },
        // No renewal is in progress: allowed callers get 409, others 403.
        Op {
            method: "PUT",
            path: "/api/v1/identity/ldevid",
            body: Some(json!({"chain_pem": "not a chain"})),
            permission: "manage-trust",
        },
        // Executed only where it is denied; the allowed case is its own test.
        Op {
            method: "POST",
            path: "/api/v1/factory-reset",
            body: Some(json!({"password": "not checked before the permission"})),
            permission: "factory-reset",
        },
    ]
}

#[test]
fn every_role_against_every_operation() {
    let lab = test_lab(None);
    let mut denied_expected = 0;
    let mut seen_permissions = std::collections::BTreeSet::new();
    for role in drivesec_access::BUILTIN_ROLE_NAMES {
        let perms: Vec<String> = drivesec_access::permissions::builtin_permissions(role)
            .unwrap()
            .into_iter()
            .map(|p| p.as_str().to_string())
            .collect();
        let c = lab.session(role);
        for op in operations() {
            seen_permissions.insert(op.permission);
            let allowed = perms.iter().any(|p| p == op.permission);
            if allowed && op.permission == "factory-reset" {
                continue;
            }
            let r = c.call(op.method, op.path, op.body.as_ref()).unwrap();
            if allowed {
                assert!(
                    ![401, 403].contains(&status(&r)),
                    "{role} should be allowed {} {}: {} {}",
                    op.method,
                    op.path,
                    r.status,
                    r.body
                );
            } else {
                denied_expected += 1;
                assert_eq!(
                    status(&r),
                    403,
                    "{role} must be denied {} {}: {}",
                    op.method,
                    op.path,
                    r.body
                );
                assert_eq!(r.body["error"], "forbidden");
                assert!(
                    r.body["message"].as_str().unwrap().contains(op.permission),
                    "{}",
                    r.body
                );
            }
        }
    }
    // The table covers every permission an API operation can need.
    for p in drivesec_access::Permission::ALL {
        let s = p.as_str();
        if !["read-info"].contains(&s) {
            assert!(
                seen_permissions.contains(s),
                "no operation in the matrix exercises {s}"
            );
        }
    }
    // Least privilege, spelled out: the security admin cannot run the drive,
    // the operator cannot change security settings, the auditor only reads.
    let admin = lab.session("security-admin");
    assert_eq!(
        admin
            .call(
                "PUT",
                "/api/v1/params/speed-reference",
                Some(&json!({"value": 1}))
            )
            .unwrap()
            .status,
        403
    );
    let op = lab.session("operator");
    assert_eq!(
        op.call(
            "PUT",
            "/api/v1/security/crl",
            Some(&json!({"crl_pem": "x"}))
        )
        .unwrap()
        .status,
        403
    );
    // Every denial is counted in the trail, attributed to the account and
    // certificate: the first of each ten-second window as its own record,
    // the rest in the window's summary (docs/audit.md, "Floods").
    lab.wait_for_counted("denials", denied_expected as u64 + 2, |r| {
        outcome(r) == "denied" && r.record.action != "net.connection-refused"
    });
    let auditor = lab.session("auditor");
    let rec = auditor
        .ok("GET", "/api/v1/audit?outcome=denied&limit=10000", None)
        .unwrap();
    let denied = rec["records"].as_array().unwrap();
    let counted: u64 = denied
        .iter()
        .filter(|r| r["action"] != "net.connection-refused")
        .map(|r| drivesec_audit::events_counted(&r["details"]))
        .sum();
    assert!(
        counted >= denied_expected as u64 + 2,
        "{counted} denials counted, {} expected",
        denied_expected + 2
    );
    assert!(denied.iter().all(|r| {
        r["details"]["certificate"]
            .as_str()
            .is_some_and(|c| c.len() == 64)
    }));
    assert!(denied.iter().all(|r| {
        r["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:"))
    }));
}
