//! Forwarding the trail to a syslog collector: RFC 5424 messages over TLS
//! with octet-counting framing (RFC 5425), mutually authenticated with the
//! device's certificate, whose key stays in the keystore.
//!
//! Delivery: a persistent cursor (`cursors/forwarded`) names the last record
//! handed to the collector. Records after it are sent in order, in batches;
//! the cursor advances only after a batch was written and flushed. While the
//! collector is unreachable nothing is lost: the records stay in the trail
//! and the forwarder retries with exponential backoff. Before each batch the
//! connection is checked for an orderly close by the collector, so a
//! collector that shut down is not sent records into the void.
//!
//! Every message carries the structured data element `drivesec@32473` with
//! the record's `seq`, `hash` and `prev`, so the collector side can prove
//! completeness (no gap in `seq`) and integrity (the hash chain). 32473 is
//! the private enterprise number IANA reserves for documentation (RFC 5612);
//! a deployment substitutes its own through [`ForwardConfig::sd_id`].
//!
//! RFC 5425 has no application-level acknowledgement: records written into a
//! socket that the collector then loses in a crash, after TCP accepted them,
//! are not resent. RELP would close that gap; this forwarder does not speak it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use drivesec_keystore::adapters::TlsKey;
use drivesec_keystore::{KeyHandle, KeyStore};
use rustls::pki_types::{CertificateDer, ServerName};

use crate::frame::{self, Decoded};
use crate::writer::{list_segments, read_cursor, write_cursor};
use crate::{AuditError, Outcome, Record, Result};

/// Where and how to forward.
#[derive(Clone)]
pub struct ForwardConfig {
    /// Collector address.
    pub collector: SocketAddr,
    /// Name (DNS or IP) the collector's certificate must carry.
    pub server_name: String,
    /// Trust anchors for the collector's certificate (PEM certificates).
    pub collector_roots: Vec<CertificateDer<'static>>,
    /// The device's certificate chain (leaf first), presented to the collector.
    pub client_chain: Vec<CertificateDer<'static>>,
    /// The keystore holding the device key.
    pub keystore: Arc<dyn KeyStore>,
    /// The device key's handle.
    pub key: KeyHandle,
    /// HOSTNAME field: the device's name.
    pub hostname: String,
    /// SD-ID of the drivesec element (default `drivesec@32473`).
    pub sd_id: String,
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
            client_chain,
            keystore,
            key,
            hostname: hostname.into(),
            sd_id: "drivesec@32473".into(),
            batch: 256,
            poll: Duration::from_millis(100),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
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
    /// Starts forwarding the trail in `dir` from its cursor.
    pub fn start(dir: &Path, cfg: ForwardConfig) -> Result<Forwarder> {
        let tls = Arc::new(client_config(&cfg)?);
        let forwarded = read_cursor(dir, "forwarded")?;
        let control = Arc::new(Control {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            status: Mutex::new(ForwardStatus {
                forwarded,
                ..ForwardStatus::default()
            }),
        });
        let c = control.clone();
        let dir = dir.to_path_buf();
        let thread = std::thread::spawn(move || run(&dir, &cfg, tls, &c));
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

fn client_config(cfg: &ForwardConfig) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for r in &cfg.collector_roots {
        roots
            .add(r.clone())
            .map_err(|e| AuditError::Forward(format!("unusable collector trust anchor: {e}")))?;
    }
    let key = TlsKey::new(cfg.keystore.clone(), &cfg.key)?;
    let certified = key.certified(cfg.client_chain.clone());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuditError::Forward(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified))))
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(
    cfg: &ForwardConfig,
    tls: &Arc<rustls::ClientConfig>,
) -> std::result::Result<Tls, String> {
    let name = ServerName::try_from(cfg.server_name.clone())
        .map_err(|e| format!("bad server name: {e}"))?;
    let sock = TcpStream::connect_timeout(&cfg.collector, Duration::from_secs(5))
        .map_err(|e| format!("connect {}: {e}", cfg.collector))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(tls.clone(), name).map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| format!("TLS handshake with {}: {e}", cfg.collector))?;
    }
    Ok(s)
}

/// Whether the collector has closed the connection (EOF, close_notify or error).
fn peer_closed(s: &mut Tls) -> bool {
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

/// Reads up to `max` records after `after`, in order.
struct Tail {
    dir: PathBuf,
    segment: Option<(u64, PathBuf)>,
    offset: u64,
    next: u64,
}

impl Tail {
    fn new(dir: &Path, after: u64) -> Tail {
        Tail {
            dir: dir.to_path_buf(),
            segment: None,
            offset: 0,
            next: after + 1,
        }
    }

    fn batch(&mut self, max: usize) -> Result<Vec<Outgoing>> {
        let mut out = Vec::new();
        loop {
            if self.segment.is_none() {
                let segs = list_segments(&self.dir)?;
                // The segment holding `next`: the last one starting at or before it.
                let Some(seg) = segs
                    .iter()
                    .rev()
                    .find(|(f, _)| *f <= self.next)
                    .or(segs.first())
                else {
                    return Ok(out);
                };
                self.segment = Some(seg.clone());
                self.offset = 0;
            }
            let Some((first, path)) = self.segment.clone() else {
                return Ok(out);
            };
            // Read only what follows the position already consumed.
            let read_from = |p: &Path, at: u64| -> std::io::Result<Vec<u8>> {
                use std::io::Seek;
                let mut f = std::fs::File::open(p)?;
                f.seek(std::io::SeekFrom::Start(at))?;
                let mut v = Vec::new();
                f.read_to_end(&mut v)?;
                Ok(v)
            };
            let base = self.offset;
            let data = match read_from(&path, base) {
                Ok(d) => d,
                Err(_) => {
                    // Dropped under us: start over from the segment list.
                    self.segment = None;
                    if out.is_empty() && !list_segments(&self.dir)?.is_empty() {
                        continue;
                    }
                    return Ok(out);
                }
            };
            let mut off = 0usize;
            while off < data.len() && out.len() < max {
                match frame::decode(&data[off..]) {
                    Decoded::Frame(f) => {
                        if f.seq >= self.next {
                            out.push((f.seq, f.hash, f.prev, f.body.to_vec()));
                            self.next = f.seq + 1;
                        }
                        off += f.len;
                    }
                    _ => break,
                }
            }
            self.offset = base + off as u64;
            if out.len() >= max {
                return Ok(out);
            }
            // At the end of this segment: move on only if a later one exists.
            let segs = list_segments(&self.dir)?;
            match segs.iter().find(|(f, _)| *f > first && *f <= self.next) {
                Some(next)
                    if off >= data.len() || matches!(frame::decode(&data[off..]), Decoded::End) =>
                {
                    self.segment = Some(next.clone());
                    self.offset = 0;
                }
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

/// Formats one record as an RFC 5424 message (without the octet count).
pub fn format_message(
    cfg_hostname: &str,
    sd_id: &str,
    seq: u64,
    hash: &[u8; 32],
    prev: &[u8; 32],
    body: &[u8],
) -> String {
    let rec: Option<Record> = serde_json::from_slice(body).ok();
    // Facility 13 (log audit); notice for success, warning otherwise.
    let (time, msgid, severity, actor, outcome) = match &rec {
        Some(r) => (
            r.time.clone(),
            r.action.clone(),
            if r.outcome == Outcome::Success { 5 } else { 4 },
            match &r.actor {
                crate::Actor::User(u) => format!("user:{u}"),
                crate::Actor::Certificate(c) => format!("certificate:{c}"),
                crate::Actor::Device => "device".into(),
            },
            r.outcome.as_str().to_string(),
        ),
        None => ("-".into(), "unparsed".into(), 3, "-".into(), "-".into()),
    };
    let pri = 13 * 8 + severity;
    format!(
        "<{pri}>1 {time} {host} drivesecd - {msgid} [{sd_id} seq=\"{seq}\" hash=\"{hash}\" prev=\"{prev}\" actor=\"{actor}\" outcome=\"{outcome}\"] {msg}",
        host = field(cfg_hostname, 255),
        msgid = field(&msgid, 32),
        hash = hex::encode(hash),
        prev = hex::encode(prev),
        actor = sd_escape(&actor),
        outcome = sd_escape(&outcome),
        msg = String::from_utf8_lossy(body),
    )
}

fn run(dir: &Path, cfg: &ForwardConfig, tls: Arc<rustls::ClientConfig>, ctl: &Control) {
    let mut backoff = cfg.backoff_min;
    let mut cursor = read_cursor(dir, "forwarded").unwrap_or(0);
    let mut tail = Tail::new(dir, cursor);
    'outer: while !ctl.stopped() {
        let mut conn = match connect(cfg, &tls) {
            Ok(c) => c,
            Err(e) => {
                ctl.update(|s| {
                    s.connected = false;
                    s.failures += 1;
                    s.last_error = Some(e);
                });
                if ctl.sleep(backoff) {
                    break;
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue;
            }
        };
        backoff = cfg.backoff_min;
        ctl.update(|s| {
            s.connected = true;
            s.connections += 1;
        });
        loop {
            if ctl.stopped() {
                conn.conn.send_close_notify();
                let _ = conn.flush();
                break 'outer;
            }
            let batch = match tail.batch(cfg.batch) {
                Ok(b) => b,
                Err(e) => {
                    ctl.update(|s| s.last_error = Some(e.to_string()));
                    Vec::new()
                }
            };
            if batch.is_empty() {
                if peer_closed(&mut conn) {
                    ctl.update(|s| {
                        s.connected = false;
                        s.last_error = Some("collector closed the connection".into());
                    });
                    continue 'outer;
                }
                if ctl.sleep(cfg.poll) {
                    continue;
                }
                continue;
            }
            if peer_closed(&mut conn) {
                // Do not send into a closed connection; resend from the cursor.
                tail = Tail::new(dir, cursor);
                ctl.update(|s| {
                    s.connected = false;
                    s.last_error = Some("collector closed the connection".into());
                });
                continue 'outer;
            }
            let mut wire = Vec::new();
            let last = batch.last().map(|b| b.0).unwrap_or(cursor);
            for (seq, hash, prev, body) in &batch {
                let msg = format_message(&cfg.hostname, &cfg.sd_id, *seq, hash, prev, body);
                wire.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
            }
            match conn.write_all(&wire).and_then(|()| conn.flush()) {
                Ok(()) => {
                    cursor = last;
                    if let Err(e) = write_cursor(dir, "forwarded", cursor) {
                        ctl.update(|s| s.last_error = Some(e.to_string()));
                    }
                    ctl.update(|s| s.forwarded = cursor);
                }
                Err(e) => {
                    tail = Tail::new(dir, cursor);
                    ctl.update(|s| {
                        s.connected = false;
                        s.failures += 1;
                        s.last_error = Some(format!("write to {}: {e}", cfg.collector));
                    });
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

    #[test]
    fn messages_follow_rfc5424() {
        let body = br#"{"time":"2026-11-28T04:00:00.000000Z","time_quality":"unknown","actor":{"kind":"user","id":"a\"b]"},"action":"auth.login","outcome":"denied"}"#;
        let m = format_message("drive-001", "drivesec@32473", 7, &[1; 32], &[0; 32], body);
        assert!(m.starts_with("<108>1 2026-11-28T04:00:00.000000Z drive-001 drivesecd - auth.login [drivesec@32473 seq=\"7\" hash=\"0101"), "{m}");
        assert!(m.contains(r#"actor="user:a\"b\]""#), "{m}");
        assert!(m.ends_with(std::str::from_utf8(body).unwrap_or_default()));
    }
}
