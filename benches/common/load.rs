//! The load both benches generate (`benches/gateway.rs` against partgate, `benches/compare.rs`
//! against partgate and its peers): tonic clients, one task per concurrent caller, every call and
//! message checked and bounded by a timeout; only completions inside the measured window count.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use partgate::proto::acme::component::counter::v1 as counter;
use partgate::proto::viam::component::motor::v1 as motor;
use partgate::proto::viam::component::testecho::v1 as echo;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// The header fleet calls carry their part in, for proxies that route by header (the peers).
pub const PART_HEADER: &str = "x-part";

/// Payload of the large unary case.
pub const ECHO_BYTES: usize = 1 << 20;
/// Messages per server-streaming call.
pub const WATCH_COUNT: i32 = 100;
/// Any single call or message wait longer than this is an error (and ends that call).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-task bounds, so that no loop can run away whatever the clock does.
pub const MAX_OPS_PER_TASK: u64 = 20_000_000;
const MAX_SAMPLES_PER_TASK: usize = 1 << 20;
const MAX_ERRORS_PER_TASK: u64 = 50;

/// One h2c channel with the windows the gateway uses towards parts.
pub async fn connect(
    addr: SocketAddr,
) -> Result<Channel, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .connect()
        .await?)
}

/// The measured part of a run: load starts before `start` (warm-up) and stops at `end`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
    /// Operations (calls, or Chat messages) per task at most: [`MAX_OPS_PER_TASK`], or exactly
    /// N for the instruction-count modes of the gateway bench.
    pub limit: u64,
}

impl Window {
    pub fn new(start: Instant, end: Instant) -> Self {
        Self {
            start,
            end,
            limit: MAX_OPS_PER_TASK,
        }
    }

    pub fn contains(&self, t: Instant) -> bool {
        t >= self.start && t <= self.end
    }
}

#[derive(Debug, Default)]
pub struct TaskStats {
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latencies_ns: Vec<u64>,
}

impl TaskStats {
    pub fn done(&mut self, w: &Window, started: Option<Instant>, finished: Instant) {
        if !w.contains(finished) {
            return;
        }
        self.ops += 1;
        if let Some(started) = started {
            self.sample(w, started, finished);
        }
    }

    fn sample(&mut self, w: &Window, started: Instant, finished: Instant) {
        if w.contains(finished) && self.latencies_ns.len() < MAX_SAMPLES_PER_TASK {
            let ns = finished.saturating_duration_since(started).as_nanos();
            self.latencies_ns
                .push(u64::try_from(ns).unwrap_or(u64::MAX));
        }
    }

    pub fn error(&mut self, what: impl Into<String>) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what.into());
        }
    }

    pub fn give_up(&self) -> bool {
        self.errors >= MAX_ERRORS_PER_TASK
    }

    pub fn merge(&mut self, other: TaskStats) {
        self.ops += other.ops;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies_ns.extend(other.latencies_ns);
    }
}

pub fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

pub fn is_powered(name: &str, part: Option<&str>) -> tonic::Request<motor::IsPoweredRequest> {
    let mut req = tonic::Request::new(motor::IsPoweredRequest {
        name: name.to_owned(),
        extra: None,
    });
    if let Some(part) = part
        && let Ok(v) = MetadataValue::from_str(part)
    {
        req.metadata_mut().insert(PART_HEADER, v);
    }
    req
}

/// Back-to-back IsPowered calls on one channel.
pub async fn unary_task(ch: Channel, name: String, w: Window) -> TaskStats {
    let mut client = motor::motor_service_client::MotorServiceClient::new(ch);
    let mut st = TaskStats::default();
    for _ in 0..w.limit {
        let started = Instant::now();
        if started >= w.end || st.give_up() {
            break;
        }
        match tokio::time::timeout(CALL_TIMEOUT, client.is_powered(is_powered(&name, None))).await {
            Ok(Ok(_)) => st.done(&w, Some(started), Instant::now()),
            Ok(Err(status)) => st.error(status_text(&status)),
            Err(_) => st.error("IsPowered timed out"),
        }
    }
    st
}

/// Back-to-back 1 MiB echoes, each answer checked for length.
pub async fn echo_task(ch: Channel, name: String, payload: Arc<String>, w: Window) -> TaskStats {
    let mut client = echo::test_echo_service_client::TestEchoServiceClient::new(ch)
        .max_decoding_message_size(4 * ECHO_BYTES)
        .max_encoding_message_size(4 * ECHO_BYTES);
    let mut st = TaskStats::default();
    for _ in 0..w.limit {
        let started = Instant::now();
        if started >= w.end || st.give_up() {
            break;
        }
        let req = echo::EchoRequest {
            name: name.clone(),
            message: String::clone(&payload),
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.echo(req)).await {
            Ok(Ok(resp)) if resp.get_ref().message.len() == payload.len() => {
                st.done(&w, Some(started), Instant::now());
            }
            Ok(Ok(resp)) => st.error(format!(
                "echo returned {} bytes, sent {}",
                resp.get_ref().message.len(),
                payload.len()
            )),
            Ok(Err(status)) => st.error(status_text(&status)),
            Err(_) => st.error("Echo timed out"),
        }
    }
    st
}

/// Server-streaming calls of WATCH_COUNT messages; ops are messages, latency is per call.
pub async fn watch_task(ch: Channel, name: String, w: Window) -> TaskStats {
    let mut client = counter::counter_service_client::CounterServiceClient::new(ch);
    let mut st = TaskStats::default();
    for _ in 0..w.limit {
        let started = Instant::now();
        if started >= w.end || st.give_up() {
            break;
        }
        let req = counter::WatchRequest {
            name: name.clone(),
            count: WATCH_COUNT,
        };
        let mut stream = match tokio::time::timeout(CALL_TIMEOUT, client.watch(req)).await {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => {
                st.error(status_text(&status));
                continue;
            }
            Err(_) => {
                st.error("Watch timed out");
                continue;
            }
        };
        let mut received = 0;
        let mut ended = false;
        let mut failed = false;
        // At most WATCH_COUNT messages and the end of stream; anything beyond is an error.
        for _ in 0..=WATCH_COUNT {
            match tokio::time::timeout(CALL_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(_))) => {
                    received += 1;
                    st.done(&w, None, Instant::now());
                }
                Ok(Ok(None)) => {
                    ended = true;
                    break;
                }
                Ok(Err(status)) => {
                    st.error(status_text(&status));
                    failed = true;
                    break;
                }
                Err(_) => {
                    st.error("Watch message timed out");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            continue;
        }
        if received != WATCH_COUNT || !ended {
            st.error(format!(
                "Watch returned {received} of {WATCH_COUNT} messages"
            ));
        } else {
            st.sample(&w, started, Instant::now());
        }
    }
    st
}

/// One long-lived bidi stream, ping-pong: send a message, wait for its echo, send the next.
pub async fn chat_task(ch: Channel, name: String, w: Window) -> TaskStats {
    let mut client = counter::counter_service_client::CounterServiceClient::new(ch);
    let mut st = TaskStats::default();
    let message = || counter::ChatRequest {
        name: name.clone(),
        text: "ping".into(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    // partgate routes a stream on its first message, and tonic waits for response headers
    // before handing back the stream: queue the first message before making the call.
    if tx.send(message()).await.is_err() {
        st.error("request stream closed");
        return st;
    }
    let mut sent_at = Instant::now();
    let call = client.chat(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut inbound = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(resp)) => resp.into_inner(),
        Ok(Err(status)) => {
            st.error(status_text(&status));
            return st;
        }
        Err(_) => {
            st.error("Chat did not start");
            return st;
        }
    };
    for _ in 0..w.limit {
        match tokio::time::timeout(CALL_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(_))) => st.done(&w, Some(sent_at), Instant::now()),
            Ok(Ok(None)) => {
                st.error("Chat ended before the client half-closed");
                break;
            }
            Ok(Err(status)) => {
                st.error(status_text(&status));
                break;
            }
            Err(_) => {
                st.error("Chat reply timed out");
                break;
            }
        }
        sent_at = Instant::now();
        if sent_at >= w.end || st.ops >= w.limit {
            break;
        }
        if tx.send(message()).await.is_err() {
            st.error("request stream closed");
            break;
        }
    }
    // Half-close and let the stream end cleanly (bounded in time and count).
    drop(tx);
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        for _ in 0..16 {
            match inbound.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(status) => return Err(status_text(&status)),
            }
        }
        Err("Chat kept sending after half-close".to_owned())
    })
    .await;
    match drained {
        Ok(Ok(())) => {}
        Ok(Err(e)) => st.error(e),
        Err(_) => st.error("Chat did not end after half-close"),
    }
    st
}
/// Spawns `n` load tasks, `make(i)` for task `i`.
pub fn spawn_tasks<F, Fut>(n: usize, mut make: F) -> Vec<tokio::task::JoinHandle<TaskStats>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = TaskStats> + Send + 'static,
{
    (0..n).map(|i| tokio::spawn(make(i))).collect()
}

/// Joins the load tasks, each by `grace` at the latest (then aborted and counted as an error),
/// and merges their stats with the latencies sorted.
pub async fn join_tasks(
    handles: Vec<tokio::task::JoinHandle<TaskStats>>,
    grace: Duration,
) -> TaskStats {
    let mut total = TaskStats::default();
    let join_limit = Instant::now() + grace;
    for handle in handles {
        let abort = handle.abort_handle();
        match tokio::time::timeout_at(join_limit, handle).await {
            Ok(Ok(stats)) => total.merge(stats),
            Ok(Err(e)) => total.error(format!("load task failed: {e}")),
            Err(_) => {
                abort.abort();
                total.error("load task did not stop in time");
            }
        }
    }
    total.latencies_ns.sort_unstable();
    total
}

/// The `q` quantile of sorted nanosecond latencies, in microseconds (NaN when empty).
pub fn percentile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}
