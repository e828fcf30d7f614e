//! The WebRTC transport over real UDP sockets on 127.0.0.1: an offering and an answering
//! endpoint exchange SDP text in-process and carry messages on the `data` channel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use partgate::ingress::webrtc::channel::ChannelIo;
use partgate::ingress::webrtc::transport::{
    Endpoint, IDLE_TIMEOUT, PeerHandle, TransportConfig, TransportError,
};
use tokio::time::timeout;

fn config() -> TransportConfig {
    TransportConfig {
        bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port_range: None,
        public_ips: vec![],
        connect_timeout: Duration::from_secs(10),
        max_peers: 100,
    }
}

async fn endpoint() -> Endpoint {
    Endpoint::bind(config()).await.unwrap()
}

/// Both ends of one connection.
struct Pair {
    caller: ChannelIo,
    callee: ChannelIo,
    caller_peer: PeerHandle,
    callee_peer: PeerHandle,
}

/// Offer, answer and (as signaling would) trickle each side's candidates to the other.
async fn connect(offerer: &Endpoint, answerer: &Endpoint) -> Pair {
    let offering = offerer.offer().unwrap();
    let caller_peer = offering.peer.clone();
    let accepted = answerer.accept(&offering.offer_sdp).unwrap();
    for c in offering
        .offer_sdp
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
    {
        accepted.peer.add_remote_candidate(c).unwrap();
    }
    let opening = offering.answered(&accepted.answer_sdp).unwrap();
    for c in &accepted.candidates {
        caller_peer.add_remote_candidate(c).unwrap();
    }
    let (caller, callee) = tokio::join!(opening.wait(), accepted.opening.wait());
    Pair {
        caller: caller.unwrap(),
        callee: callee.unwrap(),
        caller_peer,
        callee_peer: accepted.peer,
    }
}

/// Echoes every message back until the peer goes.
fn echo(mut io: ChannelIo) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(m) = io.incoming.recv().await {
            if io.outgoing.send(m).await.is_err() {
                break;
            }
        }
    })
}

async fn recv(io: &mut ChannelIo) -> Option<Bytes> {
    timeout(Duration::from_secs(10), io.incoming.recv())
        .await
        .expect("no message within 10 s")
}

async fn wait_for_no_peers(ep: &Endpoint, within: Duration) {
    let start = Instant::now();
    while ep.peers() != 0 {
        assert!(
            start.elapsed() < within,
            "{} peers left after {within:?}",
            ep.peers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carries_messages_both_ways_in_order() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
    let (offerer, answerer) = (endpoint().await, endpoint().await);
    let started = Instant::now();
    let mut p = connect(&offerer, &answerer).await;
    let connect_time = started.elapsed();
    assert_eq!((offerer.peers(), answerer.peers()), (1, 1));

    p.caller
        .outgoing
        .send(Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(recv(&mut p.callee).await.unwrap(), "hello");
    p.callee
        .outgoing
        .send(Bytes::from_static(b"hi back"))
        .await
        .unwrap();
    assert_eq!(recv(&mut p.caller).await.unwrap(), "hi back");

    // Go's chunk size, both ways.
    let big = pattern(60 * 1024, 7);
    p.caller.outgoing.send(big.clone()).await.unwrap();
    assert_eq!(recv(&mut p.callee).await.unwrap(), big);
    p.callee.outgoing.send(big.clone()).await.unwrap();
    assert_eq!(recv(&mut p.caller).await.unwrap(), big);

    // Many messages through an echo, in order, with a round-trip latency sample first.
    let echo_task = echo(p.callee);
    let rtt_start = Instant::now();
    for i in 0..100u32 {
        p.caller
            .outgoing
            .send(Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .unwrap();
        assert_eq!(recv(&mut p.caller).await.unwrap(), &i.to_be_bytes()[..]);
    }
    let rtt = rtt_start.elapsed() / 100;

    const N: u32 = 5_000;
    let sender = p.caller.outgoing.clone();
    let throughput_start = Instant::now();
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let mut m = vec![0u8; 1024];
            m[..4].copy_from_slice(&i.to_be_bytes());
            sender.send(Bytes::from(m)).await.unwrap();
        }
    });
    for i in 0..N {
        let m = match timeout(Duration::from_secs(10), p.caller.incoming.recv()).await {
            Ok(m) => m.unwrap(),
            Err(_) => panic!("stalled at {i}"),
        };
        assert_eq!(&m[..4], &i.to_be_bytes()[..], "message {i} out of order");
    }
    let elapsed = throughput_start.elapsed();
    writer.await.unwrap();
    println!(
        "loopback (debug build): connect {connect_time:?}, echo round trip {rtt:?}, \
         {N} x 1 KiB echoed in {elapsed:?} = {:.0} msg/s each way",
        f64::from(N) / elapsed.as_secs_f64()
    );

    // A graceful close on one side ends the other within moments, and both tables empty.
    let closed_at = Instant::now();
    p.caller_peer.close();
    assert!(recv(&mut p.caller).await.is_none());
    timeout(Duration::from_secs(3), echo_task)
        .await
        .unwrap()
        .unwrap();
    println!(
        "graceful close noticed by the remote in {:?}",
        closed_at.elapsed()
    );
    wait_for_no_peers(&offerer, Duration::from_secs(3)).await;
    wait_for_no_peers(&answerer, Duration::from_secs(3)).await;
    assert!(p.callee_peer.is_closed());
    assert!(p.caller.outgoing.send(Bytes::new()).await.is_err());
}

/// The regression the str0m switch exists for: the caller sends its first message the moment
/// its own side of `data` opens, before the answerer may have opened its side. Every fresh
/// connection must get that first message through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_message_on_fifty_fresh_connections_is_answered() {
    const CONNECTIONS: usize = 50;
    const AT_ONCE: usize = 10;
    let answerer = endpoint().await;
    let started = Instant::now();
    let mut answered = 0;
    for batch in 0..CONNECTIONS / AT_ONCE {
        let mut tasks = Vec::new();
        for i in 0..AT_ONCE {
            let answerer = answerer.clone();
            tasks.push(tokio::spawn(async move {
                // A fresh caller endpoint (its own socket), like a fresh SDK client.
                let offerer = endpoint().await;
                let offering = offerer.offer().unwrap();
                let accepted = answerer.accept(&offering.offer_sdp).unwrap();
                let callee_opening = accepted.opening;
                let echo_task = tokio::spawn(async move {
                    echo(callee_opening.wait().await.unwrap()).await.unwrap();
                });
                let mut io = offering
                    .answered(&accepted.answer_sdp)
                    .unwrap()
                    .wait()
                    .await
                    .unwrap();
                let first = Bytes::from(format!("first {batch}/{i}"));
                io.outgoing.send(first.clone()).await.unwrap();
                let got = timeout(Duration::from_secs(5), io.incoming.recv()).await;
                drop(io);
                let _ = timeout(Duration::from_secs(3), echo_task).await;
                offerer.close();
                matches!(got, Ok(Some(m)) if m == first)
            }));
        }
        for t in tasks {
            if t.await.unwrap() {
                answered += 1;
            }
        }
    }
    println!(
        "{answered}/{CONNECTIONS} first messages answered in {:?}",
        started.elapsed()
    );
    assert_eq!(answered, CONNECTIONS);
    wait_for_no_peers(&answerer, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_blocks_the_sender_and_then_gets_everything() {
    let (offerer, answerer) = (endpoint().await, endpoint().await);
    let mut p = connect(&offerer, &answerer).await;
    const SIZE: usize = 16 * 1024;
    // Fill until a send has been stuck for a second: the sender is blocked.
    let mut sent = 0u32;
    loop {
        let mut m = pattern(SIZE, sent as u8).to_vec();
        m[..4].copy_from_slice(&sent.to_be_bytes());
        match timeout(
            Duration::from_secs(1),
            p.caller.outgoing.send(Bytes::from(m)),
        )
        .await
        {
            Ok(r) => r.unwrap(),
            Err(_) => break,
        }
        sent += 1;
        assert!(
            sent < 2_000,
            "30 MiB accepted without a reader: no backpressure"
        );
    }
    let held = sent as usize * SIZE;
    println!(
        "sender blocked after {sent} x 16 KiB = {} KiB in flight without a reader",
        held / 1024
    );
    // Queues (2 x 64 messages), the 1 MiB send threshold plus one message, the 1 MiB receive
    // backlog and a datagram batch: bounded by about 5 MiB.
    assert!(held < 6 * 1024 * 1024, "{held} bytes accepted");
    assert!(
        held > 1024 * 1024,
        "blocked before the threshold: {held} bytes"
    );

    // Reading resumes: every message arrives, in order, and the sender moves again.
    let reading = Instant::now();
    for i in 0..sent {
        let m = recv(&mut p.callee).await.unwrap();
        assert_eq!(&m[..4], &i.to_be_bytes()[..]);
        assert_eq!(m.len(), SIZE);
    }
    println!(
        "backlog of {sent} messages drained in {:?}",
        reading.elapsed()
    );
    p.caller
        .outgoing
        .send(Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(recv(&mut p.callee).await.unwrap(), "after");
}

/// A caller that vanishes without a goodbye (its runtime and socket dropped, as when its
/// process is killed) is noticed by the answerer within a few seconds; an idle but live caller
/// is not mistaken for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_caller_is_detected_and_forgotten() {
    let answerer = endpoint().await;
    let (offer_tx, offer_rx) = std::sync::mpsc::channel();
    let (answer_tx, answer_rx) = std::sync::mpsc::channel::<String>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let caller = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let kept = rt.block_on(async move {
            let offerer = endpoint().await;
            let offering = offerer.offer().unwrap();
            offer_tx.send(offering.offer_sdp.clone()).unwrap();
            let answer = tokio::task::spawn_blocking(move || answer_rx.recv().unwrap())
                .await
                .unwrap();
            let mut io = offering.answered(&answer).unwrap().wait().await.unwrap();
            io.outgoing.send(Bytes::from_static(b"ping")).await.unwrap();
            assert_eq!(io.incoming.recv().await.unwrap(), "ping");
            ready_tx.send(()).unwrap();
            (offerer, io)
        });
        kill_rx.recv().unwrap();
        // Kill: the runtime goes first, so nothing runs that could say goodbye.
        drop(rt);
        drop(kept);
    });

    let offer = tokio::task::spawn_blocking(move || offer_rx.recv().unwrap())
        .await
        .unwrap();
    let accepted = answerer.accept(&offer).unwrap();
    answer_tx.send(accepted.answer_sdp.clone()).unwrap();
    let io = accepted.opening.wait().await.unwrap();
    let mut io = {
        let ChannelIo {
            mut incoming,
            outgoing,
        } = io;
        let m = recv_from(&mut incoming).await;
        outgoing.send(m).await.unwrap();
        ChannelIo { incoming, outgoing }
    };
    ready_rx.await.unwrap();

    // Quiet but alive for longer than the idle timeout: still connected.
    tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(1)).await;
    assert_eq!(answerer.peers(), 1, "a live idle peer was dropped");
    assert!(!accepted.peer.is_closed());

    kill_tx.send(()).unwrap();
    let killed = Instant::now();
    let end = timeout(Duration::from_secs(15), io.incoming.recv()).await;
    assert!(matches!(end, Ok(None)), "incoming did not end");
    let detected = killed.elapsed();
    println!("vanished caller detected after {detected:?}");
    assert!(detected < Duration::from_secs(8), "took {detected:?}");
    wait_for_no_peers(&answerer, Duration::from_secs(3)).await;
    assert!(io.outgoing.send(Bytes::new()).await.is_err());
    caller.join().unwrap();
}

async fn recv_from(incoming: &mut tokio::sync::mpsc::Receiver<Bytes>) -> Bytes {
    timeout(Duration::from_secs(10), incoming.recv())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn an_offer_nobody_completes_times_out_and_is_forgotten() {
    let offerer = endpoint().await;
    let answerer = Endpoint::bind(TransportConfig {
        connect_timeout: Duration::from_millis(500),
        ..config()
    })
    .await
    .unwrap();
    // The answer never reaches the caller, so the answerer never hears from it.
    let offering = offerer.offer().unwrap();
    let accepted = answerer.accept(&offering.offer_sdp).unwrap();
    let started = Instant::now();
    let err = accepted.opening.wait().await.unwrap_err();
    assert!(matches!(err, TransportError::Timeout(_)), "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    wait_for_no_peers(&answerer, Duration::from_secs(3)).await;
    assert!(matches!(
        accepted
            .peer
            .add_remote_candidate("candidate:1 1 udp 1 127.0.0.1 9 typ host"),
        Err(TransportError::Closed)
    ));
}

#[tokio::test]
async fn max_peers_is_enforced_and_freed_on_close() {
    let offerer = endpoint().await;
    let answerer = Endpoint::bind(TransportConfig {
        max_peers: 1,
        ..config()
    })
    .await
    .unwrap();
    let first = answerer
        .accept(&offerer.offer().unwrap().offer_sdp)
        .unwrap();
    let second = answerer.accept(&offerer.offer().unwrap().offer_sdp);
    assert!(matches!(second, Err(TransportError::TooManyPeers)));
    first.peer.close();
    assert!(matches!(
        first.opening.wait().await,
        Err(TransportError::Closed)
    ));
    wait_for_no_peers(&answerer, Duration::from_secs(3)).await;
    answerer
        .accept(&offerer.offer().unwrap().offer_sdp)
        .unwrap();
}

#[tokio::test]
async fn bad_input_is_rejected_with_typed_errors() {
    let (offerer, answerer) = (endpoint().await, endpoint().await);
    for bad in ["", "hello", "v=0\r\n"] {
        let r = answerer.accept(bad);
        assert!(
            matches!(r, Err(TransportError::InvalidSdp(_))),
            "{bad:?}: {r:?}"
        );
    }
    // Valid SDP without a data channel section.
    let offer = offerer.offer().unwrap().offer_sdp;
    let media_only = offer.split("m=application").next().unwrap().to_owned();
    assert!(matches!(
        answerer.accept(&media_only),
        Err(TransportError::InvalidSdp(_))
    ));
    let offering = offerer.offer().unwrap();
    let accepted = answerer.accept(&offering.offer_sdp).unwrap();
    assert!(matches!(
        accepted.peer.add_remote_candidate("candidate:garbage"),
        Err(TransportError::InvalidCandidate(_))
    ));
    accepted.peer.add_remote_candidate("").unwrap();
    let peer = offering.peer.clone();
    assert!(matches!(
        offering.answered("not sdp"),
        Err(TransportError::InvalidSdp(_))
    ));
    // A failed answer closes the offering's peer.
    wait_for_no_peers(&offerer, Duration::from_secs(3)).await;
    assert!(peer.is_closed());
    assert_eq!(answerer.peers(), 1);
}

#[tokio::test]
async fn closing_the_endpoint_ends_every_peer() {
    let (offerer, answerer) = (endpoint().await, endpoint().await);
    let mut p = connect(&offerer, &answerer).await;
    let pending = answerer
        .accept(&offerer.offer().unwrap().offer_sdp)
        .unwrap();
    assert_eq!(answerer.peers(), 2);
    answerer.close();
    assert!(recv(&mut p.callee).await.is_none());
    assert!(matches!(
        pending.opening.wait().await,
        Err(TransportError::Closed)
    ));
    // The caller hears the goodbye rather than waiting for a timeout.
    let started = Instant::now();
    assert!(recv(&mut p.caller).await.is_none());
    assert!(started.elapsed() < Duration::from_secs(2));
    wait_for_no_peers(&answerer, Duration::from_secs(3)).await;
    wait_for_no_peers(&offerer, Duration::from_secs(3)).await;
    assert!(matches!(
        answerer.accept("v=0"),
        Err(TransportError::Closed)
    ));
    assert!(p.caller_peer.is_closed() && p.callee_peer.is_closed());
}

#[tokio::test]
async fn wildcard_bind_advertises_loopback_and_port_range_is_used() {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let ep = Endpoint::bind(TransportConfig {
        bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port_range: Some((port, port.saturating_add(20))),
        ..config()
    })
    .await
    .unwrap();
    let bound = ep.local_addr().port();
    assert!((port..=port.saturating_add(20)).contains(&bound));
    let addrs = ep.candidate_addrs();
    assert_eq!(addrs[0], (Ipv4Addr::LOCALHOST, bound).into());
    println!("wildcard candidates: {addrs:?}");
    // And it connects over loopback.
    let offerer = endpoint().await;
    let mut p = connect(&offerer, &ep).await;
    p.caller
        .outgoing
        .send(Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(recv(&mut p.callee).await.unwrap(), "x");
}

/// A protocol side that writes its last messages and drops its channel at once (a finished
/// call) still gets them delivered: the peer closes once they are acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_messages_before_hanging_up_are_delivered() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
    let (offerer, answerer) = (endpoint().await, endpoint().await);
    let mut p = connect(&offerer, &answerer).await;
    const N: u32 = 200;
    for i in 0..N {
        let mut m = pattern(16 * 1024, i as u8).to_vec();
        m[..4].copy_from_slice(&i.to_be_bytes());
        p.caller.outgoing.send(Bytes::from(m)).await.unwrap();
    }
    drop(p.caller);
    for i in 0..N {
        let m = recv(&mut p.callee)
            .await
            .expect("peer ended before the tail arrived");
        assert_eq!(&m[..4], &i.to_be_bytes()[..]);
    }
    assert!(recv(&mut p.callee).await.is_none());
    wait_for_no_peers(&offerer, Duration::from_secs(3)).await;
    wait_for_no_peers(&answerer, Duration::from_secs(3)).await;
}
