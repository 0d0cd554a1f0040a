//! How many connections the server holds and how often one client may call the API.
//!
//! Each open WebSocket costs memory (buffers, its task) even when idle, so the server
//! holds at most [`Limits::max_connections`] of them, and one client address at most
//! [`Limits::max_connections_per_ip`]; a connection beyond either is told why and closed
//! with 1013 ("try again later"), so the app's reconnect backs off. The HTTP API is
//! rate limited per client address ([`Limits::api_requests_per_minute`]): a burst of that
//! many requests, refilled evenly over the minute, then 429 with `Retry-After`.

use super::client::{ClientKey, ClientSlot, ClientSlots};
use super::limits::Limits;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The caps, shared by every handler.
#[derive(Clone)]
pub struct Caps {
    connections: Arc<Semaphore>,
    max_connections: usize,
    per_ip: ClientSlots,
    api_rate: Option<Arc<DefaultKeyedRateLimiter<ClientKey>>>,
    /// API calls checked, to forget idle clients' buckets now and then.
    checks: Arc<AtomicU64>,
}

/// A WebSocket's place among the open connections, given back when dropped.
pub struct ConnectionPermit {
    _total: OwnedSemaphorePermit,
    _client: ClientSlot,
}

/// How often (in API calls) the rate limiter drops the buckets of clients it has not
/// seen for a minute, so that many passing addresses cannot grow it without bound.
const FORGET_EVERY: u64 = 1024;

impl Caps {
    pub fn new(limits: &Limits) -> Caps {
        let api_rate = NonZeroU32::new(limits.api_requests_per_minute)
            .map(|per_minute| Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute))));
        Caps {
            connections: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            max_connections: limits.max_connections.max(1),
            per_ip: ClientSlots::new(limits.max_connections_per_ip),
            api_rate,
            checks: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A place for one more WebSocket of `client`, or why there is none.
    pub fn connect(&self, client: &ClientKey) -> Result<ConnectionPermit, String> {
        let total = self.connections.clone().try_acquire_owned().map_err(|_| {
            format!("the server holds its most connections ({}); try again later", self.max_connections)
        })?;
        let client = self.per_ip.take(client).ok_or_else(|| {
            format!("{} connections from your address are already open; close one first", self.per_ip.max())
        })?;
        Ok(ConnectionPermit { _total: total, _client: client })
    }

    /// Whether `client` may call the API now; otherwise the seconds until it may.
    pub fn api_call(&self, client: &ClientKey) -> Result<(), u32> {
        let Some(rate) = &self.api_rate else { return Ok(()) };
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
        rate.check_key(client).map_err(|not_until| {
            // The limiter's own clock: a new one would be calibrated on every refusal.
            let wait = not_until.wait_time_from(governor::clock::Clock::now(rate.clock()));
            wait.as_secs_f64().ceil().max(1.0) as u32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn client(last: u8) -> ClientKey {
        ClientKey(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn connections_are_capped_in_total_and_per_address_and_come_back_when_closed() {
        let caps = Caps::new(&Limits { max_connections: 3, max_connections_per_ip: 2, ..Limits::default() });
        let a1 = caps.connect(&client(1)).unwrap();
        let _a2 = caps.connect(&client(1)).unwrap();
        let refused = caps.connect(&client(1)).err().unwrap();
        assert!(refused.contains("2 connections from your address"), "{refused}");
        let _b1 = caps.connect(&client(2)).unwrap();
        let full = caps.connect(&client(3)).err().unwrap();
        assert!(full.contains("most connections (3)"), "{full}");
        drop(a1);
        caps.connect(&client(3)).expect("a closed connection frees its place");
    }

    #[test]
    fn the_api_rate_allows_a_burst_then_says_when_to_come_back() {
        let caps = Caps::new(&Limits { api_requests_per_minute: 3, ..Limits::default() });
        for _ in 0..3 {
            caps.api_call(&client(1)).unwrap();
        }
        let wait = caps.api_call(&client(1)).unwrap_err();
        assert!((1..=20).contains(&wait), "one request comes back every 20 s: {wait}");
        caps.api_call(&client(2)).expect("another address has its own bucket");
        let unlimited = Caps::new(&Limits { api_requests_per_minute: 0, ..Limits::default() });
        assert!((0..100).all(|_| unlimited.api_call(&client(1)).is_ok()));
    }
}
