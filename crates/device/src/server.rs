//! The TLS accept loop: every connection must complete mutual TLS before a
//! byte of HTTP is read; the client certificate's fingerprint and address are
//! attached to each request. Bounded: handshake timeout, header timeout,
//! and a cap on concurrent connections (SR 7.1).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
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
            let info = ConnInfo { fingerprint, addr };
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    app.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
