//! Forwarding the trail to a syslog collector: RFC 5424 messages over TLS
//! with octet-counting framing (RFC 5425), mutually authenticated with the
//! device's certificate, whose key stays in the keystore. docs/audit.md,
//! "Forwarding", specifies the wire format for a collector's parser.
//!
//! Delivery: a persistent cursor (`cursors/forwarded`) names the last record
//! handed to the collector. Records after it are sent in order, in batches;
//! the cursor advances only after a batch was written and flushed, and never
//! goes back (a frame numbered at or below it is skipped). Only records the
//! writer has made durable are read ([`crate::DurableMark`]), so after a
//! power cut the collector holds nothing the device lost. While the
//! collector is unreachable nothing is lost: the records stay in the trail
//! and the forwarder retries with exponential backoff. Before each batch the
//! connection is checked for an orderly close by the collector, so a
//! collector that shut down is not sent records into the void.
//!
//! The collector's certificate must chain to the configured trust anchors,
//! name the configured server name, and pass the CRLs the device holds
//! ([`CollectorTrust`]), asked again before every connection; when they
//! change, an open connection is checked again and ended if it no longer
//! passes. A refused collector gets nothing, the status says why
//! ([`ForwardStatus::collector_refused`]), the cursor stays, and the
//! forwarder keeps retrying.
//!
//! Every message carries the structured data element `drivesec@50316`
//! (the project's IANA private enterprise number, [`ENTERPRISE_NUMBER`], or
//! a configured one) with the record's `seq`, `hash` and `prev`, so the
//! collector side can prove completeness (no gap in `seq`) and integrity
//! (the hash chain), and the highest sequence number a signed checkpoint
//! (or anchor) in the trail covers (`checkpoint`), which a collector can
//! require never to go backwards: the trail's anchor outside the device.
//! A record too long for the collector's message size is sent with its
//! MSG cut and marked `truncated="true"`, never as a longer message that
//! the collector would split into several.
//!
//! RFC 5425 has no application-level acknowledgement: records written into a
//! socket that the collector then loses in a crash, after TCP accepted them,
//! are not resent. RELP would close that gap; this forwarder does not speak it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use drivesec_keystore::adapters::TlsKey;
use drivesec_keystore::{KeyHandle, KeyStore};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};

use crate::layout::{ANCHOR, LATEST_CHECKPOINT, list_segments};
use crate::scan::{Item, Scanner};
use crate::writer::{DurableMark, read_checkpoint, read_cursor, write_cursor};
use crate::{AuditError, AuditLog, Outcome, Record, Result};

/// The project's IANA private enterprise number (the arc of its
/// certificate extensions, 1.3.6.1.4.1.50316): the default SD-ID is
/// `drivesec@50316`.
pub const ENTERPRISE_NUMBER: u32 = 50316;

/// The default longest message, octets (without the octet count): RFC 5425
/// receivers should take 8192, and it is rsyslog's default maxMessageSize.
pub const DEFAULT_MAX_MESSAGE: usize = 8192;

/// The smallest `max_message` accepted: RFC 5424's minimum a receiver must
/// take (2048), which leaves room for the header and structured data.
pub const MIN_MAX_MESSAGE: usize = 2048;

/// The largest `max_message` accepted: more than any record needs (a body
/// is at most 64 KiB, [`crate::frame::MAX_BODY`]).
pub const MAX_MAX_MESSAGE: usize = 256 * 1024;

/// The longest `actor` SD param, in characters; the whole actor is in MSG.
const MAX_SD_ACTOR: usize = 128;

/// The SD-ID of the drivesec element for a private enterprise number.
pub fn sd_id(enterprise_number: u32) -> String {
    format!("drivesec@{enterprise_number}")
}

/// What the collector's certificate is checked against besides its trust
/// anchors: the CRLs the device holds now. The forwarder asks before every
/// connection, and checks an open connection again when the generation
/// changes.
pub trait CollectorTrust: Send + Sync {
    /// A number that changes whenever the CRLs may have changed.
    fn generation(&self) -> u64;
    /// The CRLs in force now (DER). An error refuses the connection: the
    /// forwarder does not connect without knowing what is revoked.
    fn crls(&self) -> std::result::Result<Vec<CertificateRevocationListDer<'static>>, String>;
}

/// No CRLs: the collector's certificate is checked against its trust
/// anchors only.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCrls;

impl CollectorTrust for NoCrls {
    fn generation(&self) -> u64 {
        0
    }

    fn crls(&self) -> std::result::Result<Vec<CertificateRevocationListDer<'static>>, String> {
        Ok(Vec::new())
    }
}

/// Where and how to forward.
#[derive(Clone)]
pub struct ForwardConfig {
    /// Collector address.
    pub collector: SocketAddr,
    /// Name (DNS or IP) the collector's certificate must carry.
    pub server_name: String,
    /// Trust anchors for the collector's certificate (PEM certificates).
    pub collector_roots: Vec<CertificateDer<'static>>,
    /// The CRLs the collector's certificate must pass (default: none).
    pub collector_trust: Arc<dyn CollectorTrust>,
    /// The device's certificate chain (leaf first), presented to the collector.
    pub client_chain: Vec<CertificateDer<'static>>,
    /// The keystore holding the device key.
    pub keystore: Arc<dyn KeyStore>,
    /// The device key's handle.
    pub key: KeyHandle,
    /// HOSTNAME field: the device's name.
    pub hostname: String,
    /// Private enterprise number of the SD-ID `drivesec@N` (default
    /// [`ENTERPRISE_NUMBER`]); positive.
    pub enterprise_number: u32,
    /// Longest message in octets, without the octet count (default
    /// [`DEFAULT_MAX_MESSAGE`]); a longer record's MSG is cut and the
    /// message marked `truncated="true"`.
    pub max_message: usize,
    /// Records per write.
    pub batch: usize,
    /// How often to look for new records when idle.
    pub poll: Duration,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl ForwardConfig {
    /// Defaults for everything but the endpoints and identities.
    pub fn new(
        collector: SocketAddr,
        server_name: impl Into<String>,
        collector_roots: Vec<CertificateDer<'static>>,
        client_chain: Vec<CertificateDer<'static>>,
        keystore: Arc<dyn KeyStore>,
        key: KeyHandle,
        hostname: impl Into<String>,
    ) -> Self {
        ForwardConfig {
            collector,
            server_name: server_name.into(),
            collector_roots,
            collector_trust: Arc::new(NoCrls),
            client_chain,
            keystore,
            key,
            hostname: hostname.into(),
            enterprise_number: ENTERPRISE_NUMBER,
            max_message: DEFAULT_MAX_MESSAGE,
            batch: 256,
            poll: Duration::from_millis(100),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }

    /// Refuses settings the forwarder cannot honour.
    pub fn check(&self) -> Result<()> {
        check_enterprise_number(u64::from(self.enterprise_number))?;
        check_max_message(self.max_message as u64)?;
        if self.batch == 0 {
            return Err(AuditError::Forward("batch must be at least 1".into()));
        }
        ServerName::try_from(self.server_name.clone())
            .map_err(|e| AuditError::Forward(format!("server name '{}': {e}", self.server_name)))?;
        Ok(())
    }
}

/// Checks a configured private enterprise number: a positive integer that
/// fits 32 bits.
pub fn check_enterprise_number(n: u64) -> Result<u32> {
    match u32::try_from(n) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(AuditError::Forward(format!(
            "enterprise number {n}: must be a positive integer below 2^32 (IANA private enterprise number; default {ENTERPRISE_NUMBER})"
        ))),
    }
}

/// Checks a configured longest message: from [`MIN_MAX_MESSAGE`] to
/// [`MAX_MAX_MESSAGE`] octets.
pub fn check_max_message(n: u64) -> Result<usize> {
    match usize::try_from(n) {
        Ok(v) if (MIN_MAX_MESSAGE..=MAX_MAX_MESSAGE).contains(&v) => Ok(v),
        _ => Err(AuditError::Forward(format!(
            "max message size {n}: must be from {MIN_MAX_MESSAGE} to {MAX_MAX_MESSAGE} octets (default {DEFAULT_MAX_MESSAGE}, rsyslog's maxMessageSize)"
        ))),
    }
}

/// What the forwarder has done.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ForwardStatus {
    /// Last sequence number delivered.
    pub forwarded: u64,
    /// A connection is up.
    pub connected: bool,
    /// Connections opened so far.
    pub connections: u64,
    /// Failed connection attempts or writes so far.
    pub failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Why the device refused the collector's certificate at the last
    /// handshake or re-check (revoked, not trusted, expired, wrong name);
    /// none once a handshake succeeds. Nothing is sent to a refused
    /// collector, and the forwarder keeps retrying.
    pub collector_refused: Option<String>,
}

struct Control {
    stop: Mutex<bool>,
    wake: Condvar,
    status: Mutex<ForwardStatus>,
}

impl Control {
    /// Sleeps up to `d`; returns true if asked to stop.
    fn sleep(&self, d: Duration) -> bool {
        let Ok(g) = self.stop.lock() else { return true };
        if *g {
            return true;
        }
        match self.wake.wait_timeout(g, d) {
            Ok((g, _)) => *g,
            Err(_) => true,
        }
    }

    fn stopped(&self) -> bool {
        self.stop.lock().map(|g| *g).unwrap_or(true)
    }

    fn update(&self, f: impl FnOnce(&mut ForwardStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}

/// A running forwarder thread.
pub struct Forwarder {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Starts forwarding the trail `log` writes, from its cursor. Only
    /// records the writer has made durable are sent
    /// ([`AuditLog::durable_mark`]): after a power cut the collector holds
    /// nothing the device lost. The forwarder keeps the mark, not the log:
    /// a log replaced by a factory reset (its directory archived, the mark
    /// retired) gets nothing more sent from its path; forwarding for the
    /// new trail is started with the new log.
    pub fn start(log: &AuditLog, cfg: ForwardConfig) -> Result<Forwarder> {
        let dir = log.dir();
        let mark = log.durable_mark();
        cfg.check()?;
        let tls = Tls::new(&cfg)?;
        // An unreadable cursor never stops forwarding: it starts from the
        // beginning of the trail (the trail's start-up check reports and
        // resets such a cursor before the forwarder starts).
        let (forwarded, last_error) = match read_cursor(dir, "forwarded") {
            Ok(v) => (v, None),
            Err(e) => (0, Some(format!("{e}; forwarding from the first record"))),
        };
        let control = Arc::new(Control {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            status: Mutex::new(ForwardStatus {
                forwarded,
                last_error,
                ..ForwardStatus::default()
            }),
        });
        let c = control.clone();
        let dir = dir.to_path_buf();
        let thread = std::thread::spawn(move || run(&dir, &mark, &cfg, &tls, &c));
        Ok(Forwarder {
            control,
            thread: Some(thread),
        })
    }

    /// Progress so far.
    pub fn status(&self) -> ForwardStatus {
        self.control
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Wakes the forwarder to look for new records now.
    pub fn nudge(&self) {
        self.control.wake.notify_all();
    }

    /// Stops the thread (the cursor stays where it is).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Ok(mut g) = self.control.stop.lock() {
            *g = true;
        }
        self.control.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What every connection shares: the collector's trust anchors and the
/// device's identity. The server-certificate check is built per
/// connection, with the CRLs in force then.
struct Tls {
    roots: Arc<rustls::RootCertStore>,
    identity: Arc<rustls::sign::SingleCertAndKey>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Tls {
    fn new(cfg: &ForwardConfig) -> Result<Tls> {
        let mut roots = rustls::RootCertStore::empty();
        for r in &cfg.collector_roots {
            roots.add(r.clone()).map_err(|e| {
                AuditError::Forward(format!("unusable collector trust anchor: {e}"))
            })?;
        }
        if roots.is_empty() {
            return Err(AuditError::Forward(
                "no trust anchor for the collector's certificate".into(),
            ));
        }
        let key = TlsKey::new(cfg.keystore.clone(), &cfg.key)?;
        let certified = key.certified(cfg.client_chain.clone());
        Ok(Tls {
            roots: Arc::new(roots),
            identity: Arc::new(rustls::sign::SingleCertAndKey::from(certified)),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// The collector check with `crls`: a chain to the trust anchors, the
    /// server name, serverAuth, and no certificate of the path on a CRL
    /// (docs/pki.md's CRL policy, as for the device's own listeners: the
    /// whole path, an issuer without a CRL is no refusal, a CRL past its
    /// nextUpdate stays enforced).
    fn verifier(
        &self,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> std::result::Result<Arc<WebPkiServerVerifier>, String> {
        let mut b =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone());
        if !crls.is_empty() {
            b = b.with_crls(crls).allow_unknown_revocation_status();
        }
        b.build()
            .map_err(|e| format!("collector certificate check: {e}"))
    }

    fn client_config(
        &self,
        verifier: Arc<WebPkiServerVerifier>,
    ) -> std::result::Result<Arc<rustls::ClientConfig>, String> {
        Ok(Arc::new(
            rustls::ClientConfig::builder_with_provider(self.provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_webpki_verifier(verifier)
                .with_client_cert_resolver(self.identity.clone()),
        ))
    }
}

type Stream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Why a connection did not come up, or ended.
struct Failure {
    message: String,
    /// The collector's certificate was refused, and why.
    refused: Option<String>,
}

impl Failure {
    fn other(message: String) -> Failure {
        Failure {
            message,
            refused: None,
        }
    }

    fn refused(why: String) -> Failure {
        Failure {
            message: format!("the collector's certificate was refused: {why}"),
            refused: Some(why),
        }
    }
}

/// Why a collector certificate fails its check, in words.
fn refusal(e: &rustls::CertificateError) -> String {
    match e {
        rustls::CertificateError::Revoked => {
            "it is revoked (on a CRL the device holds)".to_string()
        }
        rustls::CertificateError::UnknownIssuer => {
            "it does not chain to the configured trust anchors".to_string()
        }
        other => other.to_string(),
    }
}

/// A handshake error's rustls cause, if it is one.
fn tls_cause(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// An open connection and the check it passed.
struct Connection {
    stream: Stream,
    name: ServerName<'static>,
    /// The [`CollectorTrust`] generation the check was built at.
    generation: u64,
}

fn connect(cfg: &ForwardConfig, tls: &Tls) -> std::result::Result<Connection, Failure> {
    let name = ServerName::try_from(cfg.server_name.clone())
        .map_err(|e| Failure::other(format!("bad server name: {e}")))?;
    // The generation first: a change after it shows at the next batch.
    let generation = cfg.collector_trust.generation();
    let crls = cfg.collector_trust.crls().map_err(|e| {
        Failure::other(format!(
            "revocation information unavailable, not connecting: {e}"
        ))
    })?;
    let config = tls
        .verifier(crls)
        .and_then(|v| tls.client_config(v))
        .map_err(Failure::other)?;
    let sock = TcpStream::connect_timeout(&cfg.collector, Duration::from_secs(5))
        .map_err(|e| Failure::other(format!("connect {}: {e}", cfg.collector)))?;
    let io = |e: std::io::Error| Failure::other(e.to_string());
    sock.set_nodelay(true).map_err(io)?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let conn = rustls::ClientConnection::new(config, name.clone())
        .map_err(|e| Failure::other(e.to_string()))?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        if let Err(e) = s.conn.complete_io(&mut s.sock) {
            if let Some(rustls::Error::InvalidCertificate(c)) = tls_cause(&e) {
                // Tell the collector why (the alert is queued), then go.
                let _ = s.conn.write_tls(&mut s.sock);
                return Err(Failure::refused(refusal(c)));
            }
            return Err(Failure::other(format!(
                "TLS handshake with {}: {e}",
                cfg.collector
            )));
        }
    }
    Ok(Connection {
        stream: s,
        name,
        generation,
    })
}

/// Checks an open connection's collector certificate again with the CRLs
/// in force now, when they may have changed since its handshake.
fn recheck(c: &mut Connection, cfg: &ForwardConfig, tls: &Tls) -> std::result::Result<(), Failure> {
    let generation = cfg.collector_trust.generation();
    if generation == c.generation {
        return Ok(());
    }
    let crls = cfg.collector_trust.crls().map_err(|e| {
        Failure::other(format!(
            "revocation information unavailable, disconnecting: {e}"
        ))
    })?;
    let verifier = tls.verifier(crls).map_err(Failure::other)?;
    let certs = c
        .stream
        .conn
        .peer_certificates()
        .ok_or_else(|| Failure::other("the collector presented no certificate".into()))?;
    let (leaf, intermediates) = certs
        .split_first()
        .ok_or_else(|| Failure::other("the collector presented no certificate".into()))?;
    match verifier.verify_server_cert(leaf, intermediates, &c.name, &[], UnixTime::now()) {
        Ok(_) => {
            c.generation = generation;
            Ok(())
        }
        Err(rustls::Error::InvalidCertificate(e)) => Err(Failure::refused(refusal(&e))),
        Err(e) => Err(Failure::other(format!(
            "checking the collector's certificate again: {e}"
        ))),
    }
}

/// Ends a connection the orderly way (close_notify).
fn close(c: &mut Connection) {
    c.stream.conn.send_close_notify();
    let _ = c.stream.flush();
}

/// Whether the collector has closed the connection (EOF, close_notify or error).
fn peer_closed(s: &mut Stream) -> bool {
    if s.sock.set_nonblocking(true).is_err() {
        return true;
    }
    let closed = loop {
        match s.conn.read_tls(&mut s.sock) {
            Ok(0) => break true,
            Ok(_) => match s.conn.process_new_packets() {
                Ok(st) if st.peer_has_closed() => break true,
                Ok(_) => {
                    // Discard anything the collector sent.
                    let mut sink = [0u8; 512];
                    while matches!(s.conn.reader().read(&mut sink), Ok(n) if n > 0) {}
                }
                Err(_) => break true,
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    closed || s.sock.set_nonblocking(false).is_err()
}

/// One record read for sending: (seq, hash, prev, body).
type Outgoing = (u64, [u8; 32], [u8; 32], Vec<u8>);

/// How [`Tail`] opens a segment at an offset ([`Scanner::open_at`]; tests
/// put one that fails in its place).
type OpenSegment = fn(&Path, u64) -> Result<Scanner>;

/// Reads the records to send, in file order: each numbered above every
/// record handed over before it (the cursor never goes back) and at or
/// below the writer's durable mark (nothing the writer has not synced).
#[derive(Clone)]
struct Tail {
    dir: PathBuf,
    segment: Option<(u64, PathBuf)>,
    offset: u64,
    /// The lowest number still to send: one above the cursor, then above
    /// the last record handed over. A frame numbered below it (damage, a
    /// frame forged at rest, which start-up and `verify` report) is
    /// skipped, never sent again.
    next: u64,
    /// How far each segment left for another one was read (by name), so
    /// coming back to it reads only what was added since.
    read_to: BTreeMap<u64, u64>,
    open: OpenSegment,
}

/// The segment that holds record `next` if the writer wrote it: the last
/// one named at or below it (else the first).
fn holding(segs: &[(u64, PathBuf)], next: u64) -> Option<&(u64, PathBuf)> {
    segs.iter().rev().find(|(f, _)| *f <= next).or(segs.first())
}

impl Tail {
    fn new(dir: &Path, after: u64) -> Tail {
        Tail {
            dir: dir.to_path_buf(),
            segment: None,
            offset: 0,
            next: after.saturating_add(1),
            read_to: BTreeMap::new(),
            open: Scanner::open_at,
        }
    }

    /// The trail's segments now; where the tail was in segments that are
    /// gone (dropped) is forgotten.
    fn segments(&mut self) -> Result<Vec<(u64, PathBuf)>> {
        let segs = list_segments(&self.dir)?;
        self.read_to.retain(|f, _| segs.iter().any(|s| s.0 == *f));
        Ok(segs)
    }

    /// Moves to segment `seg`, where it was left before (or its start).
    fn enter(&mut self, seg: &(u64, PathBuf)) {
        if let Some((first, _)) = &self.segment {
            self.read_to.insert(*first, self.offset);
        }
        self.offset = self.read_to.get(&seg.0).copied().unwrap_or(0);
        self.segment = Some(seg.clone());
    }

    /// Up to `max` records after those handed over, numbered at most
    /// `durable`.
    ///
    /// A frame numbered above `durable` is the writer's record not yet
    /// synced: the tail waits at it. Unless the next frame is one to send
    /// (numbered from `next` to `durable`): the writer numbers up in file
    /// order, so a frame above its durable mark with a durable record after
    /// it was not written by it (a frame forged or damaged at rest), and is
    /// skipped rather than waited for.
    ///
    /// When its segment has nothing more to send now, the tail takes the
    /// segment that holds `next` (the writer's, also when a segment named
    /// higher was planted beside it), or else, at the end of its segment,
    /// the next one by name (records lost to damage and cut at start-up
    /// leave a gap before it). Each segment is read at most once per call,
    /// so a call ends whatever the directory holds; a segment that cannot
    /// be opened ends it with the error (the forwarder then waits before
    /// it tries again).
    ///
    /// With nothing durable above what was handed over (`durable` below
    /// `next`: an idle trail), nothing can be sent, and the call touches
    /// no file: where the tail stands is where the next call that can
    /// send goes on from, as it would after reading the files now.
    fn batch(&mut self, max: usize, durable: u64) -> Result<Vec<Outgoing>> {
        let mut out = Vec::new();
        if durable < self.next {
            return Ok(out);
        }
        let mut visited: Vec<u64> = Vec::new();
        loop {
            if self.segment.is_none() {
                let segs = self.segments()?;
                let Some(seg) = holding(&segs, self.next) else {
                    return Ok(out);
                };
                self.enter(seg);
            }
            let Some((first, path)) = self.segment.clone() else {
                return Ok(out);
            };
            if visited.contains(&first) {
                return Ok(out);
            }
            visited.push(first);
            // Read only what follows the position already consumed.
            let mut sc = match (self.open)(&path, self.offset) {
                Ok(sc) => sc,
                Err(e) => {
                    self.segment = None;
                    let gone = matches!(&e, AuditError::Fs(drivesec_fsutil::FsError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound);
                    if gone {
                        // Dropped under us: start over from the segment list.
                        continue;
                    }
                    return if out.is_empty() { Err(e) } else { Ok(out) };
                }
            };
            let mut at_end = false;
            // A frame above `durable` met last: (offset, its end).
            let mut above: Option<(u64, u64)> = None;
            while out.len() < max {
                let item = match sc.next_item() {
                    Ok(Some(item)) => item,
                    Ok(None) => break,
                    Err(_) => {
                        // Dropped or unreadable under us: start over.
                        self.segment = None;
                        return Ok(out);
                    }
                };
                if let Some((at, end)) = above.take() {
                    match item {
                        Item::Frame { frame: f, .. } if f.seq >= self.next && f.seq <= durable => {
                            // Not the writer's: skipped.
                            self.offset = end;
                        }
                        _ => {
                            // The writer's record being synced: wait at it.
                            self.offset = at;
                            break;
                        }
                    }
                }
                match item {
                    Item::Frame { offset, frame: f } => {
                        let end = offset + f.len as u64;
                        if f.seq > durable && f.seq >= self.next {
                            above = Some((offset, end));
                            continue;
                        }
                        if f.seq >= self.next {
                            out.push((f.seq, f.hash, f.prev, f.body.to_vec()));
                            self.next = f.seq.saturating_add(1);
                        }
                        self.offset = end;
                    }
                    // Damage in the middle (a later frame is whole): the
                    // records after it are still delivered, as start-up
                    // recovery keeps them (the gap shows at the collector
                    // as a jump in `seq`). A torn tail waits for the writer.
                    Item::Unreadable(u) if u.to_end => {
                        self.offset = u.offset;
                        break;
                    }
                    Item::Unreadable(u) => self.offset = u.end,
                    Item::End { offset } => {
                        self.offset = offset;
                        at_end = true;
                        break;
                    }
                }
            }
            if let Some((at, _)) = above {
                // The last frame read is above the mark: wait at it.
                self.offset = at;
            }
            if out.len() >= max {
                return Ok(out);
            }
            // Nothing more here now. The segment holding `next` is where
            // the writer puts it: go there when it is another one (this one
            // may be named higher than the writer's, planted or left by
            // damage). Else, at the end of this segment, move on by name if
            // a later one exists (the writer has left this one; the next
            // one may start after a gap, records lost to damage and cut at
            // start-up: the forwarder goes on there rather than wait for
            // numbers that will never come).
            let segs = self.segments()?;
            let target = match holding(&segs, self.next) {
                Some(h) if h.0 != first => Some(h),
                _ if at_end && above.is_none() => segs.iter().find(|(f, _)| *f > first),
                _ => None,
            };
            match target {
                Some(t) if !visited.contains(&t.0) => self.enter(t),
                _ => return Ok(out),
            }
        }
    }
}

fn sd_escape(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

fn field(v: &str, max: usize) -> String {
    let f: String = v
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if f.is_empty() { "-".into() } else { f }
}

/// The record's TIMESTAMP as is when it is one printable token (the
/// writer's RFC 3339 stamp), else the NILVALUE.
fn timestamp(v: &str) -> String {
    if !v.is_empty() && v.len() <= 32 && v.chars().all(|c| c.is_ascii_graphic()) {
        v.to_string()
    } else {
        "-".into()
    }
}

/// Syslog facility of every message: 13, log audit.
pub const FACILITY: u8 = 13;

/// The syslog severity of a record: 1 (alert) for the tamper response's
/// records, 2 (critical) for a trail found rewound or broken at start-up,
/// 4 (warning) for any other failure or refusal, 5 (notice) for any other
/// success; 3 (error) for a body that is not a record.
pub fn severity(rec: Option<&Record>) -> u8 {
    match rec {
        None => 3,
        Some(r)
            if matches!(
                r.action.as_str(),
                "device.tamper-detected" | "device.tampered"
            ) =>
        {
            1
        }
        Some(r)
            if matches!(
                r.action.as_str(),
                "audit.trail-rewound" | "audit.integrity-failed"
            ) =>
        {
            2
        }
        Some(r) if r.outcome == Outcome::Success => 5,
        Some(_) => 4,
    }
}

/// One record, as [`format_message`] puts it on the wire.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// HOSTNAME: the device's name.
    pub hostname: &'a str,
    /// Private enterprise number of the SD-ID.
    pub enterprise_number: u32,
    /// Sequence number.
    pub seq: u64,
    /// The record's hash.
    pub hash: &'a [u8; 32],
    /// The previous record's hash.
    pub prev: &'a [u8; 32],
    /// The highest sequence number a signed statement in the trail covers
    /// (latest checkpoint or anchor; 0: none yet).
    pub checkpoint: u64,
    /// The record body (JSON).
    pub body: &'a [u8],
    /// Longest message in octets; MSG is cut to fit.
    pub max: usize,
}

/// Formats one record as an RFC 5424 message (without the octet count),
/// at most `m.max` octets: when the whole body does not fit, MSG is its
/// longest prefix that does (cut at a character boundary) and the message
/// says `truncated="true"`; `bytes` always gives the body's full length.
pub fn format_message(m: &Message<'_>) -> String {
    let rec: Option<Record> = Record::parse(m.body).ok();
    let (time, msgid, actor, outcome) = match &rec {
        Some(r) => (
            timestamp(&r.time),
            r.action.clone(),
            match &r.actor {
                crate::Actor::User(u) => format!("user:{u}"),
                crate::Actor::Certificate(c) => format!("certificate:{c}"),
                crate::Actor::Device => "device".into(),
            },
            r.outcome.as_str().to_string(),
        ),
        None => ("-".into(), "unparsed".into(), "-".into(), "-".into()),
    };
    let pri = u16::from(FACILITY) * 8 + u16::from(severity(rec.as_ref()));
    let actor: String = actor.chars().take(MAX_SD_ACTOR).collect();
    let head = |truncated: bool| {
        format!(
            "<{pri}>1 {time} {host} drivesecd - {msgid} [{sd_id} seq=\"{seq}\" hash=\"{hash}\" prev=\"{prev}\" actor=\"{actor}\" outcome=\"{outcome}\" checkpoint=\"{checkpoint}\" bytes=\"{bytes}\"{trunc}]",
            host = field(m.hostname, 255),
            msgid = field(&msgid, 32),
            sd_id = sd_id(m.enterprise_number),
            seq = m.seq,
            hash = hex::encode(m.hash),
            prev = hex::encode(m.prev),
            actor = sd_escape(&actor),
            outcome = sd_escape(&outcome),
            checkpoint = m.checkpoint,
            bytes = m.body.len(),
            trunc = if truncated { " truncated=\"true\"" } else { "" },
        )
    };
    let msg = String::from_utf8_lossy(m.body);
    let whole = head(false);
    if whole.len() + 1 + msg.len() <= m.max {
        return format!("{whole} {msg}");
    }
    let head = head(true);
    let room = m.max.saturating_sub(head.len() + 1);
    let mut cut = room.min(msg.len());
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut == 0 {
        return head;
    }
    format!("{head} {}", &msg[..cut])
}

/// The highest sequence number a signed statement in `dir` covers: the
/// latest checkpoint (`checkpoint.json`) or the anchor (`anchor.json`, which
/// a trail started by a factory reset begins with), 0 when there is none
/// or it cannot be read (a collector sees that as a step back). Read as
/// found; the start-up check verifies the signatures.
fn latest_checkpoint(dir: &Path) -> u64 {
    [LATEST_CHECKPOINT, ANCHOR]
        .iter()
        .filter_map(|f| read_checkpoint(&dir.join(f)).ok().flatten())
        .map(|c| c.seq)
        .max()
        .unwrap_or(0)
}

fn run(dir: &Path, mark: &DurableMark, cfg: &ForwardConfig, tls: &Tls, ctl: &Control) {
    let mut backoff = cfg.backoff_min;
    let mut cursor = read_cursor(dir, "forwarded").unwrap_or(0);
    let mut tail = Tail::new(dir, cursor);
    // Where the tail stood after the last delivered batch: a resend starts
    // there, by position (the `Tail` as it stood: its segment, offset and
    // next number), not by looking the cursor's number up again (see
    // `Tail::batch`).
    let mut resume = tail.clone();
    let fail = |f: Failure, count: bool| {
        ctl.update(|s| {
            s.connected = false;
            if count {
                s.failures += 1;
            }
            if f.refused.is_some() {
                s.collector_refused = f.refused;
            }
            s.last_error = Some(f.message);
        });
    };
    'outer: while !ctl.stopped() {
        let mut conn = match connect(cfg, tls) {
            Ok(c) => c,
            Err(e) => {
                fail(e, true);
                if ctl.sleep(backoff) {
                    break;
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue;
            }
        };
        // The backoff is reset by a delivery, not by a handshake: a
        // collector that accepts and closes at once is a failing one.
        let mut delivered = false;
        ctl.update(|s| {
            s.connected = true;
            s.connections += 1;
            s.collector_refused = None;
        });
        loop {
            if ctl.stopped() {
                close(&mut conn);
                break 'outer;
            }
            let batch = if mark.retired() {
                // The trail was archived (factory reset): its path holds
                // another trail, which a forwarder started for it sends.
                ctl.update(|s| {
                    s.last_error = Some(
                        "the trail this forwarder was started for was archived (factory reset); nothing more is sent until forwarding is started again".into(),
                    );
                });
                Vec::new()
            } else {
                match tail.batch(cfg.batch, mark.seq()) {
                    Ok(b) => b,
                    Err(e) => {
                        ctl.update(|s| s.last_error = Some(e.to_string()));
                        Vec::new()
                    }
                }
            };
            // Read before this check, so a record appended after a new CRL
            // was adopted goes out only to a collector that passes it.
            if let Err(e) = recheck(&mut conn, cfg, tls) {
                close(&mut conn);
                tail = resume.clone();
                fail(e, true);
                if ctl.sleep(backoff) {
                    break 'outer;
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue 'outer;
            }
            if peer_closed(&mut conn.stream) {
                // Do not send into a closed connection: what this batch read
                // is sent again on the next one.
                if !batch.is_empty() {
                    tail = resume.clone();
                }
                fail(
                    Failure::other("collector closed the connection".into()),
                    !delivered,
                );
                if !delivered {
                    if ctl.sleep(backoff) {
                        break 'outer;
                    }
                    backoff = (backoff * 2).min(cfg.backoff_max);
                }
                continue 'outer;
            }
            if batch.is_empty() {
                // Stopped while waiting: the loop's first check ends it.
                let _ = ctl.sleep(cfg.poll);
                continue;
            }
            let checkpoint = latest_checkpoint(dir);
            let mut wire = Vec::new();
            let last = batch.last().map(|b| b.0).unwrap_or(cursor);
            for (seq, hash, prev, body) in &batch {
                let msg = format_message(&Message {
                    hostname: &cfg.hostname,
                    enterprise_number: cfg.enterprise_number,
                    seq: *seq,
                    hash,
                    prev,
                    checkpoint,
                    body,
                    max: cfg.max_message,
                });
                wire.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
            }
            match conn
                .stream
                .write_all(&wire)
                .and_then(|()| conn.stream.flush())
            {
                Ok(()) => {
                    delivered = true;
                    backoff = cfg.backoff_min;
                    // Batches go up in number; the cursor never goes back.
                    cursor = cursor.max(last);
                    resume = tail.clone();
                    if let Err(e) = write_cursor(dir, "forwarded", cursor) {
                        ctl.update(|s| s.last_error = Some(e.to_string()));
                    }
                    ctl.update(|s| s.forwarded = cursor);
                }
                Err(e) => {
                    tail = resume.clone();
                    fail(
                        Failure::other(format!("write to {}: {e}", cfg.collector)),
                        true,
                    );
                    if ctl.sleep(backoff) {
                        break 'outer;
                    }
                    continue 'outer;
                }
            }
        }
    }
    ctl.update(|s| s.connected = false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    const BODY: &[u8] = br#"{"time":"2026-11-28T04:00:00.000000Z","time_quality":"unknown","actor":{"kind":"user","id":"a\"b]"},"action":"auth.login","outcome":"denied"}"#;

    fn msg(body: &[u8], max: usize) -> String {
        format_message(&Message {
            hostname: "drive-001",
            enterprise_number: ENTERPRISE_NUMBER,
            seq: 7,
            hash: &[1; 32],
            prev: &[0; 32],
            checkpoint: 5,
            body,
            max,
        })
    }

    #[test]
    fn a_cursor_at_the_top_of_the_range_neither_panics_nor_wraps()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let mut t = Tail::new(tmp.path(), u64::MAX);
        assert_eq!(t.next, u64::MAX);
        assert!(t.batch(10, u64::MAX)?.is_empty());
        Ok(())
    }

    #[test]
    fn messages_follow_rfc5424() {
        let m = msg(BODY, DEFAULT_MAX_MESSAGE);
        assert!(
            m.starts_with("<108>1 2026-11-28T04:00:00.000000Z drive-001 drivesecd - auth.login [drivesec@50316 seq=\"7\" hash=\"0101"),
            "{m}"
        );
        assert!(m.contains(r#"actor="user:a\"b\]""#), "{m}");
        assert!(
            m.contains(&format!(" checkpoint=\"5\" bytes=\"{}\"] {{", BODY.len())),
            "{m}"
        );
        assert!(!m.contains("truncated"), "{m}");
        assert!(m.ends_with(std::str::from_utf8(BODY).unwrap_or_default()));
    }

    #[test]
    fn the_sd_id_takes_the_configured_enterprise_number() {
        let m = format_message(&Message {
            enterprise_number: 99999,
            ..Message {
                hostname: "d",
                enterprise_number: 1,
                seq: 1,
                hash: &[0; 32],
                prev: &[0; 32],
                checkpoint: 0,
                body: BODY,
                max: DEFAULT_MAX_MESSAGE,
            }
        });
        assert!(m.contains(" [drivesec@99999 seq=\"1\""), "{m}");
        assert!(check_enterprise_number(0).is_err());
        assert!(check_enterprise_number(1 << 32).is_err());
        assert_eq!(check_enterprise_number(32473).ok(), Some(32473));
        assert!(check_max_message(2047).is_err());
        assert!(check_max_message(MAX_MAX_MESSAGE as u64 + 1).is_err());
    }

    #[test]
    fn severities_follow_outcome_and_tamper() {
        let rec = |action: &str, outcome: &str| -> Record {
            serde_json::from_str(&format!(
                r#"{{"time":"t","time_quality":"unknown","actor":{{"kind":"device"}},"action":"{action}","outcome":"{outcome}"}}"#
            ))
            .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(severity(Some(&rec("auth.login", "success"))), 5);
        assert_eq!(severity(Some(&rec("auth.login", "failure"))), 4);
        assert_eq!(severity(Some(&rec("param.write", "denied"))), 4);
        assert_eq!(severity(Some(&rec("device.tamper-detected", "success"))), 1);
        assert_eq!(severity(Some(&rec("device.tampered", "failure"))), 1);
        assert_eq!(severity(Some(&rec("audit.trail-rewound", "failure"))), 2);
        assert_eq!(severity(Some(&rec("audit.integrity-failed", "success"))), 2);
        assert_eq!(severity(None), 3);
        assert!(
            msg(b"not json", DEFAULT_MAX_MESSAGE)
                .starts_with("<107>1 - drive-001 drivesecd - unparsed [")
        );
    }

    /// Writes segments of frames with the given numbers (`None`: a damaged
    /// frame, garbage in its place) under `dir/segments/`.
    fn segments(dir: &Path, segs: &[&[Option<u64>]]) {
        let seg_dir = dir.join(crate::layout::SEGMENTS);
        std::fs::create_dir_all(&seg_dir).unwrap_or_else(|e| panic!("{e}"));
        for frames in segs {
            let mut buf = Vec::new();
            let mut prev = [0u8; 32];
            let first = frames.iter().flatten().next().copied().unwrap_or(1);
            for f in frames.iter() {
                match f {
                    Some(seq) => prev = frame::encode(*seq, &prev, BODY, &mut buf),
                    None => buf.extend_from_slice(b"DSA1 not a frame at all, just damage"),
                }
            }
            std::fs::write(seg_dir.join(crate::layout::segment_name(first)), buf)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// What the next batch sends, everything on disk being durable.
    fn seqs(tail: &mut Tail) -> Vec<u64> {
        seqs_upto(tail, u64::MAX)
    }

    /// What the next batch sends, with the writer durable up to `durable`.
    fn seqs_upto(tail: &mut Tail, durable: u64) -> Vec<u64> {
        tail.batch(100, durable)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|o| o.0)
            .collect()
    }

    /// Start-up recovery keeps the records after a damaged frame and may
    /// leave a gap between segments: the forwarder delivers everything
    /// that is still there instead of waiting for numbers that will never
    /// come.
    #[test]
    fn the_tail_goes_on_past_damage_and_across_a_gap_between_segments() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path();
        // Segment 1: 1..=3, damage, 5; segment 7 (6 was lost): 7, 8.
        segments(
            dir,
            &[
                &[Some(1), Some(2), Some(3), None, Some(5)],
                &[Some(7), Some(8)],
            ],
        );
        let mut tail = Tail::new(dir, 0);
        let mut got = Vec::new();
        for _ in 0..4 {
            got.extend(seqs(&mut tail));
        }
        assert_eq!(got, [1, 2, 3, 5, 7, 8]);
        // A torn tail (the writer mid-append) is waited for, not skipped:
        // once the frame is whole, it is delivered.
        let seg = dir
            .join(crate::layout::SEGMENTS)
            .join(crate::layout::segment_name(7));
        let whole = std::fs::read(&seg).unwrap_or_else(|e| panic!("{e}"));
        let mut more = Vec::new();
        frame::encode(9, &[0; 32], BODY, &mut more);
        let torn = [whole.as_slice(), &more[..more.len() / 2]].concat();
        std::fs::write(&seg, &torn).unwrap_or_else(|e| panic!("{e}"));
        assert!(seqs(&mut tail).is_empty());
        std::fs::write(&seg, [whole.as_slice(), &more].concat()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seqs(&mut tail), [9]);
    }

    /// A frame numbered above the ones after it (forged at rest, or left by
    /// damage) does not make the tail skip every later record: it is above
    /// what the writer made durable (the writer's records here are 1..=4),
    /// with a durable record after it, so it is not the writer's and is
    /// skipped, never sent (sent, it would move the cursor to the top and
    /// every later record would be below it). A resend after a failed write
    /// starts where the last delivered batch ended.
    #[test]
    fn a_high_number_in_the_file_does_not_hide_the_records_after_it() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path();
        segments(
            dir,
            &[&[Some(1), Some(2), Some(u64::MAX - 1), Some(3), Some(4)]],
        );
        let mut tail = Tail::new(dir, 0);
        let first = tail.batch(3, 4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.iter().map(|o| o.0).collect::<Vec<_>>(), [1, 2, 3]);
        // Delivered; the next batch fails and is sent again from there.
        let resume = tail.clone();
        assert_eq!(seqs_upto(&mut tail, 4), [4]);
        let mut tail = resume;
        assert_eq!(seqs_upto(&mut tail, 4), [4]);
        assert!(seqs_upto(&mut tail, 4).is_empty());
    }

    /// Records the writer has written but not yet synced (above its durable
    /// mark) are not sent: the tail waits at the first of them, and sends
    /// them once the mark covers them.
    #[test]
    fn records_above_the_durable_mark_wait_until_it_covers_them() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path();
        segments(dir, &[&[Some(1), Some(2), Some(3), Some(4), Some(5)]]);
        let mut tail = Tail::new(dir, 0);
        assert_eq!(seqs_upto(&mut tail, 3), [1, 2, 3]);
        assert!(seqs_upto(&mut tail, 3).is_empty());
        assert_eq!(seqs_upto(&mut tail, 4), [4]);
        assert_eq!(seqs_upto(&mut tail, 5), [5]);
        assert!(seqs_upto(&mut tail, 5).is_empty());
    }

    /// A frame with a low number after higher ones (forged at rest; the
    /// start-up check and `verify` report it) is skipped: what the tail
    /// hands over only goes up, so the cursor never goes back and nothing
    /// is sent twice, also when the frame ends a batch.
    #[test]
    fn a_forged_low_number_never_moves_the_cursor_back() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path();
        segments(
            dir,
            &[&[Some(1), Some(2), Some(3), Some(4), Some(5), Some(2)]],
        );
        let mut tail = Tail::new(dir, 0);
        assert_eq!(seqs_upto(&mut tail, 5), [1, 2, 3, 4, 5]);
        assert!(seqs_upto(&mut tail, 5).is_empty());
        // After a restart from a cursor of 3: 4 and 5, never 2 again.
        let mut tail = Tail::new(dir, 3);
        assert_eq!(seqs_upto(&mut tail, 5), [4, 5]);
        assert!(seqs_upto(&mut tail, 5).is_empty());
    }

    /// A segment planted at rest beside the writer's with a higher name
    /// (here `u64::MAX`, while the daemon runs) does not capture the
    /// tail, whatever its frame's number (below the cursor, or above the
    /// durable mark, which the tail would otherwise wait at for good):
    /// records the writer appends to its own segment still go out.
    #[test]
    fn a_segment_named_above_the_writers_does_not_capture_the_tail() {
        for planted in [1, u64::MAX] {
            let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let dir = tmp.path();
            segments(dir, &[&[Some(1), Some(2), Some(3)]]);
            let mut bytes = Vec::new();
            frame::encode(planted, &[7; 32], BODY, &mut bytes);
            std::fs::write(
                dir.join(crate::layout::SEGMENTS)
                    .join(crate::layout::segment_name(u64::MAX)),
                bytes,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let mut tail = Tail::new(dir, 0);
            assert_eq!(seqs_upto(&mut tail, 3), [1, 2, 3], "{planted}");
            assert!(seqs_upto(&mut tail, 3).is_empty(), "{planted}");
            // The writer appends 4 and 5 to its segment.
            segments(dir, &[&[Some(1), Some(2), Some(3), Some(4), Some(5)]]);
            assert_eq!(seqs_upto(&mut tail, 5), [4, 5], "{planted}");
            assert!(seqs_upto(&mut tail, 5).is_empty(), "{planted}");
            segments(
                dir,
                &[&[Some(1), Some(2), Some(3), Some(4), Some(5), Some(6)]],
            );
            assert_eq!(seqs_upto(&mut tail, 6), [6], "{planted}");
        }
    }

    /// How often [`refuse`] was asked to open a segment.
    static OPENS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Opens nothing: as a segment the forwarder may not read (EACCES) or
    /// a process out of descriptors. Counts the attempts, and ends a test
    /// that keeps trying (a busy loop) instead of hanging it.
    fn refuse(path: &Path, _: u64) -> Result<Scanner> {
        let n = OPENS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        assert!(
            n < 1000,
            "the tail tried to open {} {n} times in a row",
            path.display()
        );
        Err(
            drivesec_fsutil::FsError::io("open", path, std::io::Error::from_raw_os_error(13))
                .into(),
        )
    }

    /// A listed segment that cannot be opened ends the batch with the
    /// error after one attempt (the forwarder records it and waits its
    /// poll interval, where a stop is seen) instead of trying again at
    /// once for ever; once it can be opened, the tail goes on.
    #[test]
    fn a_segment_that_cannot_be_opened_ends_the_batch_with_the_error() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path();
        segments(dir, &[&[Some(1), Some(2)]]);
        let mut tail = Tail::new(dir, 0);
        tail.open = refuse;
        let e = tail.batch(100, 2).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("os error 13")),
            "{e:?}"
        );
        assert_eq!(OPENS.load(std::sync::atomic::Ordering::SeqCst), 1);
        tail.open = Scanner::open_at;
        assert_eq!(seqs_upto(&mut tail, 2), [1, 2]);
    }

    /// An idle forwarder (nothing durable above what it handed over)
    /// neither lists `segments/` nor opens a segment at its polls: here
    /// neither could be read, and the idle batches still end quietly.
    /// Once a record is durable, the tail goes on where it stood.
    #[test]
    fn an_idle_tail_touches_no_file() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path();
        segments(dir, &[&[Some(1), Some(2), Some(3)]]);
        let mut tail = Tail::new(dir, 0);
        assert_eq!(seqs_upto(&mut tail, 3), [1, 2, 3]);
        // `segments/` cannot be listed, no segment opened.
        let seg_dir = dir.join(crate::layout::SEGMENTS);
        let away = dir.join("away");
        std::fs::rename(&seg_dir, &away).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&seg_dir, b"not a directory").unwrap_or_else(|e| panic!("{e}"));
        tail.open = |path, _| {
            Err(
                drivesec_fsutil::FsError::io("open", path, std::io::Error::from_raw_os_error(13))
                    .into(),
            )
        };
        for _ in 0..3 {
            assert!(seqs_upto(&mut tail, 3).is_empty());
        }
        std::fs::remove_file(&seg_dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&away, &seg_dir).unwrap_or_else(|e| panic!("{e}"));
        tail.open = Scanner::open_at;
        segments(dir, &[&[Some(1), Some(2), Some(3), Some(4)]]);
        assert_eq!(seqs_upto(&mut tail, 4), [4]);
    }

    #[test]
    fn the_checkpoint_param_is_the_highest_signed_statement() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path();
        let write = |name: &str, kind: crate::CheckpointKind, seq: u64| {
            let cp = crate::Checkpoint {
                kind,
                seq,
                hash: "00".repeat(32),
                time: "2026-01-01T00:00:00.000000Z".into(),
                algorithm: "ed25519".into(),
                signature: String::new(),
            };
            std::fs::write(
                dir.join(name),
                serde_json::to_vec(&cp).unwrap_or_else(|e| panic!("{e}")),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        };
        assert_eq!(latest_checkpoint(dir), 0);
        // A trail a factory reset started: only the anchor so far.
        write(ANCHOR, crate::CheckpointKind::Anchor, 500);
        assert_eq!(latest_checkpoint(dir), 500);
        write(LATEST_CHECKPOINT, crate::CheckpointKind::Checkpoint, 520);
        assert_eq!(latest_checkpoint(dir), 520);
        // Checkpoints deleted: the value steps back, for the collector to see.
        std::fs::remove_file(dir.join(LATEST_CHECKPOINT)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(latest_checkpoint(dir), 500);
    }

    #[test]
    fn long_records_are_cut_to_the_limit_and_marked() {
        // A body of multi-byte characters: the cut falls on a boundary.
        let big = format!(
            r#"{{"time":"2026-11-28T04:00:00.000000Z","time_quality":"unknown","actor":{{"kind":"device"}},"action":"x","outcome":"success","details":{{"v":"{}"}}}}"#,
            "\u{e9}".repeat(10_000)
        );
        for max in [MIN_MAX_MESSAGE, DEFAULT_MAX_MESSAGE, 20_001] {
            let m = msg(big.as_bytes(), max);
            assert!(m.len() <= max, "{max}: {}", m.len());
            assert!(m.len() >= max - 4, "{max}: {}", m.len());
            assert!(m.contains(" truncated=\"true\"]"), "{m}");
            assert!(m.contains(&format!(" bytes=\"{}\"", big.len())), "{m}");
            let msg_part = m.split_once("\"true\"] ").map(|x| x.1).unwrap_or_default();
            assert!(big.starts_with(msg_part));
        }
        let whole = msg(big.as_bytes(), MAX_MAX_MESSAGE);
        assert!(whole.ends_with(&big) && !whole.contains("truncated"));
    }
}
