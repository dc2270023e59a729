//! The TLS accept loop: every connection must complete mutual TLS before a
//! byte of HTTP is read; the client certificate's fingerprint and address are
//! attached to each request. Bounded: handshake timeout, header timeout,
//! and a cap on concurrent connections (SR 7.1). Connections are kept
//! alive between requests until the device adopts a new state (its identity
//! or its trust changed): then each open connection finishes the request in
//! flight and closes, and the one whose request made the change says so
//! with `Connection: close`, so every client handshakes again under the new
//! identity and trust.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::api::ConnInfo;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    trust: watch::Receiver<crate::runtime::Trust>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((tcp, addr)) = accepted else { continue };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(tcp); // over the cap: refuse rather than queue
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
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
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
                    let (app, trust, info) = (app.clone(), trust.clone(), info.clone());
                    async move {
                        if !admitted {
                            // Arrived before the close: not served under the old trust.
                            return Ok(closing(crate::api::stale_connection().into_response()));
                        }
                        let resp = app.oneshot(req.map(axum::body::Body::new)).await?;
                        // This request changed the trust (or raced a change).
                        let resp = if trust.borrow().admits(&info) {
                            resp
                        } else {
                            closing(resp)
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
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

/// `resp` with `Connection: close`: the client must not send another
/// request on this connection.
fn closing(mut resp: axum::response::Response) -> axum::response::Response {
    resp.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    resp
}
