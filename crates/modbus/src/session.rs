//! One Modbus session: read a frame, check the role's rights, carry the
//! request out on the process image, answer. The transport (TLS or, only
//! when configured, plain TCP) and the identity are the caller's business.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::frame::{self, Exception, FrameError, Request};

/// A refused request, for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    /// Function code asked for.
    pub function: u8,
    /// First register (0 when the request did not decode).
    pub addr: u16,
    /// Registers (0 when the request did not decode).
    pub count: u16,
}

/// What the session does with requests: rights, registers, and what it
/// reports. One value per session, so it can carry the peer's identity.
pub trait ProcessImage {
    /// Whether this session's role may use `function` on `addr..addr+count`.
    fn allowed(&self, function: u8, addr: u16, count: u16) -> bool;
    /// FC 03.
    fn read_holding(&mut self, addr: u16, count: u16) -> Result<Vec<u16>, Exception>;
    /// FC 04.
    fn read_input(&mut self, addr: u16, count: u16) -> Result<Vec<u16>, Exception>;
    /// FC 06 and 16: all registers or none.
    fn write(&mut self, addr: u16, values: &[u16]) -> Result<(), Exception>;
    /// A request was refused with exception 01.
    fn denied(&mut self, d: Denial);
    /// How long the session may stay silent before it is closed (asked
    /// before each frame, so it may change, e.g. once the session controls
    /// the drive).
    fn idle_timeout(&self) -> Duration;
}

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames answered.
    pub requests: u64,
    /// Refused with exception 01.
    pub denied: u64,
    /// Writes carried out.
    pub writes: u64,
}

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    /// The peer closed between frames.
    Closed,
    /// Silent for longer than the idle timeout.
    Idle,
    /// The MBAP layer broke (or the stream failed): closed by us.
    Broken(FrameError),
}

/// Bytes a session reads from its transport at once: a few maximal ADUs
/// (260 bytes each), so one read call usually brings a whole request, or
/// several from a client that pipelines.
pub const READ_BUFFER: usize = 1024;

/// Serves one session until it ends.
pub async fn serve<S, P>(stream: &mut S, image: &mut P) -> (SessionStats, End)
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: ProcessImage + ?Sized,
{
    let mut stats = SessionStats::default();
    // Frames are parsed out of a buffer: one read call per request rather
    // than one per header part (writes pass straight through).
    let mut stream = tokio::io::BufReader::with_capacity(READ_BUFFER, stream);
    loop {
        let adu =
            match tokio::time::timeout(image.idle_timeout(), frame::read_adu(&mut stream)).await {
                Err(_) => return (stats, End::Idle),
                Ok(Ok(None)) => return (stats, End::Closed),
                Ok(Err(e)) => return (stats, End::Broken(e)),
                Ok(Ok(Some(a))) => a,
            };
        let function = adu.pdu[0];
        let pdu = match answer(&adu.pdu, image, &mut stats) {
            Ok(p) => p,
            Err(e) => frame::exception_pdu(function, e),
        };
        stats.requests += 1;
        let out = frame::encode(adu.transaction, adu.unit, &pdu);
        // A peer that stops reading (its window full) is as silent as one
        // that stops sending: the same timeout ends it.
        let written = tokio::time::timeout(image.idle_timeout(), async {
            stream.write_all(&out).await?;
            stream.flush().await
        })
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        if let Err(e) = written {
            return (stats, End::Broken(FrameError::Io(e)));
        }
    }
}

fn answer<P: ProcessImage + ?Sized>(
    pdu: &[u8],
    image: &mut P,
    stats: &mut SessionStats,
) -> Result<Vec<u8>, Exception> {
    let deny = |image: &mut P, stats: &mut SessionStats, d: Denial| {
        stats.denied += 1;
        image.denied(d);
        Exception::IllegalFunction
    };
    let req = match frame::decode(pdu) {
        Ok(r) => r,
        // An unknown function is refused, and recorded, like a forbidden one.
        Err(Exception::IllegalFunction) => {
            return Err(deny(
                image,
                stats,
                Denial {
                    function: pdu[0],
                    addr: 0,
                    count: 0,
                },
            ));
        }
        Err(e) => return Err(e),
    };
    let (addr, count) = req.range();
    if !image.allowed(req.function(), addr, count) {
        return Err(deny(
            image,
            stats,
            Denial {
                function: req.function(),
                addr,
                count,
            },
        ));
    }
    let read = match &req {
        Request::ReadHolding { addr, count } => image.read_holding(*addr, *count)?,
        Request::ReadInput { addr, count } => image.read_input(*addr, *count)?,
        Request::WriteSingle { addr, value } => {
            image.write(*addr, &[*value])?;
            stats.writes += 1;
            vec![]
        }
        Request::WriteMultiple { addr, values } => {
            image.write(*addr, values)?;
            stats.writes += 1;
            vec![]
        }
    };
    Ok(frame::response_pdu(&req, &read))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::frame::encode;
    use tokio::io::AsyncReadExt;

    /// Ten holding registers, all readable; writes allowed to 0..=4 only.
    struct Image {
        regs: [u16; 10],
        denials: Vec<Denial>,
        idle: Duration,
    }

    impl Image {
        fn zeroed() -> Image {
            Image {
                regs: [0; 10],
                denials: vec![],
                idle: Duration::from_secs(5),
            }
        }
    }

    impl ProcessImage for Image {
        fn allowed(&self, function: u8, addr: u16, count: u16) -> bool {
            match function {
                3 => true,
                6 | 16 => u32::from(addr) + u32::from(count) <= 5,
                _ => false,
            }
        }
        fn read_holding(&mut self, addr: u16, count: u16) -> Result<Vec<u16>, Exception> {
            let (a, n) = (usize::from(addr), usize::from(count));
            self.regs
                .get(a..a + n)
                .map(|s| s.to_vec())
                .ok_or(Exception::IllegalDataAddress)
        }
        fn read_input(&mut self, _: u16, _: u16) -> Result<Vec<u16>, Exception> {
            Err(Exception::IllegalDataAddress)
        }
        fn write(&mut self, addr: u16, values: &[u16]) -> Result<(), Exception> {
            if values.contains(&0xdead) {
                return Err(Exception::IllegalDataValue);
            }
            let a = usize::from(addr);
            self.regs[a..a + values.len()].copy_from_slice(values);
            Ok(())
        }
        fn denied(&mut self, d: Denial) {
            self.denials.push(d);
        }
        fn idle_timeout(&self) -> Duration {
            self.idle
        }
    }

    async fn exchange(requests: &[Vec<u8>]) -> (Vec<Vec<u8>>, SessionStats, Vec<Denial>) {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut img = Image::zeroed();
        let srv = async {
            let (stats, end) = serve(&mut server, &mut img).await;
            assert!(matches!(end, End::Closed), "{end:?}");
            stats
        };
        let cli = async {
            let mut answers = vec![];
            for (i, pdu) in requests.iter().enumerate() {
                client.write_all(&encode(i as u16, 1, pdu)).await.unwrap();
                let mut head = [0u8; 7];
                client.read_exact(&mut head).await.unwrap();
                assert_eq!(u16::from_be_bytes([head[0], head[1]]), i as u16);
                let mut body = vec![0u8; usize::from(u16::from_be_bytes([head[4], head[5]])) - 1];
                client.read_exact(&mut body).await.unwrap();
                answers.push(body);
            }
            drop(client);
            answers
        };
        let (answers, stats) = tokio::join!(cli, srv);
        (answers, stats, img.denials)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_reads_writes_and_refusals() {
        let (a, stats, denials) = exchange(&[
            vec![16, 0, 1, 0, 2, 4, 0, 7, 0, 8],       // write 1..=2
            vec![3, 0, 0, 0, 3],                       // read 0..=2
            vec![6, 0, 5, 0, 1],                       // write 5: not allowed
            vec![16, 0, 3, 0, 2, 4, 0, 1, 0xde, 0xad], // refused value: nothing changes
            vec![3, 0, 3, 0, 1],
            vec![43, 14, 1, 0],  // unknown function
            vec![3, 0, 9, 0, 2], // past the image
        ])
        .await;
        assert_eq!(a[0], vec![16, 0, 1, 0, 2]);
        assert_eq!(a[1], vec![3, 6, 0, 0, 0, 7, 0, 8]);
        assert_eq!(a[2], vec![0x86, 1]);
        assert_eq!(a[3], vec![0x90, 3]);
        assert_eq!(a[4], vec![3, 2, 0, 0], "all or nothing");
        assert_eq!(a[5], vec![43 | 0x80, 1]);
        assert_eq!(a[6], vec![0x83, 2]);
        assert_eq!(
            stats,
            SessionStats {
                requests: 7,
                denied: 2,
                writes: 1
            }
        );
        assert_eq!(
            denials,
            vec![
                Denial {
                    function: 6,
                    addr: 5,
                    count: 1
                },
                Denial {
                    function: 43,
                    addr: 0,
                    count: 0
                }
            ]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pipelined_requests_are_answered_in_order() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut img = Image::zeroed();
        // Three requests in one write, so they arrive in one read.
        let mut burst = encode(41, 1, &[6, 0, 2, 0, 9]);
        burst.extend(encode(42, 1, &[3, 0, 2, 0, 1]));
        burst.extend(encode(43, 1, &[3, 0, 9, 0, 2]));
        client.write_all(&burst).await.unwrap();
        client.shutdown().await.unwrap();
        let (stats, end) = serve(&mut server, &mut img).await;
        assert!(matches!(end, End::Closed), "{end:?}");
        assert_eq!(stats.requests, 3);
        drop(server);
        let mut rest = vec![];
        client.read_to_end(&mut rest).await.unwrap();
        let mut want = encode(41, 1, &[6, 0, 2, 0, 9]);
        want.extend(encode(42, 1, &[3, 2, 0, 9]));
        want.extend(encode(43, 1, &[0x83, 2]));
        assert_eq!(rest, want);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_peer_that_stops_reading_is_cut_off_like_a_silent_one() {
        // 64 bytes of room towards the client, which sends and never reads.
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut img = Image {
            idle: Duration::from_millis(100),
            ..Image::zeroed()
        };
        let mut burst = vec![];
        for t in 0..40u16 {
            burst.extend(encode(t, 1, &[3, 0, 0, 0, 10]));
        }
        let send = async {
            // Blocks too once the server stops reading; that is fine.
            let _ =
                tokio::time::timeout(Duration::from_millis(300), client.write_all(&burst)).await;
        };
        let serving = tokio::time::timeout(Duration::from_secs(5), serve(&mut server, &mut img));
        let (served, ()) = tokio::join!(serving, send);
        let (stats, end) = served.expect("the session hung on a peer that does not read");
        assert!(
            matches!(&end, End::Broken(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut),
            "{end:?}"
        );
        assert!(stats.requests < 40, "{stats:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_broken_header_ends_the_session() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut img = Image::zeroed();
        let mut bad = encode(1, 1, &[3, 0, 0, 0, 1]);
        bad[2] = 9;
        client.write_all(&bad).await.unwrap();
        let (stats, end) = serve(&mut server, &mut img).await;
        assert!(matches!(end, End::Broken(FrameError::Protocol(_))));
        assert_eq!(stats.requests, 0);
        drop(server);
        let mut rest = vec![];
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing is answered to a broken frame");
    }
}
