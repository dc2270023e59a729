//! The Modbus load generator: many closed-loop sessions (one request in
//! flight each, the next sent when the answer arrived), multiplexed on one
//! event loop so the generator costs little next to the server under test
//! on a small machine. Used by the load test and the benchmarks, against
//! drivesecd (TLS or the risky plain listener) and third-party servers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drivesec_modbus::frame::{self, fc};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{ClientIdentity, DeviceTrust, Versions, tls_config};
use crate::{ClientError, Result};

/// Where the sessions connect.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Modbus/TCP Security: mutual TLS, session `i` with `identities[i %
    /// len]`, the server checked by `trust`.
    Tls {
        /// The server's address.
        addr: SocketAddr,
        /// Client certificates and keys (the role travels in each).
        identities: &'a [ClientIdentity],
        /// How the server's certificate is checked.
        trust: &'a DeviceTrust,
    },
    /// Risky: plain Modbus/TCP, for comparisons only.
    PlainRisky(SocketAddr),
}

/// What a load run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadResult {
    /// Concurrent sessions.
    pub connections: usize,
    /// Seconds measured.
    pub seconds: f64,
    /// Requests answered as expected.
    pub requests: u64,
    /// Requests that failed or got an exception, or sessions that broke.
    pub failures: u64,
    /// Requests per second.
    pub per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
}

/// One request of a session's cycle and what a correct answer looks like.
#[derive(Debug, Clone)]
pub struct Step {
    /// The request PDU.
    pub pdu: Vec<u8>,
    /// The length of the expected (non-exception) response PDU.
    pub answer_len: usize,
}

impl Step {
    /// FC 03 (holding) or FC 04 (input) of `count` registers from `addr`.
    pub fn read(function: u8, addr: u16, count: u16) -> Step {
        let mut pdu = vec![function];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&count.to_be_bytes());
        Step {
            pdu,
            answer_len: 2 + 2 * usize::from(count),
        }
    }
}

/// The unit id the sessions send (and expect back).
const UNIT: u8 = 1;

/// How long a session waits for a handshake or an answer before it counts
/// a failure and stops, so a stalled server ends the run instead of hanging it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(target: &Target<'_>, i: usize) -> Result<Box<dyn Stream>> {
    let addr = match target {
        Target::Tls { addr, .. } | Target::PlainRisky(addr) => *addr,
    };
    let err = |e: std::io::Error| ClientError::Modbus {
        addr,
        reason: e.to_string(),
    };
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Connect {
            addr,
            reason: "timed out".into(),
        })?
        .map_err(err)?;
    let _ = tcp.set_nodelay(true);
    match target {
        Target::PlainRisky(_) => Ok(Box::new(tcp)),
        Target::Tls {
            identities, trust, ..
        } => {
            let identity = identities
                .get(i % identities.len().max(1))
                .ok_or_else(|| ClientError::Load("no client identity".into()))?;
            let (cfg, name) = tls_config(addr, Some(identity), trust, Versions::Default)?;
            let tls = tokio::time::timeout(
                ANSWER_TIMEOUT,
                tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
            )
            .await
            .map_err(|_| ClientError::Tls {
                device: addr.to_string(),
                reason: "timed out".into(),
            })?
            .map_err(err)?;
            Ok(Box::new(tls))
        }
    }
}

/// A session's frame reader: one read call per answer in the common case.
struct Session {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
    transaction: u16,
}

impl Session {
    /// Sends `step` and reads its answer; `Ok(false)` for a wrong answer.
    async fn exchange(&mut self, step: &Step) -> std::io::Result<bool> {
        self.transaction = self.transaction.wrapping_add(1);
        self.stream
            .write_all(&frame::encode(self.transaction, UNIT, &step.pdu))
            .await?;
        self.stream.flush().await?;
        loop {
            if self.buf.len() >= 7 {
                let len = usize::from(u16::from_be_bytes([self.buf[4], self.buf[5]]));
                if !(2..=254).contains(&len) || self.buf[2..4] != [0, 0] {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "malformed MBAP header",
                    ));
                }
                if self.buf.len() >= 6 + len {
                    let answer = &self.buf[7..6 + len];
                    let ok = u16::from_be_bytes([self.buf[0], self.buf[1]]) == self.transaction
                        && self.buf[6] == UNIT
                        && answer.len() == step.answer_len
                        && answer[0] == step.pdu[0]
                        && (![fc::READ_HOLDING, fc::READ_INPUT].contains(&answer[0])
                            || usize::from(answer[1]) + 2 == answer.len());
                    self.buf.drain(..6 + len);
                    return Ok(ok);
                }
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// Runs `connections` sessions for `duration`, each repeating `steps` in
/// order with one request in flight, and measures throughput and latency
/// (per request). Sessions are opened before the clock starts; a session
/// whose stream breaks counts one failure and stops.
pub fn run(
    target: &Target<'_>,
    connections: usize,
    duration: Duration,
    steps: &[Step],
) -> Result<LoadResult> {
    if steps.is_empty() {
        return Err(ClientError::Load("no requests to send".into()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Load(e.to_string()))?;
    rt.block_on(async {
        let mut sessions = Vec::with_capacity(connections);
        for i in 0..connections {
            sessions.push(Session {
                stream: connect(target, i).await?,
                buf: Vec::with_capacity(512),
                transaction: 0,
            });
        }
        let start = Instant::now();
        let deadline = start + duration;
        let tasks: Vec<_> = sessions
            .into_iter()
            .map(|mut s| {
                let steps = steps.to_vec();
                tokio::spawn(async move {
                    let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
                    'run: while Instant::now() < deadline {
                        for step in &steps {
                            let t = Instant::now();
                            let answer = tokio::time::timeout(ANSWER_TIMEOUT, s.exchange(step));
                            match answer
                                .await
                                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
                            {
                                Ok(true) => {
                                    ok += 1;
                                    lat.push(
                                        t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
                                    );
                                }
                                Ok(false) => failed += 1,
                                Err(_) => {
                                    failed += 1;
                                    break 'run;
                                }
                            }
                        }
                    }
                    let _ = s.stream.shutdown().await;
                    (ok, failed, lat)
                })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for t in tasks {
            results.push(t.await.unwrap_or((0, 1, Vec::new())));
        }
        let seconds = start.elapsed().as_secs_f64();
        Ok(summarise(connections, seconds, results))
    })
}

fn summarise(connections: usize, seconds: f64, results: Vec<(u64, u64, Vec<u32>)>) -> LoadResult {
    let mut lat: Vec<u32> = results.iter().flat_map(|r| r.2.iter().copied()).collect();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        match lat.len() {
            0 => 0.0,
            n => f64::from(lat[(((n as f64 - 1.0) * p).round() as usize).min(n - 1)]),
        }
    };
    let requests: u64 = results.iter().map(|r| r.0).sum();
    LoadResult {
        connections,
        seconds,
        requests,
        failures: results.iter().map(|r| r.1).sum(),
        per_sec: requests as f64 / seconds,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    }
}
