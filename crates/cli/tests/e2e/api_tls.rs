//! Mutual TLS at the device API: clients without a certificate, with one
//! from another CA, expired or revoked are refused; TLS 1.1 always and TLS
//! 1.2 unless configured (then the posture says so); a trust change closes
//! the open connections, and a request held back across a CRL is not
//! served.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::support::{config, exchange, issue_client_identity, test_lab};
use drivesec_client::client::{DeviceClient, Reply, Versions};
use serde_json::json;

/// Connects with openssl, sends one request, and says whether it got a 200.
fn openssl_connect(addr: SocketAddr, extra: &[&str]) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-brief",
            "-ign_eof",
        ])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"GET /api/v1/info HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n");
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (text.contains("HTTP/1.1 200"), text)
}

fn info(c: &DeviceClient) -> drivesec_client::Result<Reply> {
    c.call("GET", "/api/v1/info", None)
}

#[test]
fn tls_refuses_a_client_without_certificate() {
    let lab = test_lab(None);
    assert_eq!(
        info(&lab.client("viewer")).unwrap().status,
        200,
        "positive control"
    );
    let anon = DeviceClient::new(lab.addr(), None, &lab.trust(), Versions::Default).unwrap();
    assert!(
        info(&anon).is_err(),
        "a client without a certificate got through"
    );
}

#[test]
fn tls_refuses_a_certificate_from_another_ca() {
    let lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut other = drivesec_pki::Ca::init(
        &d.path().join("other"),
        &drivesec_pki::CaOptions::new(drivesec_pki::CaKind::Oem, "Intruder"),
    )
    .unwrap();
    let (foreign, _) = issue_client_identity(&mut other, d.path(), Some("viewer"), None);
    let c = DeviceClient::new(lab.addr(), Some(&foreign), &lab.trust(), Versions::Default).unwrap();
    assert!(
        info(&c).is_err(),
        "a certificate from another CA got through"
    );
}

#[test]
fn tls_refuses_an_expired_certificate() {
    let lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (expired, _) = issue_client_identity(
        &mut oem,
        d.path(),
        Some("viewer"),
        Some((
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )),
    );
    let c = DeviceClient::new(lab.addr(), Some(&expired), &lab.trust(), Versions::Default).unwrap();
    assert!(info(&c).is_err(), "an expired certificate got through");
    let (fresh, _) = issue_client_identity(&mut oem, d.path(), Some("viewer"), None);
    let c = DeviceClient::new(lab.addr(), Some(&fresh), &lab.trust(), Versions::Default).unwrap();
    assert_eq!(
        info(&c).unwrap().status,
        200,
        "positive control from the same CA"
    );
}

/// A state change closes the API's open connections: the response to the
/// request that made it says `Connection: close`, and another client's idle
/// kept-alive connection is closed by the device without a request.
#[test]
fn a_trust_change_closes_open_api_connections() {
    use std::io::Read;
    let lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (_, serial) = issue_client_identity(&mut oem, d.path(), Some("viewer"), None);
    let crl = oem.revoke(&serial, "key-compromise").unwrap();
    let mut idle = lab.raw_tls(&lab.identity("viewer"));
    let r = exchange(
        &mut idle,
        "GET /api/v1/info HTTP/1.1\r\nHost: d\r\n\r\n",
        b"",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(!r.to_lowercase().contains("connection: close"), "{r}");
    let admin = lab.admin();
    let mut changer = lab.raw_tls(&lab.identity("security-admin"));
    let body = json!({"crl_pem": std::fs::read_to_string(&crl).unwrap()}).to_string();
    let r = exchange(
        &mut changer,
        &format!(
            "PUT /api/v1/security/crl HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            admin.session.as_ref().unwrap(),
            body.len()
        ),
        body.as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.to_lowercase().contains("connection: close"), "{r}");
    let mut b = [0u8; 1];
    let closed = match idle.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    assert!(closed, "the idle connection stayed open across the change");
}

/// A request whose headers arrived before the CRL and whose body is held
/// back until after it is refused unprocessed (421), not served under the
/// old trust.
#[test]
fn a_request_body_held_back_across_a_crl_is_not_served() {
    use std::io::{Read, Write};
    let lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (victim, serial) = issue_client_identity(&mut oem, d.path(), Some("viewer"), None);
    let mut c =
        DeviceClient::new(lab.addr(), Some(&victim), &lab.trust(), Versions::Default).unwrap();
    let viewer = &lab.m.users["viewer"];
    c.login(&viewer.username, &viewer.password).unwrap();
    let session = c.session.clone().unwrap();
    let mut s = lab.raw_tls(&victim);
    let body = br#"{"crl_pem": "not a CRL"}"#;
    write!(
        s,
        "PUT /api/v1/security/crl HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {session}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let crl = oem.revoke(&serial, "key-compromise").unwrap();
    lab.install_crl(&crl);
    s.write_all(body).unwrap();
    s.flush().unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    // Without the check the viewer's request is judged on its rights (403).
    assert!(
        answer.starts_with("HTTP/1.1 421"),
        "served under the old trust: {answer}"
    );
    assert!(answer.contains("connection-stale"), "{answer}");
}

#[test]
fn tls_refuses_a_revoked_certificate_once_the_crl_is_installed() {
    let lab = test_lab(None);
    let d = tempfile::tempdir().unwrap();
    let mut oem = drivesec_pki::Ca::open(&lab.m.oem_ca_dir).unwrap();
    let (victim, serial) = issue_client_identity(&mut oem, d.path(), Some("viewer"), None);
    let open =
        DeviceClient::new(lab.addr(), Some(&victim), &lab.trust(), Versions::Default).unwrap();
    assert_eq!(info(&open).unwrap().status, 200);
    assert!(
        open.has_open_connection(),
        "the client keeps its connection"
    );
    let crl = oem.revoke(&serial, "key-compromise").unwrap();
    lab.install_crl(&crl);
    let c = DeviceClient::new(lab.addr(), Some(&victim), &lab.trust(), Versions::Default).unwrap();
    assert!(info(&c).is_err(), "a revoked certificate got through");
    // The connection it had open was closed by the change, not left to it.
    assert!(
        info(&open).is_err(),
        "the revoked certificate's open connection still served"
    );
    assert_eq!(
        info(&lab.client("viewer")).unwrap().status,
        200,
        "others still get in"
    );
}

#[test]
fn tls_refuses_tls12_when_the_configuration_forbids_it() {
    let lab = test_lab(None);
    let t12 = DeviceClient::new(
        lab.addr(),
        Some(&lab.identity("viewer")),
        &lab.trust(),
        Versions::Tls12Only,
    )
    .unwrap();
    assert!(info(&t12).is_err(), "TLS 1.2 accepted although not allowed");
}

#[test]
fn tls_refuses_tls11() {
    // Offered by openssl (rustls cannot speak TLS 1.1).
    let lab = test_lab(None);
    let f = &lab.m.clients["viewer"];
    let cert = f.cert.to_str().unwrap();
    let key = f.key.to_str().unwrap();
    let (ok13, text) = openssl_connect(
        lab.addr(),
        &["-tls1_3", "-cert", cert, "-cert_chain", cert, "-key", key],
    );
    assert!(ok13, "positive control with openssl failed: {text}");
    let (ok11, text) = openssl_connect(
        lab.addr(),
        &[
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-cert",
            cert,
            "-cert_chain",
            cert,
            "-key",
            key,
        ],
    );
    assert!(!ok11, "TLS 1.1 accepted: {text}");
    // The device answers a TLS 1.1 ClientHello with a fatal alert (handshake_failure).
    assert!(
        text.contains("alert handshake failure") || text.contains("protocol version"),
        "{text}"
    );
    assert!(
        !text.contains("no protocols available"),
        "openssl did not offer TLS 1.1: {text}"
    );
}

#[test]
fn tls12_only_when_allowed_and_then_posture_says_so() {
    let mut cfg = config();
    cfg.tls.allow_tls12 = true;
    let lab = test_lab(Some(cfg));
    let t12 = DeviceClient::new(
        lab.addr(),
        Some(&lab.identity("viewer")),
        &lab.trust(),
        Versions::Tls12Only,
    )
    .unwrap();
    assert_eq!(t12.call("GET", "/api/v1/info", None).unwrap().status, 200);
    let p = lab
        .session("auditor")
        .ok("GET", "/api/v1/posture", None)
        .unwrap();
    let fr4 = &p["foundational_requirements"][3];
    assert!(fr4["level"].as_u64().unwrap() <= 3);
    assert!(
        fr4["reasons"].to_string().contains("TLS 1.2 allowed"),
        "{fr4}"
    );
    assert_eq!(
        p["settings"]["tls"]["versions"],
        json!(["TLSv1.3", "TLSv1.2"])
    );
    let suites = p["settings"]["tls"]["cipher_suites"].to_string();
    for s in p["settings"]["tls"]["cipher_suites"].as_array().unwrap() {
        let s = s.as_str().unwrap();
        assert!(
            s.starts_with("TLS13_") || s.starts_with("TLS_ECDHE_"),
            "{s}: not ECDHE"
        );
        assert!(
            s.contains("GCM") || s.contains("CHACHA20_POLY1305"),
            "{s}: not AEAD"
        );
    }
    assert!(!suites.contains("CBC"), "{suites}");
}
