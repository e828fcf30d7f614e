//! The native HTTP/2 server engine (`partgate_http2::server`), driven by `h2::client` (an
//! independent implementation) and by raw frames: every call kind, flow control, resets,
//! limits, malformed input, drain, rapid reset and keepalive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame as BodyFrame;
use http_body_util::BodyExt;
use partgate_http2::frame::{self, Frame, FrameReader, Reason, flag, kind};
use partgate_http2::hpack;
use partgate_http2::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

/// The client's address, as a request extension (as the gateway's frontends insert it).
#[derive(Debug, Clone, Copy)]
struct PeerAddr(SocketAddr);

/// Any body the tests answer with (or the request's), its error as text.
struct Body(http_body_util::combinators::UnsyncBoxBody<Bytes, String>);

impl Body {
    fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes, Error: std::fmt::Display> + Send + 'static,
    {
        Body(http_body_util::combinators::UnsyncBoxBody::new(
            body.map_err(|e| e.to_string()),
        ))
    }

    fn empty() -> Self {
        Body::new(http_body_util::Empty::<Bytes>::new())
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = String;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, String>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

type CallFuture =
    Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// A test handler: a closure over the request (with the client's address as an extension).
#[derive(Clone)]
struct Handler(Arc<dyn Fn(Request<Body>, SocketAddr) -> CallFuture + Send + Sync>);

impl server::Handler for Handler {
    type Body = Body;
    type Future = CallFuture;

    fn call(&self, request: Request<server::RequestBody>, peer: SocketAddr) -> CallFuture {
        (self.0)(request.map(Body::new), peer)
    }
}

const PEER: &str = "192.0.2.7:4242";
const T: Duration = Duration::from_secs(10);

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Body>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    // The server hands the peer address beside the request; the test handlers
    // see it as the extension the gateway's frontends would insert.
    Handler(Arc::new(move |mut req: Request<Body>, peer| {
        req.extensions_mut().insert(PeerAddr(peer));
        let fut = f(req);
        Box::pin(async move { Ok::<_, Infallible>(fut.await) })
    }))
}

struct Served {
    addr_io: Option<DuplexStream>,
    shutdown: watch::Sender<bool>,
    done: tokio::task::JoinHandle<Result<(), server::Error>>,
}

fn serve_with(h: Handler, max_streams: u32, config: partgate_http2::conn::Config) -> Served {
    let (client, srv) = tokio::io::duplex(1 << 20);
    serve_io(client, srv, h, max_streams, config)
}

fn serve_io<I>(
    client: DuplexStream,
    srv: I,
    h: Handler,
    max_streams: u32,
    config: partgate_http2::conn::Config,
) -> Served
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = watch::channel(false);
    let peer: SocketAddr = PEER.parse().unwrap();
    let done = tokio::spawn(server::serve_connection(
        srv,
        peer,
        h,
        max_streams,
        config,
        rx,
    ));
    Served {
        addr_io: Some(client),
        shutdown: tx,
        done,
    }
}

fn serve(h: Handler) -> Served {
    serve_with(h, 4096, server::config())
}

/// The server's end of the connection, counting the writes that moved bytes.
struct CountedWrites {
    io: DuplexStream,
    writes: Arc<AtomicUsize>,
}

impl CountedWrites {
    fn count(&self, polled: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled
            && *n > 0
        {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl tokio::io::AsyncRead for CountedWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.count(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.count(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn h2_client(io: DuplexStream) -> h2::client::SendRequest<Bytes> {
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake(io)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn grpc_request(path: &str) -> Request<()> {
    Request::builder()
        .method("POST")
        .uri(format!("http://gw.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

fn trailers(status: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_str(status).unwrap());
    t
}

/// A response body from a channel of frames.
struct ChanBody {
    rx: mpsc::Receiver<BodyFrame<Bytes>>,
    on_drop: Option<Arc<AtomicBool>>,
}

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = String;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, String>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

impl Drop for ChanBody {
    fn drop(&mut self) {
        if let Some(flag) = &self.on_drop {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

async fn read_all(mut body: h2::RecvStream) -> (Vec<u8>, Option<HeaderMap>) {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        out.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap();
    (out, trailers)
}

/// Echo: the response streams the request body back, then trailers grpc-status 0.
fn echo_handler() -> Handler {
    handler(|req: Request<Body>| async move {
        let (tx, rx) = mpsc::channel(4);
        let mut body = req.into_body();
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(d) = f.into_data()
                            && tx.send(BodyFrame::data(d)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            let _ = tx.send(BodyFrame::trailers(trailers("0"))).await;
        });
        let mut resp = Response::new(Body::new(ChanBody { rx, on_drop: None }));
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        resp
    })
}

#[tokio::test]
async fn unary_request_head_body_and_trailers() {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let seen2 = seen.clone();
    let h = handler(move |req: Request<Body>| {
        let seen = seen2.clone();
        async move {
            let (parts, body) = req.into_parts();
            let collected = body.collect().await.unwrap();
            let body_trailers = collected.trailers().cloned();
            let data = collected.to_bytes();
            *seen.lock().unwrap() = Some((parts, data, body_trailers));
            let (tx, rx) = mpsc::channel(4);
            tx.send(BodyFrame::data(Bytes::from_static(b"\0\0\0\0\x02hi")))
                .await
                .unwrap();
            tx.send(BodyFrame::trailers(trailers("0"))).await.unwrap();
            let mut resp = Response::new(Body::new(ChanBody { rx, on_drop: None }));
            resp.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            resp
        }
    });
    let mut s = serve(h);
    let mut client = h2_client(s.addr_io.take().unwrap()).await;
    let mut req = grpc_request("/pkg.Svc/Method?x=1");
    req.headers_mut()
        .insert("viam-sid", HeaderValue::from_static("abc"));
    req.headers_mut()
        .insert("x-custom", HeaderValue::from_static("v1"));
    req.headers_mut()
        .append("x-custom", HeaderValue::from_static("v2"));
    let (resp, mut tx) = client.send_request(req, false).unwrap();
    tx.send_data(Bytes::from_static(b"\0\0\0\0\x03abc"), false)
        .unwrap();
    let mut rt = HeaderMap::new();
    rt.insert("x-req-trailer", HeaderValue::from_static("t"));
    tx.send_trailers(rt).unwrap();
    let resp = timeout(T, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let (data, t) = read_all(resp.into_body()).await;
    assert_eq!(data, b"\0\0\0\0\x02hi");
    assert_eq!(t.unwrap()["grpc-status"], "0");

    let (parts, data, body_trailers) = seen.lock().unwrap().take().unwrap();
    assert_eq!(parts.method, http::Method::POST);
    assert_eq!(parts.version, http::Version::HTTP_2);
    assert_eq!(parts.uri.to_string(), "http://gw.test/pkg.Svc/Method?x=1");
    assert_eq!(parts.uri.path(), "/pkg.Svc/Method");
    assert_eq!(parts.headers["viam-sid"], "abc");
    assert_eq!(parts.headers["content-type"], "application/grpc");
    assert_eq!(parts.headers["te"], "trailers");
    let custom: Vec<_> = parts.headers.get_all("x-custom").iter().collect();
    assert_eq!(custom, ["v1", "v2"]);
    assert_eq!(
        parts.extensions.get::<PeerAddr>().unwrap().0,
        PEER.parse::<SocketAddr>().unwrap()
    );
    assert_eq!(&data[..], b"\0\0\0\0\x03abc");
    assert_eq!(body_trailers.unwrap()["x-req-trailer"], "t");

    // Many calls on one connection, concurrently.
    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut client = client.clone();
        calls.push(tokio::spawn(async move {
            let (resp, _) = client
                .send_request(grpc_request("/pkg.Svc/Method"), true)
                .unwrap();
            let resp = resp.await.unwrap();
            let (data, t) = read_all(resp.into_body()).await;
            assert_eq!(data, b"\0\0\0\0\x02hi");
            assert_eq!(t.unwrap()["grpc-status"], "0");
        }));
    }
    for c in calls {
        timeout(T, c).await.unwrap().unwrap();
    }
}

/// Header maps are reused across calls (`http2::maps`): the response headers and trailers the
/// server encoded come back as later requests' maps. Nothing of one call's fields may show up in
/// the next call's request or response.
#[tokio::test]
async fn reused_header_maps_carry_nothing_over() {
    let seen: Arc<std::sync::Mutex<Vec<HeaderMap>>> = Arc::default();
    let seen2 = seen.clone();
    let h = handler(move |req: Request<Body>| {
        let seen = seen2.clone();
        async move {
            let first = req.headers().contains_key("x-first");
            seen.lock().unwrap().push(req.headers().clone());
            let (tx, rx) = mpsc::channel(4);
            let mut end = trailers("0");
            if first {
                end.insert("x-trailer-first", HeaderValue::from_static("t"));
            }
            tx.send(BodyFrame::trailers(end)).await.unwrap();
            let mut resp = Response::new(Body::new(ChanBody { rx, on_drop: None }));
            resp.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            if first {
                resp.headers_mut()
                    .insert("x-response-first", HeaderValue::from_static("r"));
            }
            resp
        }
    });
    let mut s = serve(h);
    let mut client = h2_client(s.addr_io.take().unwrap()).await;
    for call in 0..6 {
        let mut req = grpc_request("/pkg.Svc/Method");
        if call % 3 == 0 {
            req.headers_mut()
                .insert("x-first", HeaderValue::from_static("1"));
        }
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = timeout(T, resp).await.unwrap().unwrap();
        let first = call % 3 == 0;
        assert_eq!(
            resp.headers().contains_key("x-response-first"),
            first,
            "call {call}"
        );
        let (_, end) = timeout(T, read_all(resp.into_body())).await.unwrap();
        let end = end.unwrap();
        assert_eq!(end.get("grpc-status").unwrap(), "0");
        assert_eq!(end.contains_key("x-trailer-first"), first, "call {call}");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 6);
    for (call, headers) in seen.iter().enumerate() {
        let first = call % 3 == 0;
        assert_eq!(headers.contains_key("x-first"), first, "call {call}");
        for leaked in ["x-response-first", "x-trailer-first", "grpc-status"] {
            assert!(!headers.contains_key(leaked), "call {call} got {leaked}");
        }
        assert_eq!(headers.get_all("content-type").iter().count(), 1);
        // content-type, te, and x-first on the calls that sent it.
        assert_eq!(
            headers.len(),
            2 + usize::from(first),
            "call {call}: {headers:?}"
        );
    }
}

#[tokio::test]
async fn trailers_only_and_plain_http_content_length() {
    let h = handler(|req: Request<Body>| async move {
        if req.uri().path() == "/plain" {
            let mut resp = Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(
                b"hello\n",
            ))));
            resp.headers_mut()
                .insert("content-type", HeaderValue::from_static("text/plain"));
            return resp;
        }
        let mut resp = Response::new(Body::empty());
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("5"));
        resp.headers_mut()
            .insert("grpc-message", HeaderValue::from_static("not found"));
        resp
    });
    let mut s = serve(h);
    let mut client = h2_client(s.addr_io.take().unwrap()).await;
    let (resp, _) = client
        .send_request(grpc_request("/pkg.Svc/Missing"), true)
        .unwrap();
    let resp = timeout(T, resp).await.unwrap().unwrap();
    assert_eq!(resp.headers()["grpc-status"], "5");
    assert_eq!(resp.headers()["grpc-message"], "not found");
    // Trailers-only: END_STREAM on the HEADERS frame.
    assert!(resp.body().is_end_stream());

    let req = Request::builder()
        .method("GET")
        .uri("http://gw.test/plain")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = timeout(T, resp).await.unwrap().unwrap();
    assert_eq!(resp.headers()["content-length"], "6");
    let (data, _) = read_all(resp.into_body()).await;
    assert_eq!(data, b"hello\n");
}

#[tokio::test]
async fn server_client_and_bidi_streaming() {
    // Server streaming: 100 messages, spaced.
    let h = handler(|req: Request<Body>| async move {
        if req.uri().path() == "/echo" {
            return (echo_handler().0)(req, ([127, 0, 0, 1], 1).into())
                .await
                .unwrap();
        }
        if req.uri().path() == "/client" {
            // Client streaming: counts the bytes, answers at the end.
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let (tx, rx) = mpsc::channel(4);
            tx.send(BodyFrame::data(Bytes::from(body.len().to_string())))
                .await
                .unwrap();
            tx.send(BodyFrame::trailers(trailers("0"))).await.unwrap();
            return Response::new(Body::new(ChanBody { rx, on_drop: None }));
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for i in 0..100u32 {
                tx.send(BodyFrame::data(Bytes::from(i.to_be_bytes().to_vec())))
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            tx.send(BodyFrame::trailers(trailers("0"))).await.unwrap();
        });
        Response::new(Body::new(ChanBody { rx, on_drop: None }))
    });
    let mut s = serve(h);
    let mut client = h2_client(s.addr_io.take().unwrap()).await;

    let (resp, _) = client.send_request(grpc_request("/server"), true).unwrap();
    let resp = timeout(T, resp).await.unwrap().unwrap();
    let (data, t) = timeout(T, read_all(resp.into_body())).await.unwrap();
    let expect: Vec<u8> = (0..100u32).flat_map(u32::to_be_bytes).collect();
    assert_eq!(data, expect);
    assert_eq!(t.unwrap()["grpc-status"], "0");

    let (resp, mut tx) = client.send_request(grpc_request("/client"), false).unwrap();
    for _ in 0..20 {
        tx.send_data(Bytes::from_static(&[7u8; 1000]), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tx.send_data(Bytes::new(), true).unwrap();
    let resp = timeout(T, resp).await.unwrap().unwrap();
    let (data, _) = timeout(T, read_all(resp.into_body())).await.unwrap();
    assert_eq!(data, b"20000");

    // Bidi: each message comes back before the next is sent.
    let (resp, mut tx) = client.send_request(grpc_request("/echo"), false).unwrap();
    tx.send_data(Bytes::from_static(b"ping0"), false).unwrap();
    let resp = timeout(T, resp).await.unwrap().unwrap();
    let mut body = resp.into_body();
    for i in 1..=20 {
        let got = timeout(T, body.data()).await.unwrap().unwrap().unwrap();
        body.flow_control().release_capacity(got.len()).unwrap();
        assert_eq!(got, format!("ping{}", i - 1).as_bytes());
        if i < 20 {
            tx.send_data(Bytes::from(format!("ping{i}")), false)
                .unwrap();
        }
    }
    tx.send_data(Bytes::new(), true).unwrap();
    let (rest, t) = timeout(T, read_all(body)).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(t.unwrap()["grpc-status"], "0");
}

/// Messages that become ready on many open streams at once (a part's answers to 16 bidi
/// streams, read in one go) leave in one write: a turn of the connection commits every ready
/// call before it writes. A call that woke itself while committing made `FuturesUnordered`
/// yield after two calls, and the 16 messages took 8 writes.
#[tokio::test]
async fn messages_ready_together_leave_in_one_write() {
    const STREAMS: usize = 16;
    let (feeds_tx, mut feeds) = mpsc::unbounded_channel();
    let h = handler(move |_req: Request<Body>| {
        let feeds_tx = feeds_tx.clone();
        async move {
            let (tx, rx) = mpsc::channel(4);
            feeds_tx.send(tx).unwrap();
            Response::new(Body::new(ChanBody { rx, on_drop: None }))
        }
    });
    let (client_io, srv) = tokio::io::duplex(1 << 20);
    let writes = Arc::new(AtomicUsize::new(0));
    let counted = CountedWrites {
        io: srv,
        writes: writes.clone(),
    };
    let mut s = serve_io(client_io, counted, h, 4096, server::config());
    let mut client = h2_client(s.addr_io.take().unwrap()).await;

    let mut open = Vec::new();
    for _ in 0..STREAMS {
        open.push(client.send_request(grpc_request("/bidi"), false).unwrap());
    }
    let mut bodies = Vec::new();
    let mut senders = Vec::new();
    for (resp, tx) in open {
        bodies.push(timeout(T, resp).await.unwrap().unwrap().into_body());
        senders.push(tx);
    }
    let mut feed = Vec::new();
    for _ in 0..STREAMS {
        feed.push(timeout(T, feeds.recv()).await.unwrap().unwrap());
    }
    // Settle (SETTINGS acknowledged, every head written).
    tokio::time::sleep(Duration::from_millis(50)).await;

    for round in 0..3 {
        let before = writes.load(Ordering::SeqCst);
        for tx in &feed {
            tx.try_send(BodyFrame::data(Bytes::from_static(b"pong")))
                .unwrap();
        }
        for body in &mut bodies {
            let got = timeout(T, body.data()).await.unwrap().unwrap().unwrap();
            assert_eq!(got, "pong");
        }
        let used = writes.load(Ordering::SeqCst) - before;
        assert!(
            used <= 2,
            "round {round}: {STREAMS} messages ready together took {used} writes"
        );
    }
    drop(senders);
}

#[tokio::test]
async fn thirty_mib_each_way() {
    let mut s = serve(echo_handler());
    let mut client = h2_client(s.addr_io.take().unwrap()).await;
    let (resp, mut tx) = client.send_request(grpc_request("/echo"), false).unwrap();
    let total = 30 << 20;
    let sender = tokio::spawn(async move {
        let chunk = Bytes::from(vec![0xabu8; 1 << 20]);
        let mut sent = 0;
        while sent < total {
            tx.reserve_capacity(chunk.len());
            let mut left = chunk.clone();
            while !left.is_empty() {
                let cap = std::future::poll_fn(|cx| tx.poll_capacity(cx))
                    .await
                    .unwrap()
                    .unwrap();
                let n = cap.min(left.len());
                tx.send_data(left.split_to(n), false).unwrap();
            }
            sent += chunk.len();
        }
        tx.send_data(Bytes::new(), true).unwrap();
    });
    let resp = timeout(T, resp).await.unwrap().unwrap();
    let (data, t) = timeout(Duration::from_secs(60), read_all(resp.into_body()))
        .await
        .unwrap();
    sender.await.unwrap();
    assert_eq!(data.len(), total);
    assert!(data.iter().all(|&b| b == 0xab));
    assert_eq!(t.unwrap()["grpc-status"], "0");
}

#[tokio::test]
async fn slow_reader_holds_the_client_back() {
    let consumed = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = watch::channel(false);
    let c2 = consumed.clone();
    let h = handler(move |req: Request<Body>| {
        let consumed = c2.clone();
        let mut go = go_rx.clone();
        async move {
            let _ = go.wait_for(|g| *g).await;
            let mut body = req.into_body();
            while let Some(f) = body.frame().await {
                if let Ok(d) = f.unwrap().into_data() {
                    consumed.fetch_add(d.len(), Ordering::SeqCst);
                }
            }
            let mut resp = Response::new(Body::empty());
            resp.headers_mut()
                .insert("grpc-status", HeaderValue::from_static("0"));
            resp
        }
    });
    let mut s = serve(h);
    let mut client = h2_client(s.addr_io.take().unwrap()).await;
    let (resp, mut tx) = client.send_request(grpc_request("/slow"), false).unwrap();
    tx.reserve_capacity(8 << 20);
    // Collect the capacity the server grants while the handler is not reading.
    let mut granted = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(Ok(cap))) =
        tokio::time::timeout_at(deadline, std::future::poll_fn(|cx| tx.poll_capacity(cx))).await
    {
        tx.send_data(Bytes::from(vec![1u8; cap]), false).unwrap();
        granted += cap;
    }
    // The stream window (2 MiB) is all it may send before the handler reads.
    assert_eq!(granted, 2 << 20, "granted {granted}");
    assert_eq!(consumed.load(Ordering::SeqCst), 0);
    go_tx.send(true).unwrap();
    // Once it reads, more capacity comes.
    let cap = timeout(T, std::future::poll_fn(|cx| tx.poll_capacity(cx)))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(cap > 0);
    tx.send_data(Bytes::from(vec![1u8; cap]), true).unwrap();
    let resp = timeout(T, resp).await.unwrap().unwrap();
    assert_eq!(resp.headers()["grpc-status"], "0");
    assert_eq!(consumed.load(Ordering::SeqCst), granted + cap);
}

/// A future that sets a flag when dropped.
struct Guard(Arc<AtomicBool>);
impl Drop for Guard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn wait_flag(flag: &AtomicBool) {
    timeout(T, async {
        while !flag.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("flag never set");
}

#[tokio::test]
async fn client_reset_before_and_after_the_response() {
    let handler_dropped = Arc::new(AtomicBool::new(false));
    let body_dropped = Arc::new(AtomicBool::new(false));
    let (hd, bd) = (handler_dropped.clone(), body_dropped.clone());
    let h = handler(move |req: Request<Body>| {
        let (hd, bd) = (hd.clone(), bd.clone());
        async move {
            if req.uri().path() == "/hang" {
                let _guard = Guard(hd);
                std::future::pending::<()>().await;
            }
            let (tx, rx) = mpsc::channel(1);
            // Keeps the body open forever (never sends trailers).
            std::mem::forget(tx);
            Response::new(Body::new(ChanBody {
                rx,
                on_drop: Some(bd),
            }))
        }
    });
    let mut s = serve(h);
    let mut client = h2_client(s.addr_io.take().unwrap()).await;

    let (resp, mut tx) = client.send_request(grpc_request("/hang"), false).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!handler_dropped.load(Ordering::SeqCst));
    tx.send_reset(h2::Reason::CANCEL);
    drop(resp);
    wait_flag(&handler_dropped).await;

    let (resp, mut tx) = client.send_request(grpc_request("/stream"), false).unwrap();
    let resp = timeout(T, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!body_dropped.load(Ordering::SeqCst));
    tx.send_reset(h2::Reason::CANCEL);
    wait_flag(&body_dropped).await;

    // The connection still serves.
    let (resp, _) = client.send_request(grpc_request("/stream"), true).unwrap();
    let resp = timeout(T, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn graceful_shutdown_drains_open_streams() {
    let (release_tx, release_rx) = watch::channel(false);
    let h = handler(move |_req: Request<Body>| {
        let mut release = release_rx.clone();
        async move {
            let _ = release.wait_for(|r| *r).await;
            let mut resp = Response::new(Body::empty());
            resp.headers_mut()
                .insert("grpc-status", HeaderValue::from_static("0"));
            resp
        }
    });
    let mut s = serve(h);
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    raw.request(1, &[], true).await;
    raw.request(3, &[], true).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.shutdown.send(true).unwrap();
    match raw.next_significant().await {
        Some(Frame::GoAway {
            last_stream,
            reason,
            ..
        }) => {
            assert_eq!(reason, Reason::NO_ERROR);
            assert_eq!(last_stream, 3);
        }
        other => panic!("expected GOAWAY, got {other:?}"),
    }
    // A stream opened after the GOAWAY is refused.
    raw.request(5, &[], true).await;
    match raw.next_significant().await {
        Some(Frame::RstStream { stream: 5, reason }) => assert_eq!(reason, Reason::REFUSED_STREAM),
        other => panic!("expected RST_STREAM(REFUSED) on 5, got {other:?}"),
    }
    release_tx.send(true).unwrap();
    let mut answered = Vec::new();
    while let Some(f) = raw.next_significant().await {
        if let Frame::Headers {
            stream, end_stream, ..
        } = f
        {
            assert!(end_stream);
            answered.push(stream);
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, [1, 3]);
    timeout(T, s.done).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn refused_over_the_stream_limit() {
    let h = handler(|_req: Request<Body>| async move {
        std::future::pending::<()>().await;
        Response::new(Body::empty())
    });
    let mut s = serve_with(h, 2, server::config());
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    // Our SETTINGS say 2 streams.
    raw.request(1, &[], true).await;
    raw.request(3, &[], true).await;
    raw.request(5, &[], true).await;
    match raw.next_significant().await {
        Some(Frame::RstStream { stream: 5, reason }) => assert_eq!(reason, Reason::REFUSED_STREAM),
        other => panic!("expected RST_STREAM(REFUSED) on 5, got {other:?}"),
    }
    // Reset one: a slot frees up.
    raw.send(|b| frame::put_rst_stream(b, 1, Reason::CANCEL))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.request(7, &[], true).await;
    raw.ping(*b"12345678").await;
    match raw.next_significant().await {
        Some(Frame::Ping { ack: true, payload }) => assert_eq!(&payload, b"12345678"),
        other => panic!("stream 7 should have been accepted, got {other:?}"),
    }
}

// === raw frames ===

struct Raw {
    io: DuplexStream,
    reader: FrameReader,
    enc: hpack::Encoder,
    dec: hpack::Decoder,
    settings: Vec<(u16, u32)>,
}

impl Raw {
    async fn connect(io: DuplexStream) -> Raw {
        let mut raw = Raw::connect_quiet(io).await;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(frame::PREFACE);
        frame::put_settings(&mut buf, &[]);
        raw.io.write_all(&buf).await.unwrap();
        // The server's SETTINGS come first.
        match raw.next().await {
            Some(Frame::Settings { ack: false, params }) => raw.settings = params,
            other => panic!("expected SETTINGS, got {other:?}"),
        }
        raw
    }

    async fn connect_quiet(io: DuplexStream) -> Raw {
        Raw {
            io,
            reader: FrameReader::new(frame::MAX_FRAME_SIZE_LIMIT, 1 << 20),
            enc: hpack::Encoder::new(),
            dec: hpack::Decoder::new(4096),
            settings: Vec::new(),
        }
    }

    async fn send(&mut self, f: impl FnOnce(&mut BytesMut)) {
        let mut buf = BytesMut::new();
        f(&mut buf);
        self.io.write_all(&buf).await.unwrap();
    }

    fn block(&mut self, fields: &[(&str, &str)]) -> BytesMut {
        let mut block = BytesMut::new();
        self.enc.begin_block(&mut block);
        for (n, v) in fields {
            self.enc
                .encode(n.as_bytes(), v.as_bytes(), false, &mut block);
        }
        block
    }

    async fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end: bool) {
        let block = self.block(fields);
        self.send(|b| frame::put_headers(b, stream, &block, end, 16_384))
            .await;
    }

    /// A gRPC request head with extra fields.
    async fn request(&mut self, stream: u32, extra: &[(&str, &str)], end: bool) {
        let mut fields = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "gw.test"),
            (":path", "/pkg.Svc/M"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        fields.extend_from_slice(extra);
        self.headers(stream, &fields, end).await;
    }

    async fn ping(&mut self, payload: [u8; 8]) {
        self.send(|b| frame::put_ping(b, false, payload)).await;
    }

    /// Next frame, None at EOF; panics after the timeout.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            match self.reader.next() {
                Ok(Some(Frame::Headers {
                    stream,
                    block,
                    end_stream,
                })) => {
                    self.dec.decode(&block, 1 << 20, |_, _| {}).unwrap();
                    return Some(Frame::Headers {
                        stream,
                        block,
                        end_stream,
                    });
                }
                Ok(Some(f)) => return Some(f),
                Ok(None) => {}
                Err(e) => panic!("server sent a bad frame: {e}"),
            }
            let buf = self.reader.buf_mut();
            buf.reserve(16 * 1024);
            let n = timeout(T, self.io.read_buf(buf))
                .await
                .expect("no frame from the server")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Next frame other than SETTINGS (ACK), WINDOW_UPDATE and PING.
    async fn next_significant(&mut self) -> Option<Frame> {
        loop {
            match self.next().await? {
                Frame::Settings { .. } | Frame::WindowUpdate { .. } => {}
                Frame::Ping { ack: false, .. } => {}
                f => return Some(f),
            }
        }
    }

    /// Expects GOAWAY(reason) and then EOF.
    async fn expect_goaway(&mut self, reason: Reason) {
        loop {
            match self.next().await {
                Some(Frame::GoAway { reason: r, .. }) => {
                    assert_eq!(r, reason);
                    break;
                }
                Some(_) => {}
                None => panic!("connection closed without GOAWAY({reason})"),
            }
        }
        while self.next().await.is_some() {}
    }
}

fn ok_handler() -> Handler {
    handler(|_req: Request<Body>| async move {
        let mut resp = Response::new(Body::empty());
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("0"));
        resp
    })
}

#[tokio::test]
async fn settings_we_send() {
    let mut s = serve(ok_handler());
    let raw = Raw::connect(s.addr_io.take().unwrap()).await;
    let mut settings = raw.settings.clone();
    settings.sort_unstable();
    assert_eq!(
        settings,
        [
            (frame::setting::MAX_CONCURRENT_STREAMS, 4096),
            (frame::setting::INITIAL_WINDOW_SIZE, 2 << 20),
            (frame::setting::MAX_FRAME_SIZE, 64 << 10),
            (frame::setting::MAX_HEADER_LIST_SIZE, 16 << 10),
        ]
    );
    let mut raw = raw;
    // The connection window goes to 8 MiB, and our SETTINGS get ACKed.
    let mut window = false;
    let mut ack = false;
    while !(window && ack) {
        match raw.next().await.unwrap() {
            Frame::WindowUpdate {
                stream: 0,
                increment,
            } => {
                assert_eq!(increment, (8 << 20) - 65_535);
                window = true;
            }
            Frame::Settings { ack: true, .. } => ack = true,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn expect_reset(raw: &mut Raw, stream: u32, reason: Reason) {
    match raw.next_significant().await {
        Some(Frame::RstStream {
            stream: s,
            reason: r,
        }) => {
            assert_eq!((s, r), (stream, reason));
        }
        other => panic!("expected RST_STREAM({reason}) on {stream}, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_requests_reset_the_stream_only() {
    let mut s = serve(ok_handler());
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    let base = |path: &'static str| vec![(":method", "POST"), (":scheme", "http"), (":path", path)];
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![(":method", "POST"), (":scheme", "http")],
        vec![(":scheme", "http"), (":path", "/x")],
        vec![(":method", "POST"), (":path", "/x")],
        {
            let mut f = base("/x");
            f.push((":status", "200"));
            f
        },
        {
            let mut f = base("/x");
            f.push(("Upper", "x"));
            f
        },
        {
            let mut f = base("/x");
            f.push(("connection", "keep-alive"));
            f
        },
        {
            let mut f = base("/x");
            f.push(("te", "gzip"));
            f
        },
        {
            let mut f = vec![("content-type", "application/grpc")];
            f.extend(base("/x"));
            f
        },
        {
            let mut f = base("/x");
            f.push((":path", "/y"));
            f
        },
        base(""),
        {
            let mut f = base("/x");
            f.push(("content-length", "12a"));
            f
        },
        {
            let mut f = base("/x");
            f.push(("x-bad", "a\u{1}b"));
            f
        },
    ];
    let mut id = 1;
    for fields in &cases {
        raw.headers(id, fields, true).await;
        expect_reset(&mut raw, id, Reason::PROTOCOL_ERROR).await;
        id += 2;
    }
    // A header list over 16 KiB: the stream is refused, the HPACK table stays in step.
    let big = "v".repeat(17 * 1024);
    raw.request(id, &[("x-big", &big), ("x-after", "indexed")], true)
        .await;
    expect_reset(&mut raw, id, Reason::PROTOCOL_ERROR).await;
    id += 2;
    // The next request, reusing the dynamic table, works.
    raw.request(id, &[("x-after", "indexed")], true).await;
    match raw.next_significant().await {
        Some(Frame::Headers {
            stream, end_stream, ..
        }) => {
            assert_eq!(stream, id);
            assert!(end_stream);
        }
        other => panic!("expected a response, got {other:?}"),
    }
}

/// Each case: bytes after a good preface + SETTINGS, and the GOAWAY reason expected.
#[tokio::test]
async fn malformed_frames_close_the_connection_with_goaway() {
    let mut hpack_bad = BytesMut::new();
    // An indexed field with index 200 (no such entry).
    frame::put_headers(&mut hpack_bad, 1, &[0xff, 0x49], true, 16_384);
    let mut data_on_0 = BytesMut::new();
    frame::put_head(&mut data_on_0, 1, kind::DATA, 0, 0);
    data_on_0.extend_from_slice(b"x");
    let mut too_big = BytesMut::new();
    frame::put_head(&mut too_big, 70_000, kind::DATA, 0, 1);
    too_big.extend_from_slice(&vec![0u8; 70_000]);
    let mut push = BytesMut::new();
    frame::put_head(&mut push, 4, kind::PUSH_PROMISE, flag::END_HEADERS, 1);
    push.extend_from_slice(&2u32.to_be_bytes());
    let mut data_idle = BytesMut::new();
    frame::put_head(&mut data_idle, 1, kind::DATA, 0, 9);
    data_idle.extend_from_slice(b"x");
    let mut window_zero = BytesMut::new();
    frame::put_window_update(&mut window_zero, 0, 0);

    let cases: Vec<(&str, BytesMut, Reason)> = vec![
        ("bad hpack index", hpack_bad, Reason::COMPRESSION_ERROR),
        ("DATA on stream 0", data_on_0, Reason::PROTOCOL_ERROR),
        (
            "frame over MAX_FRAME_SIZE",
            too_big,
            Reason::FRAME_SIZE_ERROR,
        ),
        ("PUSH_PROMISE from a client", push, Reason::PROTOCOL_ERROR),
        ("DATA on an idle stream", data_idle, Reason::PROTOCOL_ERROR),
        (
            "WINDOW_UPDATE 0 on the connection",
            window_zero,
            Reason::PROTOCOL_ERROR,
        ),
    ];
    for (what, bytes, reason) in cases {
        let mut s = serve(ok_handler());
        let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
        raw.io.write_all(&bytes).await.unwrap();
        eprintln!("case: {what}");
        raw.expect_goaway(reason).await;
        let ended = timeout(T, s.done).await.unwrap().unwrap();
        assert!(ended.is_err(), "{what}");
    }

    // Stream ids: even, and not increasing.
    let mut s = serve(ok_handler());
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    raw.request(2, &[], true).await;
    raw.expect_goaway(Reason::PROTOCOL_ERROR).await;
    let mut s2 = serve(ok_handler());
    let mut raw = Raw::connect(s2.addr_io.take().unwrap()).await;
    raw.request(5, &[], true).await;
    raw.request(3, &[], false).await;
    raw.expect_goaway(Reason::PROTOCOL_ERROR).await;
    drop(s);

    // A bad preface: closed.
    let mut s = serve(ok_handler());
    let mut io = s.addr_io.take().unwrap();
    io.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let ended = timeout(T, s.done).await.unwrap().unwrap();
    assert!(ended.is_err());

    // Garbage of every kind never panics the server.
    for seed in 0..200u32 {
        let mut s = serve(ok_handler());
        let mut io = s.addr_io.take().unwrap();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(frame::PREFACE);
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            buf.extend_from_slice(&x.to_le_bytes()[..(x % 4 + 1) as usize]);
        }
        let _ = io.write_all(&buf).await;
        drop(io);
        let _ = timeout(T, s.done)
            .await
            .expect("server hung on garbage")
            .unwrap();
    }
}

#[tokio::test]
async fn rapid_reset_flood_gets_enhance_your_calm() {
    let h = handler(|_req: Request<Body>| async move {
        std::future::pending::<()>().await;
        Response::new(Body::empty())
    });
    let mut s = serve(h);
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    let mut id = 1;
    let writer = async {
        for _ in 0..(server::RESET_BUDGET + 100) {
            let block = raw.block(&[(":method", "POST"), (":scheme", "http"), (":path", "/x")]);
            let mut buf = BytesMut::new();
            frame::put_headers(&mut buf, id, &block, false, 16_384);
            frame::put_rst_stream(&mut buf, id, Reason::CANCEL);
            if raw.io.write_all(&buf).await.is_err() {
                break;
            }
            id += 2;
        }
    };
    writer.await;
    raw.expect_goaway(Reason::ENHANCE_YOUR_CALM).await;
    assert!(timeout(T, s.done).await.unwrap().unwrap().is_err());
}

/// A peer that floods control frames (PING, or SETTINGS, each owing an acknowledgement) and
/// does not read the answers: the server queues at most `MAX_QUEUED_REPLIES` replies beyond
/// what the socket took, then closes the connection as ENHANCE_YOUR_CALM (CVE-2019-9512, 9515).
async fn control_flood_is_bounded(flood: fn(&mut BytesMut)) {
    // A small pipe: the server's answers stop fitting after ~16 KiB unless the peer reads.
    const PIPE: usize = 16 * 1024;
    let (client, srv) = tokio::io::duplex(PIPE);
    let s = serve_io(client, srv, ok_handler(), 16, server::config());
    let (mut rd, mut wr) = tokio::io::split(s.addr_io.unwrap());
    let mut hello = BytesMut::new();
    hello.extend_from_slice(frame::PREFACE);
    frame::put_settings(&mut hello, &[]);
    wr.write_all(&hello).await.unwrap();
    // Flood until the server stops reading (it closed) or has taken 400k frames.
    let mut batch = BytesMut::new();
    for _ in 0..1000 {
        flood(&mut batch);
    }
    let batch = batch.freeze();
    for _ in 0..400 {
        match timeout(Duration::from_secs(2), wr.write_all(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let done = timeout(T, s.done)
        .await
        .expect("the server closes")
        .unwrap();
    match done {
        Err(server::Error::Conn(e)) => assert_eq!(e.reason, Reason::ENHANCE_YOUR_CALM),
        other => panic!("expected ENHANCE_YOUR_CALM, got {other:?}"),
    }
    // Everything the server wrote: its SETTINGS, the replies it queued, then GOAWAY.
    let mut reader = FrameReader::new(frame::MAX_FRAME_SIZE_LIMIT, 1 << 20);
    let mut replies = 0usize;
    let mut goaway = None;
    loop {
        match reader.next() {
            Ok(Some(Frame::Ping { ack: true, .. })) => replies += 1,
            Ok(Some(Frame::Settings { ack: true, .. })) => replies += 1,
            Ok(Some(Frame::GoAway { reason, .. })) => goaway = Some(reason),
            Ok(Some(_)) => {}
            Ok(None) => {
                let buf = reader.buf_mut();
                buf.reserve(16 * 1024);
                if timeout(T, rd.read_buf(buf)).await.unwrap().unwrap_or(0) == 0 {
                    break;
                }
            }
            Err(e) => panic!("bad frame from the server: {e}"),
        }
    }
    // GOAWAY is best effort to a peer that does not read (it may be cut off by the close).
    assert!(
        goaway.is_none_or(|r| r == Reason::ENHANCE_YOUR_CALM),
        "{goaway:?}"
    );
    let bound = partgate_http2::conn::MAX_QUEUED_REPLIES as usize + PIPE / 9 + 2;
    assert!(replies <= bound, "{replies} replies queued, bound {bound}");
    assert!(replies > 0);
}

#[tokio::test]
async fn ping_flood_without_reading_gets_enhance_your_calm() {
    control_flood_is_bounded(|b| frame::put_ping(b, false, *b"flooding")).await;
}

#[tokio::test]
async fn settings_flood_without_reading_gets_enhance_your_calm() {
    control_flood_is_bounded(|b| frame::put_settings(b, &[(0x4, 65_535)])).await;
}

#[tokio::test]
async fn answers_pings_and_closes_when_ours_go_unanswered() {
    let mut config = server::config();
    config.keepalive = Some((Duration::from_millis(100), Duration::from_millis(200)));
    let mut s = serve_with(ok_handler(), 16, config);
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    raw.ping(*b"abcdefgh").await;
    let started = tokio::time::Instant::now();
    let mut acked = false;
    let mut pinged = false;
    // Never answer the server's PING: it closes the connection.
    while let Some(f) = raw.next().await {
        match f {
            Frame::Ping { ack: true, payload } => {
                assert_eq!(&payload, b"abcdefgh");
                acked = true;
            }
            Frame::Ping { ack: false, .. } => pinged = true,
            _ => {}
        }
    }
    assert!(acked && pinged);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(timeout(T, s.done).await.unwrap().unwrap().is_err());

    // Answered pings keep it open.
    let mut config = server::config();
    config.keepalive = Some((Duration::from_millis(50), Duration::from_millis(100)));
    let mut s = serve_with(ok_handler(), 16, config);
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < until {
        if let Ok(Some(Frame::Ping {
            ack: false,
            payload,
        })) = tokio::time::timeout_at(until, raw.next()).await
        {
            raw.send(|b| frame::put_ping(b, true, payload)).await;
        }
    }
    assert!(!s.done.is_finished());
    raw.request(1, &[], true).await;
    match raw.next_significant().await {
        Some(Frame::Headers { stream: 1, .. }) => {}
        other => panic!("expected a response, got {other:?}"),
    }
}

/// An ACK counts only with the payload of the PING it answers: a peer that acknowledges
/// blindly, with a payload it guessed, is closed like one that does not answer.
#[tokio::test]
async fn pings_acked_with_another_payload_do_not_keep_the_connection() {
    let mut config = server::config();
    config.keepalive = Some((Duration::from_millis(100), Duration::from_millis(200)));
    let mut s = serve_with(ok_handler(), 16, config);
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    let mut payloads = Vec::new();
    while let Some(f) = raw.next().await {
        if let Frame::Ping {
            ack: false,
            payload,
        } = f
        {
            payloads.push(payload);
            raw.send(|b| frame::put_ping(b, true, *b"partgate")).await;
            raw.send(|b| frame::put_ping(b, true, [0; 8])).await;
        }
    }
    assert!(timeout(T, s.done).await.unwrap().unwrap().is_err());
    assert!(!payloads.is_empty());
    assert!(!payloads.contains(b"partgate"), "{payloads:?}");
}

#[tokio::test]
async fn client_goaway_finishes_open_streams() {
    let (release_tx, release_rx) = watch::channel(false);
    let h = handler(move |_req: Request<Body>| {
        let mut release = release_rx.clone();
        async move {
            let _ = release.wait_for(|r| *r).await;
            let mut resp = Response::new(Body::empty());
            resp.headers_mut()
                .insert("grpc-status", HeaderValue::from_static("0"));
            resp
        }
    });
    let mut s = serve(h);
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    raw.request(1, &[], true).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    raw.send(|b| frame::put_goaway(b, 0, Reason::NO_ERROR, b""))
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    release_tx.send(true).unwrap();
    match raw.next_significant().await {
        Some(Frame::Headers { stream: 1, .. }) => {}
        other => panic!("expected the response, got {other:?}"),
    }
    timeout(T, s.done).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn request_data_must_match_its_content_length() {
    let h = handler(|req: Request<Body>| async move {
        let ok = req.into_body().collect().await.is_ok();
        let mut resp = Response::new(Body::empty());
        let status = if ok { "0" } else { "13" };
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from_static(status));
        resp
    });
    let mut s = serve(h);
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    // Matching: answered.
    raw.request(1, &[("content-length", "5")], false).await;
    raw.send(|b| {
        frame::put_head(b, 5, kind::DATA, flag::END_STREAM, 1);
        b.extend_from_slice(b"12345");
    })
    .await;
    match raw.next_significant().await {
        Some(Frame::Headers { stream: 1, .. }) => {}
        other => panic!("expected the response, got {other:?}"),
    }
    // Short: the stream is reset.
    raw.request(3, &[("content-length", "10")], false).await;
    raw.send(|b| {
        frame::put_head(b, 5, kind::DATA, flag::END_STREAM, 3);
        b.extend_from_slice(b"12345");
    })
    .await;
    expect_reset(&mut raw, 3, Reason::PROTOCOL_ERROR).await;
    // Long: the stream is reset.
    raw.request(5, &[("content-length", "2")], false).await;
    raw.send(|b| {
        frame::put_head(b, 5, kind::DATA, flag::END_STREAM, 5);
        b.extend_from_slice(b"12345");
    })
    .await;
    expect_reset(&mut raw, 5, Reason::PROTOCOL_ERROR).await;
}

/// A DATA frame on `stream` with `payload`.
fn data(b: &mut BytesMut, stream: u32, payload: &[u8], end: bool) {
    let flags = if end { flag::END_STREAM } else { 0 };
    frame::put_head(b, payload.len(), kind::DATA, flags, stream);
    b.extend_from_slice(payload);
}

/// Sends a PING and expects its ACK as the next significant frame: nothing else was answered.
async fn expect_silence(raw: &mut Raw, payload: [u8; 8]) {
    raw.ping(payload).await;
    match raw.next_significant().await {
        Some(Frame::Ping {
            ack: true,
            payload: p,
        }) => assert_eq!(p, payload),
        other => panic!("expected only the PING ACK, got {other:?}"),
    }
}

/// Waits for the response to `stream` to end.
async fn expect_response_end(raw: &mut Raw, stream: u32) {
    loop {
        match raw.next_significant().await {
            Some(Frame::Headers {
                stream: s,
                end_stream: true,
                ..
            }) if s == stream => return,
            Some(Frame::Headers { .. } | Frame::Data { .. }) => {}
            other => panic!("expected the response to {stream}, got {other:?}"),
        }
    }
}

/// RFC 9113 section 5.1: frames on a closed stream are STREAM_CLOSED, except the ones that may
/// still be in flight after our own RST_STREAM, which are ignored (h2spec 5.1/5-12, 6.1/2).
#[tokio::test]
async fn frames_on_closed_streams_follow_section_5_1() {
    let mut s = serve(ok_handler());
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;

    // Stream 1 ends both ways; DATA after it is the client's error: RST_STREAM(STREAM_CLOSED),
    // once (a second one is not answered again).
    raw.request(1, &[], true).await;
    expect_response_end(&mut raw, 1).await;
    raw.send(|b| data(b, 1, b"late", false)).await;
    expect_reset(&mut raw, 1, Reason::STREAM_CLOSED).await;
    raw.send(|b| data(b, 1, b"later", true)).await;
    expect_silence(&mut raw, *b"silence1").await;

    // Stream 3: we reset it (malformed); its DATA and trailers still in flight are ignored.
    raw.headers(3, &[(":method", "POST"), (":path", "/x")], false)
        .await;
    expect_reset(&mut raw, 3, Reason::PROTOCOL_ERROR).await;
    raw.send(|b| data(b, 3, b"in flight", false)).await;
    raw.headers(3, &[("grpc-status", "0")], true).await;
    expect_silence(&mut raw, *b"silence2").await;

    // Stream 5: the client reset it; DATA after its own RST_STREAM is STREAM_CLOSED.
    raw.request(5, &[], false).await;
    raw.send(|b| frame::put_rst_stream(b, 5, Reason::CANCEL))
        .await;
    raw.send(|b| data(b, 5, b"after reset", true)).await;
    expect_reset(&mut raw, 5, Reason::STREAM_CLOSED).await;

    // A content-length the data does not match resets the stream, though the handler never
    // reads the body: too much data, and too little before END_STREAM.
    raw.request(7, &[("content-length", "3")], false).await;
    raw.send(|b| data(b, 7, b"12345", true)).await;
    expect_reset(&mut raw, 7, Reason::PROTOCOL_ERROR).await;
    raw.request(9, &[("content-length", "3")], false).await;
    raw.send(|b| data(b, 9, b"12", true)).await;
    expect_reset(&mut raw, 9, Reason::PROTOCOL_ERROR).await;
    // A request that ends on its HEADERS with a content-length above zero.
    raw.request(11, &[("content-length", "3")], true).await;
    expect_reset(&mut raw, 11, Reason::PROTOCOL_ERROR).await;
    // A matching one is served.
    raw.request(13, &[("content-length", "3")], false).await;
    raw.send(|b| data(b, 13, b"123", true)).await;
    expect_response_end(&mut raw, 13).await;

    // HEADERS on stream 13 again (closed by both ends' END_STREAM): a connection error. (Not
    // stream 1: after our RST_STREAM(STREAM_CLOSED) its frames count as in flight.)
    raw.request(13, &[], true).await;
    raw.expect_goaway(Reason::PROTOCOL_ERROR).await;
}

/// RFC 9113 section 5.1.1: a new stream's id must be above every earlier one; an id the client
/// skipped cannot be opened later (h2spec 5.1.1/2).
#[tokio::test]
async fn a_lower_stream_id_is_a_connection_error() {
    let mut s = serve(ok_handler());
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    raw.request(5, &[], true).await;
    raw.request(3, &[], true).await;
    raw.expect_goaway(Reason::PROTOCOL_ERROR).await;
}

/// The server's end of a connection whose peer sent everything at once: reads hand out the
/// prepared bytes (always ready), writes are kept.
struct Flooded {
    input: Bytes,
    output: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl tokio::io::AsyncRead for Flooded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.input.is_empty() {
            // The peer sent everything and waits.
            return Poll::Pending;
        }
        let n = buf.remaining().min(self.input.len());
        let chunk = self.input.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Flooded {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.output.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Frames in `bytes` (after the server's preface-less output), by kind.
fn frames_in(bytes: &[u8]) -> Vec<Frame> {
    let mut reader = FrameReader::new(frame::MAX_FRAME_SIZE_LIMIT, 1 << 20);
    reader.buf_mut().extend_from_slice(bytes);
    let mut out = Vec::new();
    while let Some(f) = reader.next().unwrap() {
        out.push(f);
    }
    out
}

/// CPU fairness: one turn of a connection's task handles at most `TURN_BUDGET` frames, however
/// many are waiting, and leaves a wake to come back for the rest; meanwhile the other tasks of
/// its worker run. Polled by hand, so the bound is counted, not timed.
#[tokio::test]
async fn one_turn_handles_at_most_its_budget_of_frames() {
    const PINGS: usize = 10_000;
    let mut input = BytesMut::new();
    input.extend_from_slice(frame::PREFACE);
    frame::put_settings(&mut input, &[]);
    for i in 0..PINGS {
        frame::put_ping(&mut input, false, (i as u64).to_be_bytes());
    }
    let output = Arc::new(std::sync::Mutex::new(Vec::new()));
    let io = Flooded {
        input: input.freeze(),
        output: output.clone(),
    };
    let (_tx, rx) = watch::channel(false);
    let mut serving = Box::pin(server::serve_connection(
        io,
        PEER.parse().unwrap(),
        ok_handler(),
        4096,
        server::config(),
        rx,
    ));
    let wakes = Arc::new(Count::default());
    let waker = std::task::Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let acks = |output: &std::sync::Mutex<Vec<u8>>| {
        frames_in(&output.lock().unwrap())
            .into_iter()
            .filter(|f| matches!(f, Frame::Ping { ack: true, .. }))
            .count()
    };
    let mut turns = 0;
    let mut last = 0;
    while last < PINGS {
        let before = wakes.0.load(Ordering::SeqCst);
        assert!(serving.as_mut().poll(&mut cx).is_pending());
        turns += 1;
        let now = acks(&output);
        // (The SETTINGS frame is the turn's first frame.)
        assert!(
            now - last <= partgate_http2::conn::TURN_BUDGET as usize,
            "turn {turns} answered {} pings",
            now - last
        );
        if now < PINGS {
            assert!(
                wakes.0.load(Ordering::SeqCst) > before,
                "turn {turns} left frames waiting without a wake"
            );
        }
        last = now;
        assert!(turns < 100, "no progress: {last} of {PINGS} pings answered");
    }
    assert!(turns >= PINGS / partgate_http2::conn::TURN_BUDGET as usize);
}

#[derive(Default)]
struct Count(AtomicUsize);

impl std::task::Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// CVE-2019-9518: empty DATA frames cost work and deliver nothing; past `MAX_EMPTY_FRAMES` in
/// a row the connection is closed with ENHANCE_YOUR_CALM. Fewer, or ones between real data,
/// are served.
#[tokio::test]
async fn empty_data_frames_in_a_row_get_enhance_your_calm() {
    let max = partgate_http2::conn::MAX_EMPTY_FRAMES;
    let mut s = serve(echo_handler());
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    raw.request(1, &[], false).await;
    // Up to the limit, with data between: fine.
    for _ in 0..3 {
        raw.send(|b| {
            for _ in 0..max {
                data(b, 1, b"", false);
            }
            data(b, 1, &[0, 0, 0, 0, 1, 7], false);
        })
        .await;
    }
    expect_silence(&mut raw, *b"fine....").await;
    raw.send(|b| {
        for _ in 0..=max {
            data(b, 1, b"", false);
        }
    })
    .await;
    raw.expect_goaway(Reason::ENHANCE_YOUR_CALM).await;
}

/// HPACK bomb: one large field inserted into the dynamic table, then header blocks that
/// reference it over and over. A block that decodes somewhat past SETTINGS_MAX_HEADER_LIST_SIZE
/// is refused for its stream alone; one that decodes to more than `BOMB_FACTOR` times the limit
/// closes the connection with ENHANCE_YOUR_CALM at once, its decoding cut short there.
#[tokio::test]
async fn hpack_bomb_gets_enhance_your_calm() {
    let mut s = serve(ok_handler());
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    // The request fields by hand, never indexed (so reusing the bytes inserts nothing):
    // :method POST and :scheme http from the static table, :path and content-type as literals
    // without indexing on static names 4 and 31 (RFC 7541 6.2.2).
    let mut request = vec![0x83, 0x86, 0x04, 10];
    request.extend_from_slice(b"/pkg.Svc/M");
    request.extend_from_slice(&[0x0f, 0x10, 16]);
    request.extend_from_slice(b"application/grpc");
    // One 4,000-byte value, inserted with incremental indexing (then dynamic index 62),
    // written by hand (the encoder does not index large values).
    let mut first = request.clone();
    first.extend_from_slice(&[0x40, 6]);
    first.extend_from_slice(b"x-bomb");
    first.extend_from_slice(&[0x7f, 0xa1, 0x1e]); // 4,000 = 127 + 3,873 (RFC 7541 5.1)
    first.extend(std::iter::repeat_n(b'b', 4000));
    raw.send(|b| frame::put_headers(b, 1, &first, true, 16_384))
        .await;
    expect_response_end(&mut raw, 1).await;
    let block = |refs: usize| {
        let mut block = request.clone();
        block.extend(std::iter::repeat_n(0x80 | 62, refs));
        block
    };
    // 5 references (20 KB decoded, over the 16 KiB limit): this stream is refused, no more.
    let over = block(5);
    raw.send(|b| frame::put_headers(b, 3, &over, true, 16_384))
        .await;
    expect_reset(&mut raw, 3, Reason::PROTOCOL_ERROR).await;
    expect_silence(&mut raw, *b"stillok.").await;
    // 1,000 references (4 MB decoded from 1 KB): a bomb.
    let bomb = block(1000);
    raw.send(|b| frame::put_headers(b, 5, &bomb, true, 16_384))
        .await;
    raw.expect_goaway(Reason::ENHANCE_YOUR_CALM).await;
}

/// Requests that break the rules, one stream after another, are each refused (a stream error);
/// past `STREAM_ERROR_BUDGET` of them the connection is closed with ENHANCE_YOUR_CALM.
#[tokio::test]
async fn a_flood_of_stream_errors_gets_enhance_your_calm() {
    let budget = partgate_http2::conn::STREAM_ERROR_BUDGET;
    let mut s = serve(ok_handler());
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    let bad = raw.block(&[(":method", "POST"), (":path", "/x")]);
    let mut buf = BytesMut::new();
    for i in 0..=budget {
        frame::put_headers(&mut buf, 1 + 2 * i, &bad, true, 16_384);
    }
    raw.io.write_all(&buf).await.unwrap();
    let mut resets = 0;
    loop {
        match raw.next().await {
            Some(Frame::RstStream { reason, .. }) => {
                assert_eq!(reason, Reason::PROTOCOL_ERROR);
                resets += 1;
            }
            Some(Frame::GoAway { reason, .. }) => {
                assert_eq!(reason, Reason::ENHANCE_YOUR_CALM);
                break;
            }
            Some(_) => {}
            None => panic!("closed without GOAWAY after {resets} resets"),
        }
    }
    // (The one over the budget is refused too, then the GOAWAY follows.)
    assert_eq!(resets, budget + 1);
}

/// An idle connection (no stream open, none opened) is closed with GOAWAY(NO_ERROR) after 1 to
/// 1.5 times `idle_timeout`; one with a call open is not, however long the call. (Paused clock.)
#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed_busy_ones_are_not() {
    let idle = Duration::from_secs(4);
    let config = partgate_http2::conn::Config {
        idle_timeout: Some(idle),
        keepalive: None,
        ..server::config()
    };
    // Idle after one call.
    let mut s = serve_with(ok_handler(), 4096, config.clone());
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    raw.request(1, &[], true).await;
    expect_response_end(&mut raw, 1).await;
    let quiet_since = tokio::time::Instant::now();
    loop {
        match raw.next().await {
            Some(Frame::GoAway {
                reason,
                last_stream,
                ..
            }) => {
                assert_eq!((reason, last_stream), (Reason::NO_ERROR, 1));
                break;
            }
            Some(_) => {}
            None => panic!("closed without GOAWAY"),
        }
    }
    let waited = quiet_since.elapsed();
    assert!(
        waited >= idle && waited <= idle * 3 / 2 + Duration::from_millis(100),
        "{waited:?}"
    );
    assert!(raw.next().await.is_none(), "still open after its GOAWAY");

    // A call open for five timeouts keeps its connection; it is answered at the end.
    let mut s = serve_with(echo_handler(), 4096, config);
    let mut raw = Raw::connect(s.addr_io.take().unwrap()).await;
    raw.request(1, &[], false).await;
    match raw.next_significant().await {
        Some(Frame::Headers {
            stream: 1,
            end_stream: false,
            ..
        }) => {}
        other => panic!("expected the response head, got {other:?}"),
    }
    for i in 0..10u64 {
        tokio::time::sleep(idle / 2).await;
        expect_silence(&mut raw, i.to_be_bytes()).await;
    }
    raw.send(|b| data(b, 1, b"", true)).await;
    expect_response_end(&mut raw, 1).await;
}
