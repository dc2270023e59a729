//! The API's side of a connection: every connection has completed mutual
//! TLS (`crate::accept`) before a byte of HTTP is read; the client
//! certificate's fingerprint and address are attached to each request.
//! Bounded: header timeout, and a minimum rate for request bodies (the
//! handshake timeout and the connection pools are the accept loop's).
//! Connections are kept alive between requests until the device adopts a
//! new state (its identity or its trust changed): then each open
//! connection finishes the request in flight and closes, and the one whose
//! request made the change says so with `Connection: close`, so every
//! client handshakes again under the new identity and trust.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::response::IntoResponse;
use drivesec_state::config::ApiSettings;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower::ServiceExt;

use super::{ApiError, ConnInfo};
use crate::accept::{Conn, Service};
use crate::device::{Device, Trust, stale_connection};

/// What the accept loop runs for each API connection: HTTP/1.1 over the
/// TLS stream, into the router.
pub(crate) struct Connections {
    dev: Arc<Device>,
    app: Router,
    trust: watch::Receiver<Trust>,
    body_limits: BodyLimits,
    header_timeout: Duration,
}

impl Connections {
    /// The API's connections into `app`, bounded by `settings`.
    pub(crate) fn new(dev: Arc<Device>, app: Router, settings: &ApiSettings) -> Self {
        Connections {
            trust: dev.trust.subscribe(),
            dev,
            app,
            body_limits: BodyLimits {
                frame_timeout: Duration::from_secs(settings.body_timeout_secs),
                min_rate: settings.min_body_bytes_per_sec,
            },
            header_timeout: Duration::from_secs(settings.header_timeout_secs),
        }
    }
}

impl Service for Connections {
    /// The trust when the connection was accepted (subscribed before the
    /// TLS configuration is read: a change after this point closes the
    /// connection), and its generation.
    type Ticket = (watch::Receiver<Trust>, u64);

    fn refused(&self, addr: SocketAddr) {
        self.dev.connection_refused("api", addr);
    }

    fn admit(&self) -> Option<Self::Ticket> {
        let mut changed = self.trust.clone();
        let trust_generation = changed.borrow_and_update().generation;
        Some((changed, trust_generation))
    }

    fn serve<S>(&self, conn: Conn<S>, ticket: Self::Ticket) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (app, dev) = (self.app.clone(), self.dev.clone());
        let (body_limits, header_timeout) = (self.body_limits, self.header_timeout);
        let (mut changed, trust_generation) = ticket;
        async move {
            let info = ConnInfo {
                fingerprint: conn.client,
                addr: conn.addr,
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
                                ApiError::from(stale_connection()).into_response(),
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
                .serve_connection(TokioIo::new(conn.stream), svc);
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
        }
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
