//! The TLS accept loop: every connection must complete mutual TLS before a
//! byte of HTTP is read; the client certificate's fingerprint and address are
//! attached to each request. Bounded: handshake timeout, header timeout,
//! and a cap on concurrent connections (SR 7.1). Connections are kept
//! alive between requests until the device adopts a new state (its identity
//! or its trust changed): then each open connection finishes the request in
//! flight and closes, and the one whose request made the change says so
//! with `Connection: close`, so every client handshakes again under the new
//! identity and trust.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::response::IntoResponse;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::admission::{Gate, Limits};
use crate::api::{ApiError, ConnInfo, Device};
use crate::config::ApiSettings;

/// The admission bounds of the API listener.
pub(crate) fn limits(a: &ApiSettings) -> Limits {
    Limits {
        handshakes: a.max_handshakes,
        handshakes_per_source: a.max_handshakes_per_source,
        handshake_timeout: Duration::from_millis(a.handshake_timeout_ms),
        connections: a.max_connections,
        per_certificate: a.max_connections_per_certificate,
    }
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    dev: Arc<Device>,
    tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    trust: watch::Receiver<crate::runtime::Trust>,
    app: Router,
    settings: ApiSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let gate = Gate::new(limits(&settings));
    let body_limits = BodyLimits {
        frame_timeout: Duration::from_secs(settings.body_timeout_secs),
        min_rate: settings.min_body_bytes_per_sec,
    };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((tcp, addr)) = accepted else { continue };
        // Over a bound: refuse rather than queue (closing the socket).
        let Ok(handshake) = gate.handshake(addr.ip()) else {
            dev.connection_refused("api", addr);
            continue;
        };
        // Subscribed before the configuration is read: a change after this
        // point closes the connection.
        let mut changed = trust.clone();
        let trust_generation = changed.borrow_and_update().generation;
        let cfg = match tls.read() {
            Ok(c) => c.clone(),
            Err(_) => continue,
        };
        let (app, dev) = (app.clone(), dev.clone());
        let timeout = gate.limits().handshake_timeout;
        let header_timeout = Duration::from_secs(settings.header_timeout_secs);
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let Ok(Ok(stream)) = tokio::time::timeout(timeout, acceptor.accept(tcp)).await else {
                return;
            };
            let Some(fingerprint) = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| hex::encode(Sha256::digest(c.as_ref())))
            else {
                return;
            };
            let Ok(_slot) = handshake.establish(&fingerprint) else {
                dev.connection_refused("api", addr);
                return;
            };
            let info = ConnInfo {
                fingerprint,
                addr,
                trust_generation,
            };
            let trust = changed.clone();
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let admitted = trust.borrow().admits(&info);
                    req.extensions_mut().insert(info.clone());
                    let (app, trust, info, dev) =
                        (app.clone(), trust.clone(), info.clone(), dev.clone());
                    let (method, path) = (req.method().clone(), req.uri().path().to_string());
                    async move {
                        if !admitted {
                            // Arrived before the close: not served under the old trust.
                            return Ok(closing(secure(
                                crate::api::stale_connection().into_response(),
                            )));
                        }
                        let req = req.map(|b| axum::body::Body::new(Paced::new(b, body_limits)));
                        let resp = match CatchPanic(Box::pin(app.oneshot(req))).await {
                            Ok(Ok(r)) => r,
                            Ok(Err(never)) => match never {},
                            Err(()) => {
                                // No internal text to the client; recorded.
                                dev.handler_panicked(&info, method.as_str(), &path);
                                closing(ApiError::internal("handler failed").into_response())
                            }
                        };
                        // This request changed the trust (or raced a change).
                        let resp = if trust.borrow().admits(&info) {
                            resp
                        } else {
                            closing(resp)
                        };
                        Ok::<_, std::convert::Infallible>(secure(resp))
                    }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                r = changed.changed() => {
                    if r.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            let _ = conn.await;
        });
    }
}

/// Headers on every answer: nothing is cached (answers carry sessions,
/// credentials and settings), and content types are not sniffed.
fn secure(mut resp: axum::response::Response) -> axum::response::Response {
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A future whose panic becomes `Err(())` instead of unwinding into the
/// connection task.
struct CatchPanic<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// How slowly a request body may arrive.
#[derive(Debug, Clone, Copy)]
struct BodyLimits {
    /// Longest pause between two pieces.
    frame_timeout: Duration,
    /// Slowest average rate once the body took longer than `frame_timeout`.
    min_rate: u64,
}

/// A request body that fails when the client pauses longer than the frame
/// timeout or, past that much time, sends slower than the minimum rate:
/// a trickled body cannot hold a connection (and a handler) for long.
struct Paced {
    inner: hyper::body::Incoming,
    limits: BodyLimits,
    started: Instant,
    received: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Paced {
    fn new(inner: hyper::body::Incoming, limits: BodyLimits) -> Self {
        Paced {
            inner,
            limits,
            started: Instant::now(),
            received: 0,
            deadline: Box::pin(tokio::time::sleep(limits.frame_timeout)),
        }
    }
}

/// Why a body was cut off.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the request body paused for more than {0} s")]
    Stalled(u64),
    #[error("the request body arrived slower than {0} bytes per second")]
    TooSlow(u64),
    #[error(transparent)]
    Io(#[from] hyper::Error),
}

impl hyper::body::Body for Paced {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.received += d.len() as u64;
                }
                let elapsed = this.started.elapsed();
                if elapsed > this.limits.frame_timeout
                    && (this.received as f64) < this.limits.min_rate as f64 * elapsed.as_secs_f64()
                {
                    return Poll::Ready(Some(Err(BodyError::TooSlow(this.limits.min_rate))));
                }
                let next = tokio::time::Instant::now() + this.limits.frame_timeout;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Stalled(
                    this.limits.frame_timeout.as_secs(),
                )))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `resp` with `Connection: close`: the client must not send another
/// request on this connection.
fn closing(mut resp: axum::response::Response) -> axum::response::Response {
    resp.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::CatchPanic;

    /// A handler that panics becomes an error the connection answers with a
    /// bare 500; the task serving the connection does not unwind.
    #[test]
    fn a_panicking_handler_is_caught_at_the_boundary() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let caught = rt.block_on(CatchPanic(Box::pin(async {
            tokio::task::yield_now().await;
            if std::hint::black_box(true) {
                panic!("internal detail: /var/lib/drivesec/secret");
            }
            1
        })));
        std::panic::set_hook(prev);
        assert!(caught.is_err());
        let fine = rt.block_on(CatchPanic(Box::pin(async { 7 })));
        assert_eq!(fine, Ok(7));
    }
}
