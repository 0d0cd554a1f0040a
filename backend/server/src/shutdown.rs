//! The drain: once shutdown begins, `/readyz` answers 503 and new WebSockets are refused
//! with 503 (so a load balancer sends them to another replica), new requests are refused
//! as `unavailable`, requests in flight finish, and each WebSocket is closed with 1012
//! ("service restart") as soon as nothing of its own is in flight, telling its client
//! to connect again (through the balancer, to a replica that serves).

use std::sync::Arc;
use tokio::sync::watch;

/// Close code 1012: the server is restarting; the client should reconnect.
pub const RESTART_CLOSE_CODE: u16 = 1012;

/// Whether shutdown has begun, readable at once and awaitable.
#[derive(Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown(Arc::new(watch::Sender::new(false)))
    }
}

impl Shutdown {
    /// Begins the drain (idempotent).
    pub fn begin(&self) {
        self.0.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the drain has begun.
    pub async fn begun(&self) {
        let mut draining = self.0.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = draining.wait_for(|draining| *draining).await;
    }
}
