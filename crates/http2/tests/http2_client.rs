//! The native HTTP/2 client engine against real servers on 127.0.0.1: `h2::server` scripted per
//! test (windows, concurrency limits, GOAWAY, resets), and a raw frame-level server built on the
//! engine's own codec for what `h2` will not send (unanswered pings, bad headers, GOAWAY below
//! open streams).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Body as _;
use http_body_util::BodyExt;
use partgate_http2::client::{self, Config, End, Error, RecvBody, SendRequest};
use partgate_http2::frame::{self, Frame, FrameReader, Reason};
use partgate_http2::hpack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Respond = h2::server::SendResponse<Bytes>;
type Handler = Arc<
    dyn Fn(http::Request<h2::RecvStream>, Respond) -> futures_util::future::BoxFuture<'static, ()>
        + Send
        + Sync,
>;

/// An `h2` server on 127.0.0.1:0 serving every connection with `handler`, one task per stream.
async fn h2_server(builder: h2::server::Builder, handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let builder = builder.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = builder.handshake::<_, Bytes>(tcp).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(handler(req, respond));
                }
            });
        }
    });
    addr
}

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(http::Request<h2::RecvStream>, Respond) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    Arc::new(move |req, respond| Box::pin(f(req, respond)))
}

async fn connect(addr: SocketAddr, config: Config) -> SendRequest {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (send, conn) = client::handshake(tcp, config);
    tokio::spawn(conn);
    send
}

fn head(addr: SocketAddr, path: &str) -> http::request::Parts {
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", "Bearer secret")
        .body(())
        .unwrap();
    req.into_parts().0
}

/// Reads a whole h2 request body, releasing capacity as it goes.
async fn read_all(body: &mut h2::RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len()).unwrap();
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Sends `data` on an h2 stream, waiting for capacity.
async fn send_all(tx: &mut h2::SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        tx.reserve_capacity(data.len());
        let cap = poll_fn(|cx| tx.poll_capacity(cx)).await.unwrap()?;
        let chunk = data.split_to(cap.min(data.len()));
        tx.send_data(chunk, false)?;
    }
    Ok(())
}

fn trailers(status: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", status.parse().unwrap());
    t
}

async fn collect(body: RecvBody) -> (Vec<u8>, Option<HeaderMap>) {
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes().to_vec(), trailers)
}

/// An echo server: the request body back, then trailers with custom metadata.
fn echo() -> Handler {
    handler(|req, mut respond: Respond| async move {
        let mut body = req.into_body();
        let Ok(data) = read_all(&mut body).await else {
            return;
        };
        let resp = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("x-custom", "yes")
            .body(())
            .unwrap();
        let mut tx = respond.send_response(resp, false).unwrap();
        let _ = send_all(&mut tx, Bytes::from(data)).await;
        let mut t = trailers("0");
        t.insert("grpc-message", "all%20good".parse().unwrap());
        t.insert("grpc-status-details-bin", "AAEC".parse().unwrap());
        t.insert("x-meta-bin", "AQID".parse().unwrap());
        let _ = tx.send_trailers(t);
    })
}

#[tokio::test]
async fn unary_call_with_headers_data_and_trailers() {
    let addr = h2_server(h2::server::Builder::new(), echo()).await;
    let send = connect(addr, Config::default()).await;
    let head = head(addr, "/svc/Unary");
    let (resp, tx) = send
        .send_request(&head, [Bytes::from_static(b"hello")], End::Done)
        .await
        .unwrap();
    assert!(tx.is_none());
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-custom"], "yes");
    let (data, trailers) = collect(resp.into_body()).await;
    assert_eq!(data, b"hello");
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "all%20good");
    assert_eq!(trailers["grpc-status-details-bin"], "AAEC");
    assert_eq!(trailers["x-meta-bin"], "AQID");
    // Many calls in a row on the same connection (HPACK tables stay in step).
    for i in 0..50 {
        let msg = Bytes::from(format!("call {i}"));
        let (resp, _) = send
            .send_request(&head, [msg.clone()], End::Done)
            .await
            .unwrap();
        let (data, trailers) = collect(resp.await.unwrap().into_body()).await;
        assert_eq!(data, msg);
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }
}

#[tokio::test]
async fn trailers_only_response_ends_the_body_at_once() {
    let server = handler(|_req, mut respond: Respond| async move {
        let resp = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "5")
            .header("grpc-message", "not found")
            .body(())
            .unwrap();
        let _ = respond.send_response(resp, true);
    });
    let addr = h2_server(h2::server::Builder::new(), server).await;
    let send = connect(addr, Config::default()).await;
    let (resp, _) = send
        .send_request(
            &head(addr, "/svc/Missing"),
            [Bytes::from_static(b"x")],
            End::Done,
        )
        .await
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "5");
    assert!(resp.body().is_end_stream());
    let (data, trailers) = collect(resp.into_body()).await;
    assert!(data.is_empty());
    assert!(trailers.is_none());
}

/// A bidi stream to a server that echoes each chunk as it arrives (trailers grpc-status 0 at
/// the end), opened with the message `m0`.
async fn open_chat() -> (client::SendStream, RecvBody) {
    let server = handler(|req, mut respond: Respond| async move {
        let mut body = req.into_body();
        let resp = http::Response::builder().body(()).unwrap();
        let mut tx = respond.send_response(resp, false).unwrap();
        while let Some(Ok(chunk)) = body.data().await {
            body.flow_control().release_capacity(chunk.len()).unwrap();
            if send_all(&mut tx, chunk).await.is_err() {
                return;
            }
        }
        let _ = tx.send_trailers(trailers("0"));
    });
    let addr = h2_server(h2::server::Builder::new(), server).await;
    let send = connect(addr, Config::default()).await;
    let (resp, tx) = send
        .send_request(
            &head(addr, "/svc/Chat"),
            [Bytes::from_static(b"m0")],
            End::Open,
        )
        .await
        .unwrap();
    let tx = tx.expect("a send stream");
    let body = resp.await.unwrap().into_body();
    (tx, body)
}

#[tokio::test]
async fn bidi_stream_alternates_messages() {
    let (mut tx, mut body) = open_chat().await;
    for i in 0..20 {
        if i > 0 {
            poll_fn(|cx| tx.poll_ready(cx)).await.unwrap();
            tx.send_data(Bytes::from(format!("m{i}")), false).unwrap();
        }
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("m{i}").as_bytes());
    }
    tx.send_data(Bytes::new(), true).unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_trailers().unwrap()["grpc-status"], "0");
    assert!(body.frame().await.is_none());
}

/// Counts its wakes.
#[derive(Default)]
struct CountWakes(AtomicUsize);

impl std::task::Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Sending on a stream does not wake the waker the sender itself left (with `poll_ready` or
/// `poll_reset`): that only polled the gateway's request pump again for nothing, once per
/// message of a bidi stream. The stream still works both ways afterwards.
#[tokio::test]
async fn sending_does_not_wake_the_senders_own_waker() {
    let (mut tx, mut body) = open_chat().await;
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "m0".as_bytes());

    let wakes = Arc::new(CountWakes::default());
    let waker = std::task::Waker::from(wakes.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(tx.poll_reset(&mut cx).is_pending());
    tx.send_data(Bytes::from_static(b"m1"), false).unwrap();
    assert!(tx.poll_ready(&mut cx).is_ready(), "the chunk left at once");
    tx.send_data(Bytes::from_static(b"m2"), false).unwrap();
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

    let mut echoed = Vec::new();
    while echoed.len() < 4 {
        let frame = body.frame().await.unwrap().unwrap();
        echoed.extend_from_slice(&frame.into_data().unwrap());
    }
    assert_eq!(echoed, b"m1m2");
    tx.send_data(Bytes::new(), true).unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_trailers().unwrap()["grpc-status"], "0");
}

#[tokio::test]
async fn thirty_mib_each_way_with_small_server_windows() {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(70_000)
        .initial_connection_window_size(100_000)
        .max_frame_size(16_384);
    let addr = h2_server(builder, echo()).await;
    let send = connect(addr, Config::default()).await;
    let size = 30 * 1024 * 1024;
    let data: Bytes = (0..size)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    // Half of it with the request, the rest streamed in pieces.
    let (first, rest) = (data.slice(..size / 2), data.slice(size / 2..));
    let (resp, tx) = send
        .send_request(&head(addr, "/svc/Big"), [first], End::Open)
        .await
        .unwrap();
    let mut tx = tx.unwrap();
    let pump = tokio::spawn(async move {
        let mut rest = rest;
        while !rest.is_empty() {
            poll_fn(|cx| tx.poll_ready(cx)).await.unwrap();
            let chunk = rest.split_to(rest.len().min(100_000));
            tx.send_data(chunk, rest.is_empty()).unwrap();
        }
    });
    let (echoed, trailers) = collect(resp.await.unwrap().into_body()).await;
    pump.await.unwrap();
    assert_eq!(echoed.len(), size);
    assert!(echoed == data, "echo differs");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

#[tokio::test]
async fn cancellation_reaches_the_server() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let server = handler(move |req, mut respond: Respond| {
        let seen_tx = seen_tx.clone();
        async move {
            let path = req.uri().path().to_owned();
            if path == "/svc/Head" {
                let resp = http::Response::builder().body(()).unwrap();
                let mut tx = respond.send_response(resp, false).unwrap();
                let reason = poll_fn(|cx| tx.poll_reset(cx)).await;
                let _ = seen_tx.send((path, reason.ok()));
            } else {
                let reason = poll_fn(|cx| respond.poll_reset(cx)).await;
                let _ = seen_tx.send((path, reason.ok()));
            }
        }
    });
    let addr = h2_server(h2::server::Builder::new(), server).await;
    let send = connect(addr, Config::default()).await;
    // Dropping the response future.
    let (resp, _) = send
        .send_request(
            &head(addr, "/svc/Slow"),
            [Bytes::from_static(b"x")],
            End::Done,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(resp);
    let (path, reason) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (path.as_str(), reason),
        ("/svc/Slow", Some(h2::Reason::CANCEL))
    );
    // Dropping the body before its end.
    let (resp, _) = send
        .send_request(
            &head(addr, "/svc/Head"),
            [Bytes::from_static(b"x")],
            End::Done,
        )
        .await
        .unwrap();
    let body = resp.await.unwrap().into_body();
    drop(body);
    let (path, reason) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (path.as_str(), reason),
        ("/svc/Head", Some(h2::Reason::CANCEL))
    );
}

#[tokio::test]
async fn request_body_failure_resets_the_stream() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let server = handler(move |req, _respond: Respond| {
        let seen_tx = seen_tx.clone();
        async move {
            let mut body = req.into_body();
            let r = read_all(&mut body).await;
            let _ = seen_tx.send(r.err().and_then(|e| e.reason()));
        }
    });
    let addr = h2_server(h2::server::Builder::new(), server).await;
    let send = connect(addr, Config::default()).await;
    let (_resp, tx) = send
        .send_request(
            &head(addr, "/svc/Up"),
            [Bytes::from_static(b"x")],
            End::Open,
        )
        .await
        .unwrap();
    let mut tx = tx.unwrap();
    tx.reset(Reason::CANCEL);
    let reason = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, Some(h2::Reason::CANCEL));
}

#[tokio::test]
async fn max_concurrent_streams_queue_instead_of_failing() {
    let open = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let (o, m) = (open.clone(), max_seen.clone());
    let server = handler(move |req, mut respond: Respond| {
        let (open, max_seen) = (o.clone(), m.clone());
        async move {
            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
            max_seen.fetch_max(now, Ordering::SeqCst);
            let mut body = req.into_body();
            let data = read_all(&mut body).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            open.fetch_sub(1, Ordering::SeqCst);
            let resp = http::Response::builder().body(()).unwrap();
            let mut tx = respond.send_response(resp, false).unwrap();
            let _ = send_all(&mut tx, Bytes::from(data)).await;
            let _ = tx.send_trailers(trailers("0"));
        }
    });
    let mut builder = h2::server::Builder::new();
    builder.max_concurrent_streams(2);
    let addr = h2_server(builder, server).await;
    let send = Arc::new(connect(addr, Config::default()).await);
    let head = Arc::new(head(addr, "/svc/Q"));
    let calls = (0..40).map(|i| {
        let (send, head) = (send.clone(), head.clone());
        tokio::spawn(async move {
            let msg = Bytes::from(format!("call {i}"));
            let (resp, _) = send
                .send_request(&head, [msg.clone()], End::Done)
                .await
                .unwrap();
            let (data, _) = collect(resp.await.unwrap().into_body()).await;
            assert_eq!(data, msg);
        })
    });
    for call in futures_util::future::join_all(calls).await {
        call.unwrap();
    }
    assert!(max_seen.load(Ordering::SeqCst) <= 2);
}

#[tokio::test]
async fn receive_window_is_released_only_as_the_body_is_read() {
    let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel();
    let server = handler(move |_req, mut respond: Respond| {
        let sent_tx = sent_tx.clone();
        async move {
            let resp = http::Response::builder().body(()).unwrap();
            let mut tx = respond.send_response(resp, false).unwrap();
            let mut total = 0usize;
            let want = 6 * 1024 * 1024;
            while total < want {
                tx.reserve_capacity(want - total);
                let Some(Ok(cap)) = poll_fn(|cx| tx.poll_capacity(cx)).await else {
                    return;
                };
                if cap == 0 {
                    continue;
                }
                tx.send_data(Bytes::from(vec![7u8; cap]), false).unwrap();
                total += cap;
                let _ = sent_tx.send(total);
            }
            let _ = tx.send_trailers(trailers("0"));
        }
    });
    let addr = h2_server(h2::server::Builder::new(), server).await;
    let send = connect(addr, Config::default()).await;
    let (resp, _) = send
        .send_request(
            &head(addr, "/svc/Down"),
            [Bytes::from_static(b"x")],
            End::Done,
        )
        .await
        .unwrap();
    let mut body = resp.await.unwrap().into_body();
    // Not reading: the server stops at our 2 MiB stream window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sent_so_far = 0;
    while let Ok(n) = sent.try_recv() {
        sent_so_far = n;
    }
    assert_eq!(
        sent_so_far,
        2 * 1024 * 1024,
        "server held at the stream window"
    );
    // Reading lets the rest through.
    let mut got = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            got += data.len();
        }
    }
    assert_eq!(got, 6 * 1024 * 1024);
}

#[tokio::test]
async fn graceful_goaway_finishes_open_streams_and_refuses_new_ones() {
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let go_rx = Arc::new(tokio::sync::Mutex::new(Some(go_rx)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(tcp).await.unwrap();
        let (req, mut respond) = conn.accept().await.unwrap().unwrap();
        let go = go_rx.lock().await.take().unwrap();
        tokio::spawn(async move {
            let _ = go.await;
            let mut body = req.into_body();
            let data = read_all(&mut body).await.unwrap();
            let resp = http::Response::builder().body(()).unwrap();
            let mut tx = respond.send_response(resp, false).unwrap();
            let _ = send_all(&mut tx, Bytes::from(data)).await;
            let _ = tx.send_trailers(trailers("0"));
        });
        conn.graceful_shutdown();
        while let Some(Ok((_req, _respond))) = conn.accept().await {}
    });
    let send = connect(addr, Config::default()).await;
    let head = head(addr, "/svc/G");
    let (first, _) = send
        .send_request(&head, [Bytes::from_static(b"first")], End::Done)
        .await
        .unwrap();
    // Wait for the GOAWAY.
    tokio::time::timeout(Duration::from_secs(5), send.draining())
        .await
        .unwrap();
    assert!(!send.is_accepting());
    let refused = send
        .send_request(&head, [Bytes::from_static(b"second")], End::Done)
        .await
        .err()
        .expect("refused");
    assert!(refused.is_refused(), "{refused}");
    go_tx.send(()).unwrap();
    let (data, trailers) = collect(first.await.unwrap().into_body()).await;
    assert_eq!(data, b"first");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

// === raw server: frames written by hand ===

/// A server that speaks frames by hand on one accepted connection.
struct Raw {
    tcp: TcpStream,
    reader: FrameReader,
    encoder: hpack::Encoder,
    /// RST_STREAM frames seen so far (stream, reason).
    resets: Vec<(u32, Reason)>,
}

impl Raw {
    async fn accept(listener: &TcpListener) -> Raw {
        Self::accept_with(listener, &[]).await
    }

    /// Like `accept`, announcing `settings` in the server's first SETTINGS frame.
    async fn accept_with(listener: &TcpListener, settings: &[(u16, u32)]) -> Raw {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut preface = [0u8; 24];
        tcp.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, frame::PREFACE);
        let mut raw = Raw {
            tcp,
            reader: FrameReader::new(1 << 20, 1 << 20),
            encoder: hpack::Encoder::new(),
            resets: Vec::new(),
        };
        let mut out = BytesMut::new();
        frame::put_settings(&mut out, settings);
        raw.write(out).await;
        raw
    }

    /// Reads DATA of `stream` into `got` until it holds `want` bytes or the stream ends;
    /// returns whether it ended.
    async fn data(&mut self, stream: u32, got: &mut Vec<u8>, want: usize) -> bool {
        while got.len() < want {
            match self.next().await.expect("more DATA") {
                Frame::Data {
                    stream: s,
                    data,
                    end_stream,
                    ..
                } if s == stream => {
                    got.extend_from_slice(&data);
                    if end_stream {
                        return true;
                    }
                }
                _ => {}
            }
        }
        false
    }

    async fn write(&mut self, out: BytesMut) {
        self.tcp.write_all(&out).await.unwrap();
    }

    /// Next frame, or None at EOF.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.reader.next().unwrap() {
                return Some(f);
            }
            let n = self.tcp.read_buf(self.reader.buf_mut()).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until a HEADERS frame; returns its stream id.
    async fn request(&mut self) -> u32 {
        loop {
            match self.next().await.expect("a request") {
                Frame::Headers { stream, .. } => return stream,
                Frame::RstStream { stream, reason } => self.resets.push((stream, reason)),
                _ => continue,
            }
        }
    }

    fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end: bool) -> BytesMut {
        let mut block = BytesMut::new();
        self.encoder.begin_block(&mut block);
        for (n, v) in fields {
            self.encoder
                .encode(n.as_bytes(), v.as_bytes(), false, &mut block);
        }
        let mut out = BytesMut::new();
        frame::put_headers(&mut out, stream, &block, end, 16_384);
        out
    }
}

/// A request whose body is over and empty goes out as HEADERS, then an empty DATA frame with
/// END_STREAM (as nginx, HAProxy and Envoy forward it; grpc-go servers before 2026 hang on
/// END_STREAM on the HEADERS of a client stream), in one write.
#[tokio::test]
async fn an_empty_finished_body_ends_with_an_empty_data_frame() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut raw = Raw::accept(&listener).await;
        let mut seen = Vec::new();
        loop {
            match raw.next().await.expect("the request") {
                Frame::Headers {
                    stream, end_stream, ..
                } => seen.push(("HEADERS", stream, 0, end_stream)),
                Frame::Data {
                    stream,
                    data,
                    end_stream,
                    ..
                } => {
                    seen.push(("DATA", stream, data.len(), end_stream));
                    if end_stream {
                        break;
                    }
                }
                _ => {}
            }
        }
        let mut out = raw.headers(1, &[(":status", "200")], false);
        out.extend_from_slice(&raw.headers(1, &[("grpc-status", "0")], true));
        raw.write(out).await;
        seen
    });
    let send = connect(addr, Config::default()).await;
    let head = head(addr, "/svc/ClientStream");
    let (response, tx) = send
        .send_request(&head, std::iter::empty(), End::Done)
        .await
        .unwrap();
    assert!(tx.is_none());
    let response = response.await.unwrap();
    let (_, trailers) = collect(response.into_body()).await;
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert_eq!(
        server.await.unwrap(),
        [("HEADERS", 1, 0, false), ("DATA", 1, 0, true)]
    );
}

#[tokio::test]
async fn goaway_below_an_open_stream_refuses_it_and_finishes_the_other() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut raw = Raw::accept(&listener).await;
        let a = raw.request().await;
        let b = raw.request().await;
        let mut out = BytesMut::new();
        frame::put_goaway(&mut out, a, Reason::NO_ERROR, b"bye");
        raw.write(out).await;
        let mut out = raw.headers(a, &[(":status", "200")], false);
        let mut data = BytesMut::new();
        frame::put_head(&mut data, 2, frame::kind::DATA, 0, a);
        data.extend_from_slice(b"ok");
        out.extend_from_slice(&data);
        out.extend_from_slice(&raw.headers(a, &[("grpc-status", "0")], true));
        raw.write(out).await;
        let _ = b;
        // Drain until the client closes.
        while raw.next().await.is_some() {}
    });
    let send = connect(addr, Config::default()).await;
    let head = head(addr, "/svc/A");
    let (a, _) = send
        .send_request(&head, [Bytes::from_static(b"a")], End::Done)
        .await
        .unwrap();
    let (b, _) = send
        .send_request(&head, [Bytes::from_static(b"b")], End::Done)
        .await
        .unwrap();
    let err = b.await.expect_err("b refused");
    assert!(err.is_refused(), "{err}");
    let (data, trailers) = collect(a.await.unwrap().into_body()).await;
    assert_eq!(data, b"ok");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    drop(send);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn unanswered_pings_close_the_connection_and_fail_streams() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut raw = Raw::accept(&listener).await;
        // Reads everything, answers nothing (no SETTINGS ACK either, no PING ACK).
        while raw.next().await.is_some() {}
    });
    let config = Config {
        keepalive: Some((Duration::from_millis(200), Duration::from_millis(200))),
        ..Config::default()
    };
    let send = connect(addr, config).await;
    let (resp, _) = send
        .send_request(
            &head(addr, "/svc/Hang"),
            [Bytes::from_static(b"x")],
            End::Done,
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("keepalive gave up in time")
        .expect_err("failed");
    assert!(matches!(err, Error::KeepaliveTimeout), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!send.is_accepting());
}

#[tokio::test]
async fn connection_loss_fails_open_streams() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut raw = Raw::accept(&listener).await;
        raw.request().await;
        // Closes the socket with the stream open.
    });
    let send = connect(addr, Config::default()).await;
    let (resp, _) = send
        .send_request(
            &head(addr, "/svc/Lost"),
            [Bytes::from_static(b"x")],
            End::Done,
        )
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .expect_err("failed");
    assert!(!err.is_refused(), "{err}");
    let refused = send
        .send_request(
            &head(addr, "/svc/Lost"),
            [Bytes::from_static(b"x")],
            End::Done,
        )
        .await
        .err()
        .expect("closed");
    assert!(refused.is_refused());
}

#[tokio::test]
async fn bad_response_headers_reset_only_their_stream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut raw = Raw::accept(&listener).await;
        // 1: uppercase name; 2: a header list over the client's limit; 3: fine.
        let s1 = raw.request().await;
        let out = raw.headers(s1, &[(":status", "200"), ("X-Upper", "1")], false);
        raw.write(out).await;
        let s2 = raw.request().await;
        let big = "v".repeat(4000);
        let out = raw.headers(s2, &[(":status", "200"), ("x-big", &big)], false);
        raw.write(out).await;
        let s3 = raw.request().await;
        let out = raw.headers(s3, &[(":status", "200"), ("grpc-status", "0")], true);
        raw.write(out).await;
        while let Some(f) = raw.next().await {
            if let Frame::RstStream { stream, reason } = f {
                raw.resets.push((stream, reason));
            }
        }
        (raw.resets, [s1, s2])
    });
    let config = Config {
        max_header_list_size: 2048,
        ..Config::default()
    };
    let send = connect(addr, config).await;
    let head = head(addr, "/svc/Bad");
    for _ in 0..2 {
        let (resp, _) = send
            .send_request(&head, [Bytes::from_static(b"x")], End::Done)
            .await
            .unwrap();
        let err = resp.await.expect_err("stream error");
        assert_eq!(err.reason(), Some(Reason::PROTOCOL_ERROR), "{err}");
    }
    let (resp, _) = send
        .send_request(&head, [Bytes::from_static(b"x")], End::Done)
        .await
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "0");
    drop(resp);
    drop(send);
    let (resets, [s1, s2]) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        resets,
        [(s1, Reason::PROTOCOL_ERROR), (s2, Reason::PROTOCOL_ERROR)]
    );
}

/// RFC 9113 section 6.9.2: a change of SETTINGS_INITIAL_WINDOW_SIZE applies to the streams
/// already open. The server starts with a 10-byte stream window, so the client sends 10 of the
/// request's 100 bytes and waits; raising the setting mid-stream (no WINDOW_UPDATE) releases the
/// other 90.
#[tokio::test]
async fn initial_window_size_change_applies_to_open_streams() {
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut raw = Raw::accept_with(&listener, &[(INITIAL_WINDOW_SIZE, 10)]).await;
        let stream = raw.request().await;
        let mut got = Vec::new();
        assert!(!raw.data(stream, &mut got, 10).await, "ended early");
        assert_eq!(got.len(), 10, "exactly the stream window");
        let beyond = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                match raw.next().await {
                    Some(Frame::Data { .. }) => return true,
                    Some(_) => continue,
                    None => return false,
                }
            }
        })
        .await;
        assert!(beyond.is_err(), "DATA sent beyond the stream window");
        let mut out = BytesMut::new();
        frame::put_settings(&mut out, &[(INITIAL_WINDOW_SIZE, 1000)]);
        raw.write(out).await;
        assert!(
            raw.data(stream, &mut got, usize::MAX).await,
            "the rest arrives"
        );
        assert_eq!(got, vec![7u8; 100]);
        let out = raw.headers(stream, &[(":status", "200"), ("grpc-status", "0")], true);
        raw.write(out).await;
        while raw.next().await.is_some() {}
    });
    let send = connect(addr, Config::default()).await;
    let (resp, _) = send
        .send_request(
            &head(addr, "/svc/Window"),
            [Bytes::from(vec![7u8; 100])],
            End::Done,
        )
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("answered")
        .expect("ok");
    assert_eq!(resp.status(), 200);
    drop(resp);
    drop(send);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}
