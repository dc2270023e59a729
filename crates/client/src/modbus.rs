//! A Modbus/TCP Security client (blocking): MBAP over mutual TLS, the role
//! travelling in the client certificate. Used by the demo and the tests;
//! `load` is the load generator. Any MB-TCP-Security client works the same
//! way (docs/modbus.md shows pymodbus).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use drivesec_modbus::frame::{self, fc};

use crate::client::{
    ClientIdentity, DeadlineStream, DeviceTrust, Versions, deadline_error, tls_config,
};
use crate::{ClientError, Result};

pub mod load;

/// A request's outcome at the Modbus level.
pub type Answer<T> = std::result::Result<T, u8>;

/// How long the TLS handshake may take in all, and then each request with
/// its whole answer ([`ModbusClient::connect_within`]).
pub const DEADLINE: Duration = Duration::from_secs(10);

enum Transport {
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, DeadlineStream>>),
    Plain(DeadlineStream),
}

impl Transport {
    /// The next step gets `within` from now.
    fn restart(&mut self, within: Duration) {
        match self {
            Transport::Tls(s) => s.sock.restart(within),
            Transport::Plain(s) => s.restart(within),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Tls(s) => s.read(buf),
            Transport::Plain(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Tls(s) => s.write(buf),
            Transport::Plain(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Tls(s) => s.flush(),
            Transport::Plain(s) => s.flush(),
        }
    }
}

/// One session with a device: TLS (Modbus/TCP Security), or plain TCP for
/// comparisons and for devices configured with the risky plain listener.
pub struct ModbusClient {
    stream: Transport,
    transaction: u16,
    addr: SocketAddr,
    /// Each request's deadline (answer included).
    within: Duration,
}

impl std::fmt::Debug for ModbusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for ModbusClient {
    fn drop(&mut self) {
        if let Transport::Tls(s) = &mut self.stream {
            s.sock.restart(Duration::from_secs(1));
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }
}

impl ModbusClient {
    /// Connects and completes the TLS handshake (mutual when `identity` is
    /// given), within [`DEADLINE`] in all; each request then gets
    /// [`DEADLINE`] too.
    pub fn connect(
        addr: SocketAddr,
        identity: Option<&ClientIdentity>,
        trust: &DeviceTrust,
        versions: Versions,
    ) -> Result<Self> {
        Self::connect_within(addr, identity, trust, versions, DEADLINE)
    }

    /// [`ModbusClient::connect`] with another deadline: for the whole
    /// handshake, and then for each request with its answer. A device that
    /// trickles bytes fails with [`ClientError::Timeout`] once it has passed.
    pub fn connect_within(
        addr: SocketAddr,
        identity: Option<&ClientIdentity>,
        trust: &DeviceTrust,
        versions: Versions,
        within: Duration,
    ) -> Result<Self> {
        let (cfg, name) = tls_config(addr, identity, trust, versions)?;
        let mut conn =
            rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| ClientError::Tls {
                device: addr.to_string(),
                reason: e.to_string(),
            })?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
            ClientError::Connect {
                addr,
                reason: e.to_string(),
            }
        })?;
        let _ = tcp.set_nodelay(true);
        let mut tcp = DeadlineStream::new(tcp, within);
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| {
                deadline_error(&e, addr, "the Modbus/TCP Security TLS handshake", within)
            })?;
        }
        let mut c = ModbusClient {
            stream: Transport::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))),
            transaction: 0,
            addr,
            within,
        };
        // TLS 1.3 client certificates are checked after the client's
        // Finished: a refusal arrives as an alert on the first read.
        c.stream.flush().map_err(|e| {
            deadline_error(&e, addr, "the Modbus/TCP Security TLS handshake", within)
        })?;
        Ok(c)
    }

    /// Risky: plain Modbus/TCP, no TLS, no identity.
    pub fn connect_plain_risky(addr: SocketAddr) -> Result<Self> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
            ClientError::Connect {
                addr,
                reason: e.to_string(),
            }
        })?;
        let _ = tcp.set_nodelay(true);
        Ok(ModbusClient {
            stream: Transport::Plain(DeadlineStream::new(tcp, DEADLINE)),
            transaction: 0,
            addr,
            within: DEADLINE,
        })
    }

    /// Writes raw bytes (tests of malformed frames).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let addr = self.addr;
        self.stream.restart(self.within);
        self.stream
            .write_all(bytes)
            .and_then(|_| self.stream.flush())
            .map_err(|e| ClientError::Modbus {
                addr,
                reason: e.to_string(),
            })
    }

    /// Whether the device closed the connection (without answering) before
    /// the deadline.
    pub fn closed_by_peer(&mut self) -> bool {
        self.stream.restart(self.within);
        let mut b = [0u8; 1];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    /// Sends one PDU and returns the response PDU.
    pub fn raw(&mut self, pdu: &[u8]) -> Result<Vec<u8>> {
        self.transaction = self.transaction.wrapping_add(1);
        let t = self.transaction;
        let addr = self.addr;
        let within = self.within;
        // The request and its whole answer within the deadline.
        self.stream.restart(within);
        let io = |e: std::io::Error| match deadline_error(
            &e,
            addr,
            "a Modbus request and its answer",
            within,
        ) {
            t @ ClientError::Timeout { .. } => t,
            _ => ClientError::Modbus {
                addr,
                reason: e.to_string(),
            },
        };
        self.stream
            .write_all(&frame::encode(t, 1, pdu))
            .map_err(io)?;
        self.stream.flush().map_err(io)?;
        let mut head = [0u8; 7];
        self.stream.read_exact(&mut head).map_err(io)?;
        let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
        if u16::from_be_bytes([head[0], head[1]]) != t || !(2..=254).contains(&len) {
            return Err(ClientError::Modbus {
                addr,
                reason: "malformed response header".into(),
            });
        }
        let mut body = vec![0u8; len - 1];
        self.stream.read_exact(&mut body).map_err(io)?;
        Ok(body)
    }

    fn request(&mut self, pdu: Vec<u8>) -> Result<Answer<Vec<u8>>> {
        let r = self.raw(&pdu)?;
        match r.as_slice() {
            [f, code] if *f == pdu[0] | 0x80 => Ok(Err(*code)),
            [f, ..] if *f == pdu[0] => Ok(Ok(r)),
            _ => Err(ClientError::Modbus {
                addr: self.addr,
                reason: format!("unexpected response {r:02x?}"),
            }),
        }
    }

    /// FC 03/04: `count` registers from `addr`. An answer that does not
    /// carry exactly them (its byte count, or the bytes that follow, not
    /// two per register asked for) is an error, never fewer values.
    fn read(&mut self, function: u8, addr: u16, count: u16) -> Result<Answer<Vec<u16>>> {
        let mut pdu = vec![function];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&count.to_be_bytes());
        let r = match self.request(pdu)? {
            Ok(r) => r,
            Err(code) => return Ok(Err(code)),
        };
        let want = 2 * usize::from(count);
        let (declared, data) = match r.as_slice() {
            [_, n, data @ ..] => (usize::from(*n), data),
            _ => (0, &[][..]),
        };
        if declared != want || data.len() != want {
            return Err(ClientError::Modbus {
                addr: self.addr,
                reason: format!(
                    "the answer to reading {count} register(s) at {addr} carries {} byte(s) \
                     (byte count {declared}); {want} were asked for",
                    data.len()
                ),
            });
        }
        Ok(Ok(data
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()))
    }

    /// FC 03.
    pub fn read_holding(&mut self, addr: u16, count: u16) -> Result<Answer<Vec<u16>>> {
        self.read(fc::READ_HOLDING, addr, count)
    }

    /// FC 04.
    pub fn read_input(&mut self, addr: u16, count: u16) -> Result<Answer<Vec<u16>>> {
        self.read(fc::READ_INPUT, addr, count)
    }

    /// FC 06.
    pub fn write_single(&mut self, addr: u16, value: u16) -> Result<Answer<()>> {
        let mut pdu = vec![fc::WRITE_SINGLE];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&value.to_be_bytes());
        Ok(self.request(pdu)?.map(|_| ()))
    }

    /// FC 16: `values` from `addr`. More values than one request holds
    /// ([`frame::MAX_WRITE`], 123 registers) is refused before anything is
    /// sent (its count would not fit the request's byte count).
    pub fn write_multiple(&mut self, addr: u16, values: &[u16]) -> Result<Answer<()>> {
        let count = u16::try_from(values.len())
            .ok()
            .filter(|n| *n <= frame::MAX_WRITE)
            .ok_or_else(|| ClientError::BadRequest {
                what: format!("writing {} register(s) at {addr} (FC 16)", values.len()),
                reason: format!(
                    "at most {} fit one request; nothing was sent",
                    frame::MAX_WRITE
                ),
            })?;
        let mut pdu = vec![fc::WRITE_MULTIPLE];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&count.to_be_bytes());
        // At most 246: a byte.
        pdu.push((count * 2) as u8);
        for v in values {
            pdu.extend_from_slice(&v.to_be_bytes());
        }
        Ok(self.request(pdu)?.map(|_| ()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A plain Modbus/TCP device on loopback answering each request with
    /// `answer(request PDU)` (the answer's PDU); what it received.
    fn device(
        answer: impl Fn(&[u8]) -> Vec<u8> + Send + 'static,
    ) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            loop {
                let mut head = [0u8; 7];
                if tcp.read_exact(&mut head).is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
                let mut pdu = vec![0u8; len - 1];
                tcp.read_exact(&mut pdu).unwrap();
                let t = u16::from_be_bytes([head[0], head[1]]);
                tcp.write_all(&frame::encode(t, 1, &answer(&pdu))).unwrap();
                let _ = tx.send(pdu);
            }
        });
        (addr, rx)
    }

    #[test]
    fn a_read_answer_must_carry_the_registers_asked_for() {
        // Asked for 3, answers 2 (byte count and bytes agreeing), then a
        // byte count of 6 over 4 bytes, then right.
        let n = std::sync::atomic::AtomicUsize::new(0);
        let (addr, _) =
            device(
                move |pdu| match n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    0 => vec![pdu[0], 4, 0, 1, 0, 2],
                    1 => vec![pdu[0], 6, 0, 1, 0, 2],
                    _ => vec![pdu[0], 6, 0, 1, 0, 2, 0, 3],
                },
            );
        let mut c = ModbusClient::connect_plain_risky(addr).unwrap();
        for _ in 0..2 {
            let e = c.read_holding(0, 3).unwrap_err();
            assert!(
                matches!(&e, ClientError::Modbus { reason, .. } if reason.contains("6 were asked for")),
                "{e}"
            );
        }
        assert_eq!(c.read_input(0, 3).unwrap(), Ok(vec![1, 2, 3]));
    }

    #[test]
    fn a_write_that_does_not_fit_one_request_is_never_sent() {
        let (addr, received) = device(|pdu| pdu[..5].to_vec());
        let mut c = ModbusClient::connect_plain_risky(addr).unwrap();
        for len in [usize::from(frame::MAX_WRITE) + 1, 200, 70_000] {
            let e = c.write_multiple(0, &vec![7; len]).unwrap_err();
            assert!(
                matches!(&e, ClientError::BadRequest { .. })
                    && e.to_string().contains(&format!("{len} register(s)"))
                    && e.to_string().contains("at most 123"),
                "{e}"
            );
        }
        assert_eq!(
            c.write_multiple(0, &vec![7; usize::from(frame::MAX_WRITE)])
                .unwrap(),
            Ok(())
        );
        let got = received.recv().unwrap();
        assert_eq!(got[..6], [fc::WRITE_MULTIPLE, 0, 0, 0, 123, 246]);
        assert!(
            received.try_recv().is_err(),
            "only the one that fits was sent"
        );
    }
}
