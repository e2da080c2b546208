//! The accept loop the API server and the gateway share.
//!
//! HTTP/1 and HTTP/2 (with upgrades) on hyper-util, `TCP_NODELAY`, one service per
//! connection built from its peer address, and graceful shutdown.

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulConnection;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
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
    let connections = Arc::new(Connections::default());
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
        let conn = Connections::watch(&connections, conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "{name}: connection ended with an error");
            }
        });
    }
    drop(listener);
    match grace {
        None => connections.close().await,
        Some(grace) => {
            if tokio::time::timeout(grace, connections.close())
                .await
                .is_err()
            {
                tracing::warn!("{name}: requests still open after the grace period; dropping them");
            }
        }
    }
}

/// The open connections of one accept loop, and the signal that asks them to close.
///
/// Speed: hyper-util's `GracefulShutdown` hands each connection a `watch` receiver and polls
/// its `changed()` on every poll of the connection, taking a mutex each time: ~450
/// instructions per request. Here a connection reads one flag per poll, and hands its task's
/// waker over only when it has not yet (or the task's waker changed).
#[derive(Default)]
struct Connections {
    closing: AtomicBool,
    /// Each open connection's id, with its task's waker once it has been polled.
    open: Mutex<Open>,
    /// Told when the last connection closes after `closing` is set.
    all_closed: tokio::sync::Notify,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    wakers: HashMap<u64, Option<Waker>>,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, Open> {
        // A panic elsewhere cannot leave the map half-changed; keep serving.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `conn`, counted among the open connections until it is dropped.
    fn watch<C: GracefulConnection>(this: &Arc<Self>, conn: C) -> Watched<C> {
        let mut open = this.lock();
        let id = open.next_id;
        open.next_id += 1;
        open.wakers.insert(id, None);
        drop(open);
        Watched {
            // Boxed once per connection, so that it can be polled through a plain `&mut`.
            conn: Box::pin(conn),
            connections: Arc::clone(this),
            id,
            waker: None,
            told: false,
        }
    }

    /// Asks every connection to close once its request in flight is answered, and waits
    /// until none is open.
    async fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = self
            .lock()
            .wakers
            .values_mut()
            .flat_map(Option::take)
            .collect();
        wakers.into_iter().for_each(Waker::wake);
        loop {
            let closed = self.all_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.lock().wakers.is_empty() {
                return;
            }
            closed.await;
        }
    }
}

/// A connection that closes gracefully once its [`Connections`] close.
struct Watched<C> {
    conn: Pin<Box<C>>,
    connections: Arc<Connections>,
    id: u64,
    /// The waker last handed to `connections`.
    waker: Option<Waker>,
    /// `graceful_shutdown` was called.
    told: bool,
}

impl<C: GracefulConnection> Watched<C> {
    fn tell(&mut self) {
        self.told = true;
        self.conn.as_mut().graceful_shutdown();
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if !this.told {
            if this.connections.closing.load(Ordering::SeqCst) {
                this.tell();
            } else if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                let waker = cx.waker().clone();
                if let Some(slot) = this.connections.lock().wakers.get_mut(&this.id) {
                    *slot = Some(waker.clone());
                }
                this.waker = Some(waker);
                // `close` may have taken the wakers between the check above and this one.
                if this.connections.closing.load(Ordering::SeqCst) {
                    this.tell();
                }
            }
        }
        this.conn.as_mut().poll(cx)
    }
}

impl<C> Drop for Watched<C> {
    fn drop(&mut self) {
        let mut open = self.connections.lock();
        open.wakers.remove(&self.id);
        let last = open.wakers.is_empty();
        drop(open);
        if last && self.connections.closing.load(Ordering::SeqCst) {
            self.connections.all_closed.notify_waiters();
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
