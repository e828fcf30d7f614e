//! Addresses for the transport: binds the endpoint's UDP socket (in a port range), chooses the
//! host candidates it advertises, maps a received datagram to the candidate it arrived on, and
//! reads remote candidates out of SDP text and trickle strings.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use str0m::Candidate;
use tokio::net::UdpSocket;

use super::{TransportConfig, TransportError};

/// Kernel send and receive buffer asked for on the endpoint's socket. Linux caps it at
/// `net.core.{r,w}mem_max` (often 208 KiB-4 MiB); the default (~208 KiB) overflows when an SCTP
/// burst of a few hundred datagrams arrives faster than the receive task drains it, and every
/// lost datagram costs a retransmission timeout (at least str0m's 1 s minimum RTO) = a stall.
pub(super) const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Binds `ip` on the first free port of `range` (inclusive), or on any port, with
/// [`SOCKET_BUFFER`]-sized kernel buffers (as large as the kernel allows).
pub(super) async fn bind_socket(ip: IpAddr, range: Option<(u16, u16)>) -> io::Result<UdpSocket> {
    let socket = bind_port(ip, range).await?;
    let sock = socket2::SockRef::from(&socket);
    if let Err(e) = sock.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "UDP receive buffer size not set");
    }
    if let Err(e) = sock.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "UDP send buffer size not set");
    }
    tracing::debug!(
        recv = sock.recv_buffer_size().ok(),
        send = sock.send_buffer_size().ok(),
        "UDP socket buffers"
    );
    Ok(socket)
}

async fn bind_port(ip: IpAddr, range: Option<(u16, u16)>) -> io::Result<UdpSocket> {
    let Some((low, high)) = range else {
        return UdpSocket::bind(SocketAddr::new(ip, 0)).await;
    };
    let mut last = io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("empty UDP port range {low}-{high}"),
    );
    for port in low..=high {
        match UdpSocket::bind(SocketAddr::new(ip, port)).await {
            Ok(socket) => return Ok(socket),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// The host candidate addresses to advertise for a socket bound at `local`.
pub(super) fn advertised(config: &TransportConfig, local: SocketAddr) -> Vec<SocketAddr> {
    let port = local.port();
    let ips: Vec<IpAddr> = if !config.public_ips.is_empty() {
        config.public_ips.clone()
    } else if !local.ip().is_unspecified() {
        vec![local.ip()]
    } else if local.is_ipv4() {
        let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        ips.extend(primary_ipv4().map(IpAddr::V4));
        ips
    } else {
        let mut ips = vec![IpAddr::V6(Ipv6Addr::LOCALHOST)];
        ips.extend(primary_ipv4().map(IpAddr::V4));
        ips
    };
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// The source address the kernel picks for the default route, if there is one. Connecting a UDP
/// socket only looks up the route; no packet is sent (192.0.2.1 is TEST-NET-1, never contacted).
fn primary_ipv4() -> Option<Ipv4Addr> {
    let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    probe.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    match probe.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// The local candidate a datagram from `source` arrived on: ICE only takes requests addressed
/// to one of its candidates, and a socket bound to a wildcard (or behind NAT 1:1) does not know
/// the address a datagram was sent to. Loopback sources get the loopback candidate; others the
/// first non-loopback candidate of their family.
pub(super) fn destination_for(candidates: &[SocketAddr], source: SocketAddr) -> Option<SocketAddr> {
    let same_family = |a: &&SocketAddr| a.is_ipv4() == source.is_ipv4();
    if source.ip().is_loopback()
        && let Some(a) = candidates.iter().find(|a| a.ip().is_loopback())
    {
        return Some(*a);
    }
    candidates
        .iter()
        .filter(same_family)
        .find(|a| !a.ip().is_loopback())
        .or_else(|| candidates.iter().find(same_family))
        .or_else(|| candidates.first())
        .copied()
}

/// UDP addresses of the `a=candidate` lines in an SDP text (for routing before the first STUN
/// request from that peer arrives). Lines that do not parse are skipped; str0m reads the SDP
/// itself.
pub(super) fn sdp_candidate_addrs(sdp: &str) -> Vec<SocketAddr> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .filter_map(|l| parse_remote_candidate(l).ok().flatten())
        .map(|c| c.addr())
        .collect()
}

/// Parses a trickled candidate (`candidate:...` or `a=candidate:...`). `Ok(None)` for ones this
/// transport ignores: the empty end-of-candidates marker, TCP candidates and mDNS host names.
pub(super) fn parse_remote_candidate(s: &str) -> Result<Option<Candidate>, TransportError> {
    let s = s.trim();
    let s = s.strip_prefix("a=").unwrap_or(s);
    if s.is_empty() {
        return Ok(None);
    }
    let invalid = || TransportError::InvalidCandidate(truncate(s));
    let fields: Vec<&str> = s.split_ascii_whitespace().collect();
    if !s.starts_with("candidate:") || fields.len() < 8 {
        return Err(invalid());
    }
    // candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>
    if !fields[2].eq_ignore_ascii_case("udp") || fields[4].ends_with(".local") {
        tracing::debug!(candidate = %truncate(s), "remote candidate ignored (not UDP/IP)");
        return Ok(None);
    }
    Candidate::from_sdp_string(s)
        .map(Some)
        .map_err(|e| TransportError::InvalidCandidate(format!("{e}: {}", truncate(s))))
}

/// Bounds untrusted text quoted in errors and logs.
fn truncate(s: &str) -> String {
    s.chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trickle_candidates_parse_with_or_without_prefix() {
        let plain = "candidate:1 1 udp 2113937151 192.168.1.20 50000 typ host";
        let c = parse_remote_candidate(plain).unwrap().unwrap();
        assert_eq!(c.addr(), addr("192.168.1.20:50000"));
        let prefixed = format!("a={plain}");
        assert_eq!(
            parse_remote_candidate(&prefixed).unwrap().unwrap().addr(),
            c.addr()
        );
        // What Chrome appends after the type.
        let chrome = "candidate:842163049 1 udp 1677729535 203.0.113.7 61234 typ srflx \
                      raddr 10.0.0.5 rport 61234 generation 0 ufrag abcd network-cost 999";
        let c = parse_remote_candidate(chrome).unwrap().unwrap();
        assert_eq!(c.addr(), addr("203.0.113.7:61234"));
    }

    #[test]
    fn unusable_candidates_are_ignored_and_garbage_is_rejected() {
        assert!(parse_remote_candidate("").unwrap().is_none());
        assert!(parse_remote_candidate("a=").unwrap().is_none());
        let mdns =
            "candidate:1 1 udp 2113937151 3f1c2d7e-1111-4abc-9def-0123456789ab.local 5000 typ host";
        assert!(parse_remote_candidate(mdns).unwrap().is_none());
        let tcp = "candidate:2 1 tcp 1518280447 192.168.1.20 9 typ host tcptype active";
        assert!(parse_remote_candidate(tcp).unwrap().is_none());
        for bad in [
            "hello",
            "candidate:1 1 udp",
            "candidate:1 1 udp x 1.2.3.4 5 typ host",
        ] {
            assert!(matches!(
                parse_remote_candidate(bad),
                Err(TransportError::InvalidCandidate(_))
            ));
        }
    }

    #[test]
    fn sdp_candidates_are_collected() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2113937151 127.0.0.1 4000 typ host\r\n\
                   a=candidate:2 1 udp 2113937151 x.local 4000 typ host\r\n\
                   a=ice-ufrag:abc\r\n";
        assert_eq!(sdp_candidate_addrs(sdp), vec![addr("127.0.0.1:4000")]);
    }

    #[test]
    fn destination_prefers_loopback_for_loopback_sources() {
        let c = [addr("127.0.0.1:9"), addr("10.1.2.3:9")];
        assert_eq!(
            destination_for(&c, addr("127.0.0.1:5000")),
            Some(addr("127.0.0.1:9"))
        );
        assert_eq!(
            destination_for(&c, addr("10.9.9.9:5000")),
            Some(addr("10.1.2.3:9"))
        );
        assert_eq!(
            destination_for(&[addr("203.0.113.1:9")], addr("127.0.0.1:1")),
            Some(addr("203.0.113.1:9"))
        );
    }

    #[test]
    fn advertised_addresses_follow_the_config() {
        let mut config = TransportConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port_range: None,
            public_ips: vec![],
            connect_timeout: std::time::Duration::from_secs(1),
            max_peers: 1,
        };
        let wild = advertised(&config, addr("0.0.0.0:7000"));
        assert_eq!(wild[0], addr("127.0.0.1:7000"));
        assert!(wild.iter().skip(1).all(|a| !a.ip().is_loopback()));
        assert_eq!(
            advertised(&config, addr("10.0.0.2:7000")),
            vec![addr("10.0.0.2:7000")]
        );
        config.public_ips = vec!["203.0.113.9".parse().unwrap()];
        assert_eq!(
            advertised(&config, addr("0.0.0.0:7000")),
            vec![addr("203.0.113.9:7000")]
        );
    }

    #[tokio::test]
    async fn port_range_takes_the_first_free_port() {
        let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let taken = probe.local_addr().unwrap().port();
        if taken == u16::MAX {
            return;
        }
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let next = bind_socket(ip, Some((taken, taken + 1))).await;
        // The next port may be taken by someone else on a busy machine; then the range is full.
        match next {
            Ok(s) => assert_eq!(s.local_addr().unwrap().port(), taken + 1),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::AddrInUse),
        }
        let full = bind_socket(ip, Some((taken, taken))).await.unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::AddrInUse);
    }
}
