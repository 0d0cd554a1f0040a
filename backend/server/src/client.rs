//! Who a request comes from, and how much of the model each client holds.
//!
//! A client is its IP address: the peer of the TCP connection, or, behind a reverse
//! proxy the operator names with `--client-ip-header`, the address the proxy puts in that
//! header. The fair queue gives each client a lane ([`super::queue`]), and
//! [`ClientSlots`] caps the requests one client has queued or running across WebSocket
//! connections and the HTTP API together.

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

/// The connection's peer, when the server runs on a socket (tests may drive the router
/// without one).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<ConnectInfo<SocketAddr>>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().copied()))
    }
}

/// A client as the queue and the caps see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey(pub IpAddr);

impl ClientKey {
    /// The client of a request: the header named by `client_ip_header` when it holds an
    /// address (its first, the original client's), else the connection's peer. Tests that
    /// drive the router without a socket are one client, 0.0.0.0.
    pub fn of(headers: &HeaderMap, peer: Option<&ConnectInfo<SocketAddr>>, client_ip_header: Option<&str>) -> Self {
        let forwarded = client_ip_header
            .and_then(|name| headers.get(name))
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .and_then(|first| first.trim().parse::<IpAddr>().ok());
        let ip = forwarded.or(peer.map(|p| p.0.ip())).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        ClientKey(ip)
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Requests in flight per client, capped.
#[derive(Clone)]
pub struct ClientSlots {
    counts: Arc<Mutex<HashMap<ClientKey, usize>>>,
    max: usize,
}

/// One request's place in its client's count, given back when dropped (the job ends).
#[derive(Debug)]
pub struct ClientSlot {
    counts: Arc<Mutex<HashMap<ClientKey, usize>>>,
    key: ClientKey,
}

impl ClientSlots {
    pub fn new(max: usize) -> Self {
        ClientSlots { counts: Arc::new(Mutex::new(HashMap::new())), max: max.max(1) }
    }

    /// A slot for one more request of `key`, or None when it has `max` in flight.
    pub fn take(&self, key: &ClientKey) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().expect("client slots lock");
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientSlot { counts: self.counts.clone(), key: key.clone() })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests `key` has in flight.
    pub fn in_flight(&self, key: &ClientKey) -> usize {
        self.counts.lock().expect("client slots lock").get(key).copied().unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("client slots lock");
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_each_client_and_come_back_when_dropped() {
        let slots = ClientSlots::new(2);
        let (a, b) = (ClientKey("10.0.0.1".parse().unwrap()), ClientKey("10.0.0.2".parse().unwrap()));
        let first = slots.take(&a).unwrap();
        let _second = slots.take(&a).unwrap();
        assert!(slots.take(&a).is_none(), "a third request of one client is refused");
        assert!(slots.take(&b).is_some(), "another client is not affected");
        drop(first);
        assert_eq!(slots.in_flight(&a), 1);
        assert!(slots.take(&a).is_some());
    }

    #[test]
    fn the_client_is_the_proxy_header_only_when_the_operator_names_it() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.1".parse().unwrap());
        let peer = ConnectInfo("127.0.0.1:5000".parse::<SocketAddr>().unwrap());
        assert_eq!(ClientKey::of(&headers, Some(&peer), None).0.to_string(), "127.0.0.1");
        assert_eq!(ClientKey::of(&headers, Some(&peer), Some("x-forwarded-for")).0.to_string(), "203.0.113.7");
        headers.insert("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(ClientKey::of(&headers, Some(&peer), Some("x-forwarded-for")).0.to_string(), "127.0.0.1");
    }
}
