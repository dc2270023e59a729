//! A client for the device API over mutual TLS: the tool's own certificate
//! and key (PEM files, as an engineer's tool holds them), and one of two ways
//! to trust the device: its IDevID chain to the manufacturer root (factory
//! state: the name is not checked, the serial number may be), or its LDevID
//! to the owner's root under the device's DNS name.
//!
//! A refused device certificate that is a tampered device's throwaway
//! `CN=TAMPERED <serial>` one, or a genuine IDevID of another serial, is
//! reported as such ([`PeerProblem`]) instead of as a bare TLS error.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;

use crate::{OemError, Result};

/// Why a device's certificate was refused, when that says more than the TLS
/// error: carried through the handshake error ([`peer_problem`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerProblem {
    /// The peer presented a tampered device's self-signed `CN=TAMPERED
    /// <serial>` certificate where an identity was expected. Unauthenticated
    /// (anyone can make such a certificate), so it only explains a refusal.
    Tampered {
        /// The serial number the certificate names.
        serial: String,
    },
    /// A genuine IDevID, but for another serial number than the expected one.
    WrongSerial {
        /// The serial number expected.
        expected: String,
        /// The one the IDevID's subject serialNumber carries.
        found: String,
    },
}

impl PeerProblem {
    /// The problem with `who` (e.g. "drive-001.lab.drivesec at 127.0.0.1:8443") as the subject.
    pub fn describe(&self, who: &str) -> String {
        match self {
            PeerProblem::Tampered { serial } => format!(
                "{who} reports its tamper response has run (certificate CN=TAMPERED {serial}): \
                 its keys are destroyed; send it to the manufacturer for `drivesec factory reprovision`"
            ),
            PeerProblem::WrongSerial { expected, found } => format!(
                "{who} presents a genuine IDevID for serial {found}, not the expected serial {expected}: \
                 it is another device, and nothing was sent to it; check the serial on the device's label \
                 and the address"
            ),
        }
    }

    /// As a handshake error, which [`peer_problem`] finds again.
    fn into_tls(self) -> rustls::Error {
        rustls::Error::Other(rustls::OtherError(Arc::new(self)))
    }
}

impl std::fmt::Display for PeerProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe("the device"))
    }
}

impl std::error::Error for PeerProblem {}

/// The [`PeerProblem`] a failed handshake carries, if any (`err` is the
/// handshake's error, or any error whose source chain holds it).
pub fn peer_problem(err: &(dyn std::error::Error + 'static)) -> Option<PeerProblem> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(p) = e.downcast_ref::<PeerProblem>() {
            return Some(p.clone());
        }
        if let Some(rustls::Error::Other(o)) = e.downcast_ref::<rustls::Error>()
            && let Some(p) = o.0.downcast_ref::<PeerProblem>()
        {
            return Some(p.clone());
        }
        // io::Error hides the rustls error behind get_ref, not source.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            cur = Some(inner);
            continue;
        }
        cur = e.source();
    }
    None
}

/// The serial a tampered device's throwaway certificate names, when `der`
/// is one: subject exactly `CN=TAMPERED <serial>`, the serial a token.
fn tampered_marker(der: &[u8]) -> Option<String> {
    let s = drivesec_pki::inspect::summarize(der).ok()?;
    let serial = s.subject.strip_prefix("CN=TAMPERED ")?;
    (!serial.is_empty()
        && serial.len() <= 64
        && serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    .then(|| serial.to_string())
}

/// `err`, a refused device certificate's error, or the
/// [`PeerProblem::Tampered`] that explains it when the certificate is a
/// tampered device's marker.
fn explain_refusal(end_entity: &[u8], err: rustls::Error) -> rustls::Error {
    match tampered_marker(end_entity) {
        Some(serial) => PeerProblem::Tampered { serial }.into_tls(),
        None => err,
    }
}

/// How the client decides that the peer is the right device.
#[derive(Debug, Clone)]
pub enum DeviceTrust {
    /// Factory state: the IDevID must chain to one of these manufacturer roots;
    /// when `serial` is set, the certificate's subject serialNumber must be
    /// exactly it.
    Idevid {
        /// Manufacturer roots.
        roots: Vec<CertificateDer<'static>>,
        /// Expected serial number.
        serial: Option<String>,
    },
    /// Risky: a device whose tamper response ran has no key left to prove
    /// who it is; it answers status reads under a throwaway self-signed
    /// certificate `CN=TAMPERED <serial>`. This accepts exactly that
    /// certificate for `serial` and nothing else; what such a device says
    /// cannot be authenticated.
    TamperedStatusRisky {
        /// The serial number the certificate must name.
        serial: String,
    },
    /// Commissioned: the LDevID must chain to the owner roots and name `device_name`.
    Ldevid {
        /// Owner roots.
        roots: Vec<CertificateDer<'static>>,
        /// The device's DNS name.
        device_name: String,
    },
}

/// What a device's server certificate must be: the check of each
/// [`DeviceTrust`].
#[derive(Debug)]
enum ServerCheck {
    /// A factory-state device: the IDevID chains to these roots (and names the serial).
    Idevid {
        roots: Vec<CertificateDer<'static>>,
        serial: Option<String>,
    },
    /// A tampered device's throwaway `CN=TAMPERED <serial>` certificate.
    Tampered { serial: String },
    /// A commissioned device: webpki's check (chain to the owner roots,
    /// the name), with a tampered device's certificate recognised among
    /// the ones it refuses.
    Ldevid(Arc<rustls::client::WebPkiServerVerifier>),
}

#[derive(Debug)]
struct CheckedVerifier {
    check: ServerCheck,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for CheckedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let summary = || {
            drivesec_pki::inspect::summarize(end_entity)
                .map_err(|e| rustls::Error::General(format!("certificate: {e}")))
        };
        match &self.check {
            ServerCheck::Idevid { roots, serial } => {
                let opts = drivesec_pki::verify::VerifyOptions {
                    roots,
                    intermediates,
                    crls: &[],
                    usage: drivesec_pki::verify::Usage::Server,
                    time: Some(now),
                };
                drivesec_pki::verify::verify_chain(end_entity, &opts).map_err(|e| {
                    explain_refusal(end_entity, rustls::Error::General(format!("IDevID: {e}")))
                })?;
                if let Some(expected) = serial {
                    let found = drivesec_pki::inspect::subject_serial_number(end_entity)
                        .map_err(|e| rustls::Error::General(format!("IDevID: {e}")))?;
                    if &found != expected {
                        return Err(PeerProblem::WrongSerial {
                            expected: expected.clone(),
                            found,
                        }
                        .into_tls());
                    }
                }
            }
            ServerCheck::Tampered { serial } => {
                let s = summary()?;
                if s.subject != format!("CN=TAMPERED {serial}") {
                    return Err(rustls::Error::General(format!(
                        "'{}' is not the tampered marker of serial {serial}",
                        s.subject
                    )));
                }
            }
            ServerCheck::Ldevid(webpki) => {
                webpki
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                    .map_err(|e| explain_refusal(end_entity, e))?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The tool's TLS identity: a certificate chain and its private key.
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(<key redacted>)")
    }
}

impl ClientIdentity {
    /// Reads a PEM chain and a PEM (PKCS#8) key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        let chain = drivesec_pki::read_cert_chain(cert)?;
        let text = zeroize::Zeroizing::new(drivesec_fsutil::read(key)?);
        let block = pem::parse(&*text).map_err(|e| OemError::BadFile {
            path: key.to_path_buf(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        let key_der = match block.tag() {
            "PRIVATE KEY" => PrivateKeyDer::Pkcs8(block.into_contents().into()),
            "EC PRIVATE KEY" => PrivateKeyDer::Sec1(block.into_contents().into()),
            other => {
                return Err(OemError::BadFile {
                    path: key.to_path_buf(),
                    reason: format!("unsupported key block '{other}'"),
                });
            }
        };
        Ok(ClientIdentity {
            chain,
            key: key_der,
        })
    }
}

/// A response: status code and JSON body (or `{"text": ...}` for non-JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body (JSON; anything else as `{"text": ...}`).
    pub body: Value,
    /// The body's bytes.
    pub raw: Vec<u8>,
}

/// The TLS client configuration (no ALPN) for talking to the device at
/// `addr` as `identity`, and the name its certificate must carry.
pub fn tls_config(
    addr: SocketAddr,
    identity: Option<&ClientIdentity>,
    trust: &DeviceTrust,
    versions: Versions,
) -> Result<(rustls::ClientConfig, ServerName<'static>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algs = provider.signature_verification_algorithms;
    let vers: &[&rustls::SupportedProtocolVersion] = match versions {
        Versions::Default => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Tls12Only => &[&rustls::version::TLS12],
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(vers)
        .map_err(|e| OemError::Invalid(e.to_string()))?;
    let (builder, server_name) = match trust {
        DeviceTrust::Idevid { roots, serial } => (
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CheckedVerifier {
                    check: ServerCheck::Idevid {
                        roots: roots.clone(),
                        serial: serial.clone(),
                    },
                    algs,
                })),
            ServerName::IpAddress(addr.ip().into()),
        ),
        DeviceTrust::TamperedStatusRisky { serial } => (
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CheckedVerifier {
                    check: ServerCheck::Tampered {
                        serial: serial.clone(),
                    },
                    algs,
                })),
            ServerName::IpAddress(addr.ip().into()),
        ),
        DeviceTrust::Ldevid { roots, device_name } => {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                store
                    .add(r.clone())
                    .map_err(|e| OemError::Invalid(format!("owner root: {e}")))?;
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(store),
                provider.clone(),
            )
            .build()
            .map_err(|e| OemError::Invalid(format!("owner roots: {e}")))?;
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(CheckedVerifier {
                        check: ServerCheck::Ldevid(webpki),
                        algs,
                    })),
                ServerName::try_from(device_name.clone())
                    .map_err(|_| OemError::Invalid(format!("'{device_name}' is not a DNS name")))?,
            )
        }
    };
    let cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| OemError::Invalid(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok((cfg, server_name))
}

/// A request body read from a file as it is sent.
struct FileBody {
    file: std::fs::File,
    left: u64,
    buf: Vec<u8>,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Bytes>, std::io::Error>>>
    {
        use std::io::Read;
        let this = &mut *self;
        if this.left == 0 {
            return std::task::Poll::Ready(None);
        }
        // A local file: a short blocking read on this client's own runtime.
        let want = this.left.min(this.buf.len() as u64) as usize;
        let frame = match this.file.read(&mut this.buf[..want]) {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being sent",
            )),
            Ok(n) => {
                this.left -= n as u64;
                Ok(hyper::body::Frame::data(Bytes::copy_from_slice(
                    &this.buf[..n],
                )))
            }
            Err(e) => Err(e),
        };
        std::task::Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// The strings of a JSON array (anything else: none).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A device posture's SL-A vector (`sl_a`, seven levels), if it has one.
pub fn posture_sl_a(posture: &Value) -> Option<[u8; 7]> {
    let v: Vec<u8> = posture["sl_a"]
        .as_array()?
        .iter()
        .filter_map(|x| x.as_u64())
        .map(|x| x as u8)
        .collect();
    v.try_into().ok()
}

/// Every request body, boxed to one type so one connection carries them all.
type RequestBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A client bound to one device. Consecutive calls share one mutual-TLS
/// connection (HTTP/1.1 keep-alive); when the device has closed it, the
/// next call opens a new one.
pub struct DeviceClient {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    /// The open connection, between calls.
    conn: std::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<RequestBody>>>,
    /// The session identifier, once logged in.
    pub session: Option<String>,
}

impl std::fmt::Debug for DeviceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// TLS protocol versions a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 and 1.2.
    Default,
    /// TLS 1.2 only (for tests of the device's refusal).
    Tls12Only,
}

impl DeviceClient {
    /// A client for the device at `addr`; `identity` None sends no client certificate.
    pub fn new(
        addr: SocketAddr,
        identity: Option<&ClientIdentity>,
        trust: &DeviceTrust,
        versions: Versions,
    ) -> Result<Self> {
        let (mut cfg, server_name) = tls_config(addr, identity, trust, versions)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OemError::Invalid(format!("runtime: {e}")))?;
        Ok(DeviceClient {
            rt,
            addr,
            tls: Arc::new(cfg),
            server_name,
            conn: std::sync::Mutex::new(None),
            session: None,
        })
    }

    /// One request, on the open connection when there is one. Transport and
    /// TLS failures are errors; any HTTP status is a [`Reply`].
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply> {
        self.call_raw(
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            "application/json",
        )
    }

    /// Like [`DeviceClient::call`] with a raw body.
    pub fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<Reply> {
        let content_type = body.is_some().then_some(content_type);
        let body = Bytes::from(body.unwrap_or_default());
        let (reply, reused) = self.send(method, path, content_type, Full::new(body.clone()))?;
        // The device refused it unread because its trust changed while the
        // connection was open (docs/openapi.json): once more, on a new connection.
        if reused && reply.status == 421 && reply.body["error"] == "connection-stale" {
            self.forget_connection();
            return Ok(self.send(method, path, content_type, Full::new(body))?.0);
        }
        Ok(reply)
    }

    fn forget_connection(&self) {
        if let Ok(mut c) = self.conn.lock() {
            *c = None;
        }
    }

    /// Sends a file as the body, read and sent 64 KiB at a time (a GiB
    /// image never sits in memory), with its length as Content-Length.
    pub fn upload_file(
        &self,
        method: &str,
        path: &str,
        file: &Path,
        content_type: &str,
    ) -> Result<Reply> {
        let f = std::fs::File::open(file)
            .map_err(|e| OemError::Invalid(format!("{}: {e}", file.display())))?;
        let len = f
            .metadata()
            .map_err(|e| OemError::Invalid(format!("{}: {e}", file.display())))?
            .len();
        // Not sent again on a 421: the file is read as it is sent.
        Ok(self
            .send(
                method,
                path,
                Some(content_type),
                FileBody {
                    file: f,
                    left: len,
                    buf: vec![0; 64 * 1024],
                },
            )?
            .0)
    }

    /// A new connection: TCP, the mutual-TLS handshake, HTTP/1.1.
    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<RequestBody>> {
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| OemError::Invalid(format!("connect {}: {e}", self.addr)))?;
        let tls = connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| match peer_problem(&e) {
                Some(p) => OemError::Invalid(p.describe(&self.who())),
                None => OemError::Invalid(format!("TLS with {}: {e}", self.addr)),
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| OemError::Invalid(format!("HTTP with {}: {e}", self.addr)))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// The device as a message names it: its DNS name and address, or the address.
    fn who(&self) -> String {
        match &self.server_name {
            ServerName::DnsName(n) => format!("{} at {}", n.as_ref(), self.addr),
            _ => format!("the device at {}", self.addr),
        }
    }

    /// Whether the last call left a connection open for the next (for
    /// tests of reuse; a close by the device since then shows only at the
    /// next call, since this client's runtime runs only during calls).
    pub fn has_open_connection(&self) -> bool {
        self.conn
            .lock()
            .map(|c| c.as_ref().is_some_and(|s| !s.is_closed()))
            .unwrap_or(false)
    }

    /// Sends one request; the reply, and whether it came on a connection
    /// an earlier call opened.
    fn send<B>(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: B,
    ) -> Result<(Reply, bool)>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let fut = async {
            let mut builder = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", self.addr.to_string());
            if let Some(s) = &self.session {
                builder = builder.header("authorization", format!("Bearer {s}"));
            }
            if let Some(ct) = content_type {
                builder = builder.header("content-type", ct);
            }
            let mut req = builder
                .body(body.map_err(Into::into).boxed_unsync())
                .map_err(|e| OemError::Invalid(e.to_string()))?;
            let failed =
                |e: hyper::Error| OemError::Invalid(format!("request to {}: {e}", self.addr));
            // The open connection first. A request it did not send (the
            // device closed the connection meanwhile) goes on a new one;
            // one it sent is never sent twice.
            let open = self.conn.lock().ok().and_then(|mut c| c.take());
            let mut reused = false;
            let (sender, resp) = 'sent: {
                if let Some(mut sender) = open {
                    // A closed connection fails `ready`, and `req` is still ours.
                    if sender.ready().await.is_ok() {
                        match sender.try_send_request(req).await {
                            Ok(resp) => {
                                reused = true;
                                break 'sent (sender, resp);
                            }
                            Err(mut e) => match e.take_message() {
                                Some(r) => req = r,
                                None => return Err(failed(e.into_error())),
                            },
                        }
                    }
                }
                let mut sender = self.connect().await?;
                let resp = sender.send_request(req).await.map_err(failed)?;
                (sender, resp)
            };
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| OemError::Invalid(format!("reading the reply: {e}")))?
                .to_bytes();
            // Kept for the next call unless the device is closing it.
            if !sender.is_closed()
                && let Ok(mut c) = self.conn.lock()
            {
                *c = Some(sender);
            }
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| serde_json::json!({"text": String::from_utf8_lossy(&bytes)}));
            Ok::<_, OemError>((
                Reply {
                    status,
                    body,
                    raw: bytes.to_vec(),
                },
                reused,
            ))
        };
        self.rt.block_on(fut)
    }

    /// A call that must succeed with 2xx.
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let r = self.call(method, path, body)?;
        if !(200..300).contains(&r.status) {
            return Err(OemError::Invalid(format!(
                "{method} {path}: {} {}",
                r.status,
                r.body
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or(&r.body.to_string())
            )));
        }
        Ok(r.body)
    }

    /// Logs in and keeps the session.
    pub fn login(&mut self, username: &str, password: &str) -> Result<Value> {
        let v = self.ok(
            "POST",
            "/api/v1/login",
            Some(&serde_json::json!({"username": username, "password": password})),
        )?;
        self.session = v.get("session").and_then(Value::as_str).map(str::to_string);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{DistinguishedName, DnType};

    fn cert(attrs: &[(DnType, &str)]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        for (t, v) in attrs {
            dn.push(t.clone(), *v);
        }
        p.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_tampered_marker_is_recognised_only_as_the_whole_subject() {
        let t = cert(&[(DnType::CommonName, "TAMPERED SN-7")]);
        assert_eq!(tampered_marker(&t).as_deref(), Some("SN-7"));
        for other in [
            cert(&[(DnType::CommonName, "TAMPERED ")]),
            cert(&[(DnType::CommonName, "TAMPERED SN 7")]),
            cert(&[
                (DnType::OrganizationName, "x"),
                (DnType::CommonName, "TAMPERED SN-7"),
            ]),
        ] {
            assert_eq!(tampered_marker(&other), None);
        }
        let e = PeerProblem::Tampered {
            serial: "SN-7".into(),
        }
        .into_tls();
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            peer_problem(&io),
            Some(PeerProblem::Tampered {
                serial: "SN-7".into()
            })
        );
    }
}
