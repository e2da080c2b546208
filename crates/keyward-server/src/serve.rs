//! The accept loop the API server and the gateway share.
//!
//! HTTP/1 and HTTP/2 (with upgrades) on hyper-util, `TCP_NODELAY`, one service per
//! connection built from its peer address, and graceful shutdown.

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Accepts connections on `listener` and serves each with the service `make_service` builds
/// for its peer, until `shutdown` resolves. Then stops accepting (the listener is closed),
/// asks every connection to close once its request in flight is answered (idle keep-alive
/// connections close at once), and waits for them: for at most `grace` if given, otherwise
/// until the last one is done.
///
/// `name` prefixes this loop's log messages (`"server"`, `"gateway"`).
pub(crate) async fn serve<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Option<Duration>,
    mut make_service: M,
) where
    M: FnMut(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let builder = Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // The peer gave up before we got to it: nothing to serve, nothing wrong here.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "{name}: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small request/response pairs: do not wait for Nagle.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::trace!(error = %e, "could not set TCP_NODELAY");
        }
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), make_service(peer))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "{name}: connection ended with an error");
            }
        });
    }
    drop(listener);
    match grace {
        None => graceful.shutdown().await,
        Some(grace) => {
            if tokio::time::timeout(grace, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("{name}: requests still open after the grace period; dropping them");
            }
        }
    }
}

/// Errors `accept` reports for a connection that died in the backlog.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
