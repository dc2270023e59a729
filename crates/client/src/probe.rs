//! One TLS handshake and one request to a device, reporting what was
//! negotiated: how validation tests a device's TLS settings.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::client::{
    ClientIdentity, DeadlineStream, DeviceTrust, Versions, deadline_error, tls_config,
};
use crate::{ClientError, Result};

/// How long a probe's TLS handshake, request and the head of its answer
/// may take together (after the TCP connection, which gets 5 s).
pub const PROBE_DEADLINE: Duration = Duration::from_secs(15);

/// A TLS handshake plus one request, returning the version and suite
/// negotiated and the server's certificate chain: within
/// [`PROBE_DEADLINE`] ([`probe_within`]).
pub fn probe(
    addr: SocketAddr,
    id: Option<&ClientIdentity>,
    trust: &DeviceTrust,
    versions: Versions,
) -> Result<(String, String, Vec<CertificateDer<'static>>)> {
    probe_within(addr, id, trust, versions, PROBE_DEADLINE)
}

/// [`probe`] with a total deadline for the handshake, the request and the
/// first bytes of the answer: a device that trickles its handshake or
/// answer fails with [`ClientError::Timeout`] once `within` has passed.
pub fn probe_within(
    addr: SocketAddr,
    id: Option<&ClientIdentity>,
    trust: &DeviceTrust,
    versions: Versions,
    within: Duration,
) -> Result<(String, String, Vec<CertificateDer<'static>>)> {
    let (mut cfg, name) = tls_config(addr, id, trust, versions)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name)
        .map_err(|e| ClientError::TlsConfig(e.to_string()))?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
        ClientError::Connect {
            addr,
            reason: e.to_string(),
        }
    })?;
    let mut tcp = DeadlineStream::new(tcp, within);
    let what = "the TLS handshake and the first answer (a validation probe)";
    let mut s = rustls::Stream::new(&mut conn, &mut tcp);
    // TLS 1.3 judges the client certificate after our Finished: a response proves acceptance.
    s.write_all(b"GET /api/v1/info HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
        .map_err(|e| deadline_error(&e, addr, what, within))?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)
        .map_err(|e| deadline_error(&e, addr, what, within))?;
    let v = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let suite = conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_default();
    let chain = conn
        .peer_certificates()
        .map(|c| c.iter().map(|x| x.clone().into_owned()).collect())
        .unwrap_or_default();
    Ok((v, suite, chain))
}
