//! The answering side against offers shaped like the ones real callers send (written here from
//! the shapes Chrome, pion and webrtc-rs produce: `a=setup:actpass`, trickle or inline
//! candidates, `a=end-of-candidates`, extra attributes), without a network round trip.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::*;

fn config() -> TransportConfig {
    TransportConfig {
        bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port_range: None,
        public_ips: vec![],
        connect_timeout: Duration::from_secs(5),
        max_peers: 10,
    }
}

const FINGERPRINT: &str = "sha-256 4A:1F:7C:22:90:0B:AD:13:5E:66:C1:08:F2:3D:94:7A:\
                           B5:0E:29:C4:71:8D:E3:56:0A:9F:B2:47:1C:D8:65:3E";

/// A data-channel-only offer the way a browser writes it (trickle ICE, no candidates yet).
fn browser_offer() -> String {
    [
        "v=0",
        "o=- 5133957004462930710 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:q8Zr",
        "a=ice-pwd:Vb0Jx7YkT2mP9sLq4nWc6eRd",
        "a=ice-options:trickle",
        &format!("a=fingerprint:{FINGERPRINT}"),
        "a=setup:actpass",
        "a=mid:0",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
        "a=x-priority:1",
        "",
    ]
    .join("\r\n")
}

/// The pion / webrtc-rs shape: candidates inline, then `a=end-of-candidates`.
fn pion_offer() -> String {
    [
        "v=0",
        "o=- 8142231876404811225 1732400000 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        &format!("a=fingerprint:{FINGERPRINT}"),
        "a=extmap-allow-mixed",
        "a=group:BUNDLE 0",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=setup:actpass",
        "a=mid:0",
        "a=sendrecv",
        "a=sctp-port:5000",
        "a=ice-ufrag:HhQpWdLkNsJvXcRb",
        "a=ice-pwd:zTgYqMvBnLpKcXsWdRfEaJhUoIyTrEwQ",
        "a=candidate:1966762134 1 udp 2130706431 127.0.0.1 50123 typ host",
        "a=candidate:3286543212 1 udp 1694498815 203.0.113.40 50123 typ srflx raddr 0.0.0.0 rport 50123",
        "a=end-of-candidates",
        "",
    ]
    .join("\r\n")
}

#[tokio::test]
async fn answers_a_browser_offer_with_a_dtls_role_and_our_candidates() {
    let ep = Endpoint::bind(config()).await.unwrap();
    let accepted = ep.accept(&browser_offer()).unwrap();
    let answer = &accepted.answer_sdp;
    assert!(answer.starts_with("v=0"), "{answer}");
    assert!(answer.contains("m=application"), "{answer}");
    // str0m answers `passive` (the caller becomes the DTLS client), which `actpass` allows.
    assert!(answer.contains("a=setup:passive"), "{answer}");
    assert!(answer.contains("a=mid:0"), "{answer}");
    assert!(answer.contains("a=fingerprint:sha-256 "), "{answer}");
    let port = ep.local_addr().port();
    assert_eq!(accepted.candidates.len(), 1);
    let c = &accepted.candidates[0];
    assert!(c.starts_with("candidate:"), "{c}");
    assert!(c.contains(&format!("127.0.0.1 {port} typ host")), "{c}");
    assert!(
        answer.contains(&format!("a={c}")),
        "answer lacks the candidate: {answer}"
    );
    // Trickled candidates in both spellings, and the end marker.
    let peer = &accepted.peer;
    peer.add_remote_candidate("candidate:1 1 udp 2122260223 127.0.0.1 40000 typ host generation 0 ufrag q8Zr network-id 1")
        .unwrap();
    peer.add_remote_candidate(
        "a=candidate:2 1 udp 1686052607 203.0.113.5 40000 typ srflx raddr 10.0.0.2 rport 40000",
    )
    .unwrap();
    peer.add_remote_candidate("").unwrap();
    assert_eq!(ep.peers(), 1);
}

#[tokio::test]
async fn answers_a_pion_style_offer_with_inline_candidates() {
    let ep = Endpoint::bind(config()).await.unwrap();
    let accepted = ep.accept(&pion_offer()).unwrap();
    assert!(accepted.answer_sdp.contains("a=setup:passive"));
    // The inline candidates are routed to this peer before any STUN arrives.
    let route = lock(&ep.owner.shared.table).peer_for("127.0.0.1:50123".parse().unwrap());
    assert_eq!(route, Some(accepted.peer.id()));
}

#[tokio::test]
async fn public_ips_replace_the_bound_address_in_candidates() {
    let ep = Endpoint::bind(TransportConfig {
        public_ips: vec!["203.0.113.77".parse().unwrap()],
        ..config()
    })
    .await
    .unwrap();
    let accepted = ep.accept(&browser_offer()).unwrap();
    let port = ep.local_addr().port();
    assert_eq!(accepted.candidates.len(), 1);
    assert!(accepted.candidates[0].contains(&format!("203.0.113.77 {port} typ host")));
    assert!(!accepted.answer_sdp.contains("127.0.0.1"));
}
