//! Randomised fuzzing of the device API's request handling, in process.
//!
//! Every request goes through the real router of a commissioned device
//! (the same `drivesec_device::build` drivesecd runs), with the TLS layer's
//! connection information attached: random methods, mutated paths and query
//! strings, valid and forged sessions, and bodies mutated from valid JSON
//! seeds (bit flips, truncation, splices, random bytes, deep nesting,
//! oversized values). The property: no panic, never a 5xx, and every error
//! is a JSON object naming the problem. `DRIVESEC_FUZZ_ITERS` sets the number
//! of requests (default 20000; `scripts/test --long` uses 500000).

use std::path::PathBuf;

use axum::body::Body;
use drivesec_device::api::ConnInfo;
use drivesec_lab::up::LabOptions;
use drivesec_pki::{Ca, IssueRequest, Profile, SubjectKey};
use drivesec_state::StateDir;
use drivesec_state::config::DeviceConfig;
use drivesec_testkit::Rng;
use http_body_util::BodyExt;
use tower::ServiceExt;

const PATHS: &[&str] = &[
    "/api/v1/info",
    "/api/v1/login",
    "/api/v1/logout",
    "/api/v1/me",
    "/api/v1/me/password",
    "/api/v1/users",
    "/api/v1/users/admin",
    "/api/v1/users/admin/role",
    "/api/v1/users/admin/unlock",
    "/api/v1/users/admin/password",
    "/api/v1/roles",
    "/api/v1/roles/x",
    "/api/v1/sessions",
    "/api/v1/sessions/abcd",
    "/api/v1/params",
    "/api/v1/params/speed-reference",
    "/api/v1/params/max-speed",
    "/api/v1/audit",
    "/api/v1/audit/export",
    "/api/v1/audit/forwarding",
    "/api/v1/audit/forwarding/test",
    "/api/v1/audit/trail",
    "/api/v1/audit/trail/segment",
    "/api/v1/posture",
    "/api/v1/security/crl",
    "/api/v1/security/access",
    "/api/v1/commission/begin",
    "/api/v1/commission/complete",
    "/api/v1/openapi.json",
];

const SEEDS: &[&str] = &[
    r#"{"username":"admin","password":"Setup-Passw0rd-Sec-1"}"#,
    r#"{"value":1200}"#,
    r#"{"username":"u1","role":"viewer","password":"Strong-Passw0rd-2026"}"#,
    r#"{"role":"engineer"}"#,
    r#"{"name":"r","permissions":["read-info","read-params"]}"#,
    r#"{"collector":"127.0.0.1:6514","server_name":"x","ca_pem":"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"}"#,
    r#"{"crl_pem":"-----BEGIN X509 CRL-----\nAA==\n-----END X509 CRL-----\n"}"#,
    r#"{"old_password":"a","new_password":"b"}"#,
    r#"{"factory_credential":"AAAAA-AAAAA","device_name":"d.example"}"#,
    r#"{"banner":"x","password":{"min_length":12},"lockout":{},"session":{},"hash":{}}"#,
];

const QUERIES: &[&str] = &[
    "",
    "?limit=5",
    "?from=1&to=3",
    "?since=2026-01-01T00:00:00Z",
    "?outcome=denied",
    "?limit=-1",
    "?from=99999999999999999999",
    "?action=auth.",
    "?bogus=1",
    "?since=yesterday",
    "?%zz",
    "?limit=1&limit=2",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(8) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => b.truncate(rng.below(b.len())),
            2 => {
                let other = rng.pick(SEEDS).as_bytes();
                let at = rng.below(b.len() + 1);
                let from = rng.below(other.len());
                b.splice(at..at, other[from..].iter().copied());
            }
            3 => b = rng.bytes(63),
            4 => {
                b = format!(
                    "{}1{}",
                    "[".repeat(rng.below(5000)),
                    "]".repeat(rng.below(5000))
                )
                .into_bytes()
            }
            5 => {
                b = format!(
                    r#"{{"value":{}}}"#,
                    rng.pick(&[
                        "1e999",
                        "-0",
                        "NaN",
                        "\"1\"",
                        "null",
                        "1e308",
                        "[1]",
                        "{}",
                        "18446744073709551616"
                    ])
                )
                .into_bytes()
            }
            6 => {
                b = format!(
                    r#"{{"username":"{}","password":"{}"}}"#,
                    "a".repeat(rng.below(300)),
                    "\u{0}".repeat(rng.below(10))
                )
                .into_bytes()
            }
            _ => {}
        }
    }
    b
}

#[test]
fn api_request_handling_survives_random_input() {
    let iters = drivesec_testkit::iters(20_000, 1);
    let tmp = tempfile::tempdir().unwrap();
    let m = drivesec_lab::up::up(&LabOptions::new(tmp.path().join("lab")), &mut |_| {}).unwrap();
    // Commission in process: LDevID from the OEM CA, the owner's trust, an admin.
    let dir: PathBuf = m.devices[0].dir.clone();
    let st = StateDir::load(&dir).unwrap();
    let csr = st.ldevid_csr("fuzz.example").unwrap();
    let mut oem = Ca::open(&m.oem_ca_dir).unwrap();
    let ldevid = oem
        .issue(&IssueRequest {
            profile: Profile::LdevId {
                serial_number: m.devices[0].serial_number.clone(),
                device_name: "fuzz.example".into(),
                ip_addresses: vec![],
                days: 30,
            },
            key: SubjectKey::CsrPem {
                source: "fuzz".into(),
                pem: csr,
            },
        })
        .unwrap();
    let root = std::fs::read_to_string(&m.oem_ca).unwrap();
    let mut cfg = DeviceConfig::new("127.0.0.1:0".parse().unwrap());
    // The cheapest hash the access policy allows (docs/permissions.md).
    cfg.access.hash.memory_kib = drivesec_access::MIN_HASH_MEMORY_KIB;
    cfg.access.hash.iterations = 5;
    let policy = cfg.access.clone();
    st.install_ownership(
        "fuzz.example",
        &ldevid.chain_pem,
        &root,
        None,
        |_| Ok(()),
        |p| {
            let mut a = drivesec_access::Accounts::create(p, policy.clone()).unwrap();
            a.add_user(
                "admin",
                "security-admin",
                "Setup-Passw0rd-Sec-1",
                time::OffsetDateTime::now_utc(),
            )
            .unwrap();
            Ok(())
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_dev, router) = rt
        .block_on(async { drivesec_device::build(&dir, cfg) })
        .unwrap();
    let conn = ConnInfo {
        fingerprint: "ab".repeat(32),
        addr: "127.0.0.1:50000".parse().unwrap(),
        trust_generation: 0,
    };
    let send = |method: &str, uri: &str, auth: Option<&str>, body: Vec<u8>, ct: &str| {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", ct);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let mut req = match req.body(Body::from(body)) {
            Ok(r) => r,
            Err(_) => return None, // not even a valid HTTP request line: hyper would refuse it first
        };
        req.extensions_mut().insert(conn.clone());
        let router = router.clone();
        Some(rt.block_on(async move {
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, bytes)
        }))
    };
    // A real session, so authorised handlers get fuzzed too.
    let (st, body) = send(
        "POST",
        "/api/v1/login",
        None,
        SEEDS[0].as_bytes().to_vec(),
        "application/json",
    )
    .unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let session = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["session"]
        .as_str()
        .unwrap()
        .to_string();
    let doc: serde_json::Value = serde_json::from_str(drivesec_device::api::OPENAPI).unwrap();
    let ops: Vec<(&'static str, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, item)| {
            item.as_object().unwrap().keys().map(move |m| {
                let m: &'static str = match m.as_str() {
                    "get" => "GET",
                    "post" => "POST",
                    "put" => "PUT",
                    _ => "DELETE",
                };
                (m, p.clone())
            })
        })
        .collect();
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..iters {
        // Mostly a documented (method, path) pair, sometimes anything.
        let (method, mut path) = if rng.below(5) == 0 {
            (
                *rng.pick(&["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
                rng.pick(PATHS).to_string(),
            )
        } else {
            let (m, p) = rng.pick(&ops);
            (
                *m,
                p.replace("{name}", {
                    const NAMES: [&str; 6] =
                        ["admin", "viewer", "speed-reference", "x", "%20", "a/b"];
                    NAMES[rng.below(NAMES.len())]
                })
                .replace("{handle}", "abcd"),
            )
        };
        if rng.below(6) == 0 {
            let pos = rng.below(path.len() + 1);
            const PIECES: [&str; 8] = ["/", "%", "%2e%2e", "..", "x", "%00", "//", "~"];
            let piece = *rng.pick(&PIECES);
            path.insert_str(pos, piece);
        }
        let uri = format!("{path}{}", rng.pick(QUERIES));
        let auth = match rng.below(4) {
            0 => None,
            1 => Some(format!("Bearer {}", "0".repeat(64))),
            2 => Some("Basic YWRtaW46YWRtaW4=".to_string()),
            _ => Some(format!("Bearer {session}")),
        };
        // Never log out or reset the one session we have; everything else goes.
        if auth.as_deref() == Some(&format!("Bearer {session}"))
            && (path.contains("logout")
                || path.contains("factory-reset")
                || path.contains("sessions/"))
        {
            continue;
        }
        let seed = rng.clone_seed();
        let body = mutate(&mut rng, seed.as_bytes());
        let ct = *rng.pick(&[
            "application/json",
            "application/json",
            "text/plain",
            "application/json; charset=utf-8",
        ]);
        let Some((status, bytes)) = send(method, &uri, auth.as_deref(), body.clone(), ct) else {
            continue;
        };
        *statuses.entry(status).or_insert(0u32) += 1;
        assert!(
            status < 500 || status == 503,
            "iteration {i}: {method} {uri} -> {status} {} (body {:?})",
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&body)
        );
        if status >= 400 && method != "HEAD" && !bytes.is_empty() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "iteration {i}: {method} {uri} -> {status} non-JSON error {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert!(
                v["message"].as_str().is_some_and(|m| !m.is_empty()),
                "iteration {i}: {v}"
            );
        }
    }
    // The run reached the handlers, not only the router's refusals.
    assert!(statuses.keys().any(|s| *s == 200), "{statuses:?}");
    assert!(
        statuses
            .keys()
            .any(|s| (400..500).contains(s) && *s != 404 && *s != 405),
        "{statuses:?}"
    );
    eprintln!("fuzz: {iters} requests, statuses {statuses:?}");
}

trait Seed {
    fn clone_seed(&mut self) -> &'static str;
}

impl Seed for Rng {
    fn clone_seed(&mut self) -> &'static str {
        SEEDS[self.below(SEEDS.len())]
    }
}
