//! The endpoint's receive side: reads every datagram from the shared UDP socket and hands it to
//! the queue of the peer it belongs to, found by the local ICE ufrag of a STUN binding request
//! or by the datagram's source address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{Shared, lock};

/// Datagrams queued per peer before further ones are dropped (as a full socket buffer would).
pub(super) const PEER_QUEUE: usize = 512;

/// STUN: magic cookie (RFC 5389) and attribute/message types used here.
const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_BINDING_REQUEST: u16 = 0x0001;
const STUN_USERNAME: u16 = 0x0006;

/// One received datagram.
#[derive(Debug)]
pub(super) struct Datagram {
    pub(super) at: Instant,
    pub(super) source: SocketAddr,
    pub(super) data: Vec<u8>,
}

/// Which peer gets which datagram.
#[derive(Debug, Default)]
pub(super) struct Table {
    peers: HashMap<u64, Route>,
    by_ufrag: HashMap<String, u64>,
    by_addr: HashMap<SocketAddr, Claim>,
}

#[derive(Debug)]
struct Route {
    tx: mpsc::Sender<Datagram>,
    ufrag: String,
}

/// A peer's claim on a remote address: `pinned` once a STUN request with the peer's ufrag came
/// from it; otherwise only because a remote candidate named it.
#[derive(Debug, Clone, Copy)]
struct Claim {
    peer: u64,
    pinned: bool,
}

// === impl Table ===

impl Table {
    pub(super) fn len(&self) -> usize {
        self.peers.len()
    }

    pub(super) fn insert(&mut self, id: u64, tx: mpsc::Sender<Datagram>, ufrag: String) {
        self.by_ufrag.insert(ufrag.clone(), id);
        self.peers.insert(id, Route { tx, ufrag });
    }

    pub(super) fn remove(&mut self, id: u64) {
        if let Some(route) = self.peers.remove(&id) {
            self.by_ufrag.remove(&route.ufrag);
        }
        self.by_addr.retain(|_, c| c.peer != id);
    }

    /// Routes datagrams from `addr` to `peer`. A pinned claim is only replaced by another
    /// pinned one for the same peer, so a second peer on the same 5-tuple cannot steal DTLS
    /// traffic from a working one.
    pub(super) fn claim(&mut self, addr: SocketAddr, peer: u64, pinned: bool) {
        match self.by_addr.get(&addr) {
            Some(c) if c.peer == peer => {
                if pinned {
                    self.by_addr.insert(addr, Claim { peer, pinned });
                }
            }
            Some(c) if c.pinned && self.peers.contains_key(&c.peer) => {
                tracing::warn!(
                    remote = %addr, peer, owner = c.peer,
                    "remote address already used by another peer of this endpoint"
                );
            }
            Some(c) if !pinned && self.peers.contains_key(&c.peer) => {}
            _ => {
                self.by_addr.insert(addr, Claim { peer, pinned });
            }
        }
    }

    /// The peer datagrams from `addr` go to (unless they are STUN requests for another).
    #[cfg(test)]
    pub(super) fn peer_for(&self, addr: SocketAddr) -> Option<u64> {
        self.by_addr.get(&addr).map(|c| c.peer)
    }

    /// The queue for a datagram from `source`.
    fn route(&mut self, source: SocketAddr, data: &[u8]) -> Option<(u64, mpsc::Sender<Datagram>)> {
        let by_ufrag = stun_request_ufrag(data).and_then(|u| self.by_ufrag.get(u).copied());
        let peer = match by_ufrag {
            Some(peer) => {
                self.claim(source, peer, true);
                peer
            }
            None => self.by_addr.get(&source)?.peer,
        };
        self.peers.get(&peer).map(|r| (peer, r.tx.clone()))
    }
}

/// Reads the socket until the endpoint closes.
pub(super) async fn receive_loop(shared: Arc<Shared>, mut closed: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            _ = closed.wait_for(|c| *c) => break,
            r = shared.socket.recv_from(&mut buf) => r,
        };
        let (n, source) = match received {
            Ok(v) => v,
            Err(e) => {
                // Unconnected UDP sockets report little; do not spin on a persistent error.
                tracing::debug!(error = %e, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let data = buf.get(..n).unwrap_or_default();
        let Some((peer, tx)) = lock(&shared.table).route(source, data) else {
            tracing::trace!(remote = %source, len = n, "datagram for no peer dropped");
            continue;
        };
        let datagram = Datagram {
            at: Instant::now(),
            source,
            data: data.to_vec(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(datagram) {
            tracing::trace!(peer, remote = %source, "peer queue full, datagram dropped");
        }
    }
    tracing::debug!(local_addr = %shared.local_addr, "WebRTC receive loop ended");
}

/// Whether a datagram is STUN (RFC 7983 demultiplexing: first byte 0..=3).
pub(super) fn is_stun(data: &[u8]) -> bool {
    matches!(data.first(), Some(0..=3))
}

/// The local ufrag (before the colon of USERNAME) of a STUN binding request.
fn stun_request_ufrag(data: &[u8]) -> Option<&str> {
    let header = data.get(..20)?;
    let msg_type = u16::from_be_bytes([header[0], header[1]]);
    if msg_type != STUN_BINDING_REQUEST || header.get(4..8)? != STUN_MAGIC {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut attrs = data.get(20..20 + len)?;
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let alen = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let value = attrs.get(4..4 + alen)?;
        if kind == STUN_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        let padded = 4 + alen.div_ceil(4) * 4;
        attrs = attrs.get(padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str, first_attr: Option<&[u8]>) -> Vec<u8> {
        let mut attrs = Vec::new();
        if let Some(v) = first_attr {
            attrs.extend_from_slice(&0x8029u16.to_be_bytes()); // ICE-CONTROLLED
            attrs.extend_from_slice(&(v.len() as u16).to_be_bytes());
            attrs.extend_from_slice(v);
            while attrs.len() % 4 != 0 {
                attrs.push(0);
            }
        }
        attrs.extend_from_slice(&STUN_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&STUN_BINDING_REQUEST.to_be_bytes());
        msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        msg.extend_from_slice(&STUN_MAGIC);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attrs);
        msg
    }

    #[test]
    fn username_of_binding_request_names_the_local_ufrag() {
        let m = binding_request("locl:remote", None);
        assert!(is_stun(&m));
        assert_eq!(stun_request_ufrag(&m), Some("locl"));
        let m = binding_request("abcd:ef", Some(&[1, 2, 3, 4, 5]));
        assert_eq!(stun_request_ufrag(&m), Some("abcd"));
    }

    #[test]
    fn other_datagrams_have_no_ufrag() {
        let mut m = binding_request("a:b", None);
        m[1] = 0x01;
        m[0] = 0x01; // a binding success response
        assert_eq!(stun_request_ufrag(&m), None);
        let truncated = &binding_request("abcdef:gh", None)[..26];
        assert_eq!(stun_request_ufrag(truncated), None);
        assert_eq!(stun_request_ufrag(&[22, 254, 253, 0]), None); // DTLS
        assert!(!is_stun(&[22, 254, 253]));
        assert_eq!(stun_request_ufrag(&[]), None);
    }

    #[test]
    fn pinned_claims_win_and_leave_with_their_peer() {
        let mut t = Table::default();
        let (tx, _rx) = mpsc::channel(1);
        t.insert(1, tx.clone(), "u1".into());
        t.insert(2, tx, "u2".into());
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        t.claim(a, 1, false);
        t.claim(a, 2, false);
        assert_eq!(t.by_addr[&a].peer, 1, "the first weak claim stays");
        t.claim(a, 2, true);
        assert_eq!(t.by_addr[&a].peer, 2, "a STUN request pins the address");
        t.claim(a, 1, true);
        assert_eq!(t.by_addr[&a].peer, 2, "a live pinned claim is not stolen");
        let req = binding_request("u1:x", None);
        assert_eq!(
            t.route(a, &req).unwrap().0,
            1,
            "ufrag routing beats the address"
        );
        t.remove(2);
        assert!(t.by_addr.is_empty());
        assert_eq!(t.len(), 1);
    }
}
