//! The one accept loop every listener runs (the HTTPS API, Modbus/TCP
//! Security and, when configured, plain Modbus/TCP): a connection is
//! accepted, admitted through its listener's two pools
//! (`crate::admission`), given its handshake (mutual TLS) or not (plain),
//! and handed with the client's identity to the listener's [`Service`].
//!
//! Over a bound a connection is refused rather than queued: its socket is
//! closed at once, and the service records the refusal. A failed accept
//! (out of file descriptors, say) is logged once and tried again after
//! [`ACCEPT_RETRY`], never at once. The loop ends when `shutdown` turns
//! true.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::Gate;

/// How a listener's connections prove who they are.
pub(crate) enum Kind {
    /// Mutual TLS, with the server configuration in force when the
    /// connection is accepted; the client is its certificate.
    Tls(Arc<RwLock<Arc<rustls::ServerConfig>>>),
    /// No handshake and no identity: the client is its address
    /// (`plain:IP`). Risky; only plain Modbus/TCP, when configured.
    Plain,
}

/// An admitted connection, as its service gets it.
pub(crate) struct Conn<S> {
    /// The stream: TLS established, or the TCP connection.
    pub(crate) stream: S,
    /// The client's address.
    pub(crate) addr: SocketAddr,
    /// Who the client is: SHA-256 of its certificate (DER), hex; or
    /// `plain:IP` without a handshake. The established pool counts it.
    pub(crate) client: String,
    /// The client's certificate chain, leaf first (empty without a
    /// handshake).
    pub(crate) chain: Vec<CertificateDer<'static>>,
}

/// What a listener does with its connections.
pub(crate) trait Service: Send + Sync + 'static {
    /// What is taken for a connection when it is accepted, before any
    /// handshake, and given to [`Service::serve`] (what the device's trust
    /// was then, say).
    type Ticket: Send + 'static;

    /// Whether the listener turns off Nagle's algorithm on its
    /// connections (small requests answered at once).
    const NODELAY: bool = false;

    /// A connection refused by an admission bound, to be recorded.
    fn refused(&self, addr: SocketAddr);

    /// Takes a connection's ticket once it has its handshake slot; `None`
    /// closes it silently (the listener serves nobody now).
    fn admit(&self) -> Option<Self::Ticket>;

    /// Serves one admitted connection to its end; its place in the
    /// established pool is held meanwhile.
    fn serve<S>(&self, conn: Conn<S>, ticket: Self::Ticket) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

/// How long the loop waits after a failed accept before it tries again.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// Serves `listener` until `shutdown` turns true: each connection is
/// admitted through `gate`, handshaken as `kind` says, and served by
/// `service` on a task of its own.
pub(crate) async fn serve<T: Service>(
    listener: TcpListener,
    kind: Kind,
    gate: Arc<Gate>,
    service: Arc<T>,
    mut shutdown: watch::Receiver<bool>,
) {
    let timeout = gate.limits().handshake_timeout;
    // Whether accepting fails now; its error is logged once, when it starts.
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (EMFILE), say: the listener stays
                // ready and the error repeats until something is freed, so
                // the loop waits before it tries again instead of spinning.
                if !failing {
                    failing = true;
                    let local = listener.local_addr().ok();
                    tracing::error!(error = %e, listener = ?local, "accepting a connection failed; retrying every {} ms", ACCEPT_RETRY.as_millis());
                }
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_RETRY) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        if failing {
            failing = false;
            tracing::info!(listener = ?listener.local_addr().ok(), "accepting connections again");
        }
        match &kind {
            Kind::Tls(tls) => {
                // Over a bound: refuse rather than queue (closing the socket).
                let Ok(handshake) = gate.handshake(addr.ip()) else {
                    service.refused(addr);
                    continue;
                };
                // Taken before the configuration is read: a change of the
                // device's trust after this point reaches the connection.
                let Some(ticket) = service.admit() else {
                    continue;
                };
                let Ok(cfg) = tls.read().map(|c| c.clone()) else {
                    continue;
                };
                if T::NODELAY {
                    let _ = tcp.set_nodelay(true);
                }
                let service = service.clone();
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    let Ok(Ok(stream)) = tokio::time::timeout(timeout, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let Some(chain) = stream.get_ref().1.peer_certificates().map(<[_]>::to_vec)
                    else {
                        return;
                    };
                    let Some(client) = chain
                        .first()
                        .map(|c| hex::encode(Sha256::digest(c.as_ref())))
                    else {
                        return;
                    };
                    // Authenticated: from the handshake pool to the
                    // established one, or refused.
                    let Ok(_slot) = handshake.establish(&client) else {
                        service.refused(addr);
                        return;
                    };
                    let conn = Conn {
                        stream,
                        addr,
                        client,
                        chain,
                    };
                    service.serve(conn, ticket).await;
                });
            }
            Kind::Plain => {
                // No handshake: the address is the only identity there is.
                let client = format!("plain:{}", addr.ip());
                let slot = gate.handshake(addr.ip()).and_then(|h| h.establish(&client));
                let Ok(slot) = slot else {
                    service.refused(addr);
                    continue;
                };
                let Some(ticket) = service.admit() else {
                    continue;
                };
                if T::NODELAY {
                    let _ = tcp.set_nodelay(true);
                }
                let service = service.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let conn = Conn {
                        stream: tcp,
                        addr,
                        client,
                        chain: Vec::new(),
                    };
                    service.serve(conn, ticket).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;
    use crate::admission::Limits;

    /// Tells the test what the loop did, and holds each connection until
    /// the test lets it go.
    struct Probe {
        events: mpsc::UnboundedSender<String>,
        release: watch::Receiver<bool>,
        admit: bool,
    }

    impl Service for Probe {
        type Ticket = u32;

        fn refused(&self, addr: SocketAddr) {
            let _ = self.events.send(format!("refused {}", addr.ip()));
        }

        fn admit(&self) -> Option<u32> {
            self.admit.then_some(7)
        }

        fn serve<S>(&self, conn: Conn<S>, ticket: u32) -> impl Future<Output = ()> + Send
        where
            S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        {
            let events = self.events.clone();
            let mut release = self.release.clone();
            async move {
                let _ = events.send(format!(
                    "serve {} {} {ticket} {}",
                    conn.client,
                    conn.addr.ip(),
                    conn.chain.len()
                ));
                let _ = release.wait_for(|r| *r).await;
                drop(conn.stream);
            }
        }
    }

    fn limits() -> Limits {
        Limits {
            handshakes: 4,
            handshakes_per_source: 4,
            handshake_timeout: Duration::from_secs(1),
            connections: 4,
            per_certificate: 1,
        }
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    /// Plain connections are the address: a second one from the same
    /// address while the first is served is over the established bound,
    /// refused and recorded; once the first ends its place is free again.
    #[tokio::test]
    async fn plain_connections_are_admitted_per_address_and_refusals_recorded() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (events, mut rx) = mpsc::unbounded_channel();
        let (let_go, release) = watch::channel(false);
        let (stop, shutdown) = watch::channel(false);
        let probe = Arc::new(Probe {
            events,
            release,
            admit: true,
        });
        let task = tokio::spawn(serve(
            listener,
            Kind::Plain,
            Gate::new(limits()),
            probe,
            shutdown,
        ));
        let first = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(next(&mut rx).await, "serve plain:127.0.0.1 127.0.0.1 7 0");
        let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(next(&mut rx).await, "refused 127.0.0.1");
        let_go.send(true).unwrap();
        drop(first);
        // The place is given back when the service ends.
        let mut served = false;
        for _ in 0..50 {
            let _third = tokio::net::TcpStream::connect(addr).await.unwrap();
            if next(&mut rx).await.starts_with("serve") {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    /// A listener whose accept keeps failing (as when the process is out
    /// of file descriptors) is tried again after a pause, not at once: the
    /// loop, run here on this thread, spends almost no CPU time in half a
    /// second of failures (spinning, it spent all of it), and still ends
    /// on shutdown.
    #[tokio::test]
    async fn a_failing_accept_is_retried_after_a_pause_not_spun_on() {
        use std::io::Write;
        use std::os::fd::OwnedFd;
        // A connected socket posing as a listener: readable (its peer sent
        // a byte nobody reads), and every accept on it fails (EINVAL), an
        // error that repeats as EMFILE does.
        let real = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(real.local_addr().unwrap()).unwrap();
        let (conn, _) = real.accept().unwrap();
        peer.write_all(b"x").unwrap();
        let fake = std::net::TcpListener::from(OwnedFd::from(conn));
        fake.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(fake).unwrap();
        assert!(listener.accept().await.is_err());
        let (events, mut rx) = mpsc::unbounded_channel();
        let (_let_go, release) = watch::channel(false);
        let (stop, shutdown) = watch::channel(false);
        let probe = Arc::new(Probe {
            events,
            release,
            admit: true,
        });
        // This thread's time on a CPU (the first field of its schedstat, in ns).
        let cpu = || {
            let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            Duration::from_nanos(s.split_whitespace().next().unwrap().parse().unwrap())
        };
        let before = cpu();
        let mut task = std::pin::pin!(serve(
            listener,
            Kind::Plain,
            Gate::new(limits()),
            probe,
            shutdown,
        ));
        let ended = tokio::time::timeout(Duration::from_millis(500), &mut task).await;
        let spent = cpu() - before;
        assert!(ended.is_err(), "the loop ended by itself");
        assert!(
            spent < Duration::from_millis(100),
            "the loop spent {spent:?} of CPU time in 500 ms of failing accepts"
        );
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap();
        assert!(rx.try_recv().is_err(), "nothing served or recorded");
        drop(peer);
    }

    /// A TLS listener whose service admits nobody (Modbus before
    /// commissioning) closes each connection before its handshake,
    /// without a record.
    #[tokio::test]
    async fn a_connection_the_service_does_not_admit_is_closed_unrecorded() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (events, mut rx) = mpsc::unbounded_channel();
        let (_let_go, release) = watch::channel(false);
        let (stop, shutdown) = watch::channel(false);
        let probe = Arc::new(Probe {
            events,
            release,
            admit: false,
        });
        // Never read: the connection is closed before any handshake.
        let cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
        let tls = Arc::new(RwLock::new(Arc::new(cfg)));
        let task = tokio::spawn(serve(
            listener,
            Kind::Tls(tls),
            Gate::new(limits()),
            probe,
            shutdown,
        ));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "closed");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(rx.try_recv().is_err(), "nothing served or recorded");
    }
}
