//! The seam between the WebRTC transport and the gRPC-over-data-channel protocol: one ordered,
//! reliable message channel (a peer's `data` channel), as two tokio queues.
//!
//! The transport owns the other ends. It drops its `incoming` sender when the peer is gone (ICE
//! failed or closed, idle, shut down), so the protocol sees `None` and ends every stream on that
//! peer; it drops the `outgoing` receiver at the same time, so sends fail. It takes from
//! `outgoing` only while the channel's buffered amount is under its threshold, which gives the
//! protocol end-to-end backpressure through the bounded queue.

use bytes::Bytes;
use tokio::sync::mpsc;

/// Messages queued towards the transport before senders wait.
pub const QUEUE_DEPTH: usize = 64;

/// One end of an ordered, reliable message channel. Each message is one whole data-channel
/// message (one serialized `Request` or `Response` of `proto.rpc.webrtc.v1`).
#[derive(Debug)]
pub struct ChannelIo {
    /// Messages from the remote side, in order; `None` once the peer is gone.
    pub incoming: mpsc::Receiver<Bytes>,
    /// Messages to the remote side; `send` waits while the peer is backed up and fails once the
    /// peer is gone.
    pub outgoing: mpsc::Sender<Bytes>,
}

/// The transport's side of a [`ChannelIo`]: where it delivers received messages and takes the
/// ones to send.
#[derive(Debug)]
pub struct TransportSide {
    /// Deliver each received message here; a failed send means the protocol side is gone.
    pub deliver: mpsc::Sender<Bytes>,
    /// Messages to put on the wire.
    pub to_send: mpsc::Receiver<Bytes>,
}

impl ChannelIo {
    /// A channel end for the protocol and the matching end for a transport.
    pub fn new() -> (ChannelIo, TransportSide) {
        let (deliver, incoming) = mpsc::channel(QUEUE_DEPTH);
        let (outgoing, to_send) = mpsc::channel(QUEUE_DEPTH);
        (
            ChannelIo { incoming, outgoing },
            TransportSide { deliver, to_send },
        )
    }

    /// Two connected ends without any network (what one sends, the other receives), for tests
    /// of the protocol layers.
    pub fn pair() -> (ChannelIo, ChannelIo) {
        let (a_out, b_in) = mpsc::channel(QUEUE_DEPTH);
        let (b_out, a_in) = mpsc::channel(QUEUE_DEPTH);
        (
            ChannelIo {
                incoming: a_in,
                outgoing: a_out,
            },
            ChannelIo {
                incoming: b_in,
                outgoing: b_out,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pair_is_crossed_and_ends_when_one_side_drops() {
        let (mut a, mut b) = ChannelIo::pair();
        a.outgoing.send(Bytes::from_static(b"ping")).await.unwrap();
        assert_eq!(
            b.incoming.recv().await.unwrap(),
            Bytes::from_static(b"ping")
        );
        b.outgoing.send(Bytes::from_static(b"pong")).await.unwrap();
        assert_eq!(
            a.incoming.recv().await.unwrap(),
            Bytes::from_static(b"pong")
        );
        drop(a);
        assert!(b.incoming.recv().await.is_none());
        assert!(b.outgoing.send(Bytes::new()).await.is_err());
    }
}
