//! Fake devices on loopback: small rustls servers holding certificates of
//! the test's choice (often genuine ones of the lab's own CAs), answering
//! as the test says and recording what they receive; and plain sockets
//! that accept and never answer.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use super::http::{fake_server_config, read_body, read_head, spawn_server, write_json};
use super::pki::key_and_csr;

/// What a fake device answers to one request.
pub enum Answer {
    /// This status and JSON body.
    Json(u16, Value),
    /// 200 MiB of zeros, with a Content-Length or chunked.
    Flood { declared: bool },
    /// Nothing: the device closes the connection.
    Close,
}

/// How a fake device answers a request, given its head and body.
pub type Handler = dyn Fn(&str, &[u8]) -> Answer + Send + Sync;

/// How a fake device answers a request with JSON, given its head.
pub type JsonHandler = dyn Fn(&str) -> (u16, Value) + Send + Sync;

/// The certificate a fake presents: one for connections that name the
/// device (SNI, as the tool's identity connections do), another for those
/// that do not (the tool's tamper-status connection, by IP address).
#[derive(Debug)]
pub struct BySni {
    pub named: Arc<rustls::sign::CertifiedKey>,
    pub unnamed: Arc<rustls::sign::CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(if hello.server_name().is_some() {
            self.named.clone()
        } else {
            self.unnamed.clone()
        })
    }
}

/// `chain` and `key` as a server presents them.
pub fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Arc<rustls::sign::CertifiedKey> {
    Arc::new(rustls::sign::CertifiedKey::new(
        chain,
        rustls::crypto::ring::sign::any_supported_type(key).unwrap(),
    ))
}

/// A fake device: a TLS server on loopback with a certificate chain and
/// key of the test's choice, recording every byte it receives (after
/// TLS) and counting the bytes it sends.
pub struct FakeDevice {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    requests: Arc<Mutex<Vec<String>>>,
    pub sent: Arc<AtomicU64>,
}

impl FakeDevice {
    /// A fake presenting `chain` and `key`, answering with `h`.
    pub fn start(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        h: Arc<Handler>,
    ) -> FakeDevice {
        FakeDevice::serving(fake_server_config(chain, key), h)
    }

    /// A fake presenting the certificates `resolver` picks, answering every
    /// request with `h(head)`.
    pub fn start_with(resolver: BySni, h: Arc<JsonHandler>) -> FakeDevice {
        let cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver)),
        );
        FakeDevice::serving(
            cfg,
            Arc::new(move |head: &str, _: &[u8]| {
                let (status, v) = h(head);
                Answer::Json(status, v)
            }),
        )
    }

    fn serving(cfg: Arc<rustls::ServerConfig>, h: Arc<Handler>) -> FakeDevice {
        let received = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let (rx, req, tx) = (received.clone(), requests.clone(), sent.clone());
        let addr = spawn_server(move |tcp| serve(tcp, cfg.clone(), &*h, &rx, &req, &tx));
        FakeDevice {
            addr,
            received,
            requests,
            sent,
        }
    }

    /// Every byte it received (request heads and bodies).
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    /// What it received, as text.
    pub fn received_text(&self) -> String {
        String::from_utf8_lossy(&self.received()).into_owned()
    }

    /// The request line of every request it received, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// What it received, asserted to be nothing.
    pub fn assert_received_nothing(&self) -> Vec<u8> {
        let got = self.received();
        assert!(
            got.is_empty(),
            "the impostor got: {}",
            String::from_utf8_lossy(&got)
        );
        got
    }
}

fn serve(
    tcp: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    h: &Handler,
    received: &Mutex<Vec<u8>>,
    requests: &Mutex<Vec<String>>,
    sent: &AtomicU64,
) {
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(20)));
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(60)));
    let conn = rustls::ServerConnection::new(cfg).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while let Some(head) = read_head(&mut tls) {
        let Some(body) = read_body(&mut tls, &head) else {
            return;
        };
        {
            let mut r = received.lock().unwrap();
            r.extend_from_slice(head.as_bytes());
            r.extend_from_slice(&body);
        }
        requests
            .lock()
            .unwrap()
            .push(head.lines().next().unwrap_or("").to_string());
        let ok = match h(&head, &body) {
            Answer::Json(status, v) => write_json(&mut tls, &format!("{status} X"), &v),
            Answer::Close => false,
            Answer::Flood { declared } => {
                let total: u64 = 200 << 20;
                let head = if declared {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {total}\r\n\r\n"
                    )
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
                };
                let _ = tls.write_all(head.as_bytes());
                let chunk = vec![b'0'; 64 * 1024];
                let mut left = total;
                while left > 0 {
                    let framed = if declared {
                        tls.write_all(&chunk)
                    } else {
                        tls.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .and_then(|_| tls.write_all(&chunk))
                            .and_then(|_| tls.write_all(b"\r\n"))
                    };
                    if framed.is_err() {
                        break;
                    }
                    sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    left -= chunk.len() as u64;
                }
                false
            }
        };
        if !ok {
            return;
        }
    }
}

/// Answers like a logged-in device to anything.
pub fn answers_everything() -> Arc<Handler> {
    Arc::new(|head: &str, _: &[u8]| {
        if head.starts_with("POST /api/v1/login") {
            Answer::Json(
                200,
                json!({"session": "captured", "role": "security-admin"}),
            )
        } else {
            Answer::Json(
                200,
                json!({"state": "commissioned", "running": {"version": "1.0.0"}}),
            )
        }
    })
}

/// `GET /api/v1/info` of a device in factory state that claims the serial
/// `claims`.
pub fn factory_info(claims: &str) -> Value {
    json!({"api": "v1", "banner": "", "device_name": null, "firmware_version": "1.0.0",
        "manufacturer": "Test Drives", "model": "iC7-Sim", "serial_number": claims,
        "state": "factory", "tampered": false})
}

/// A factory-state fake whose `/info` claims `claims`, whose
/// `commission/begin` returns a CSR of a new key for `device_name`, and
/// whose commissioning ends with `complete` (status, body); anything else
/// is `not_found` (status, body).
pub fn factory_answers(
    claims: &'static str,
    device_name: &'static str,
    complete: (u16, Value),
    not_found: (u16, Value),
) -> Arc<Handler> {
    Arc::new(move |head: &str, _: &[u8]| {
        if head.starts_with("GET /api/v1/info") {
            Answer::Json(200, factory_info(claims))
        } else if head.starts_with("POST /api/v1/commission/begin") {
            Answer::Json(
                200,
                json!({ "csr_pem": key_and_csr().1, "device_name": device_name }),
            )
        } else if head.starts_with("POST /api/v1/commission/complete") {
            Answer::Json(complete.0, complete.1.clone())
        } else {
            Answer::Json(not_found.0, not_found.1.clone())
        }
    })
}

/// A listener that accepts connections and never answers, counting the
/// connections it accepted.
pub fn counting_device() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    std::thread::spawn(move || {
        let mut held = vec![];
        for tcp in listener.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    (addr, n)
}

/// A TCP listener that accepts connections and never answers.
pub fn silent_device() -> SocketAddr {
    counting_device().0
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// What a device answers for a path it does not serve.
pub fn not_found() -> (u16, Value) {
    (404, json!({"error": "not-found"}))
}

/// A factory-state device claiming SN-1 whose `commission/begin` names the
/// device `d.example`, and which fails everything else (500).
pub fn factory_state_answers() -> Arc<Handler> {
    let internal = (500, json!({"error": "internal"}));
    factory_answers("SN-1", "d.example", internal.clone(), internal)
}
