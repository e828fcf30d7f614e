//! Load shapes only the comparison has: many connections, paced clients, and calls spread over
//! a fleet of parts (the part also in the `x-part` header, for the peers that route by header).
//! The shared tasks are in `benches/common/load.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use partgate::proto::viam::component::motor::v1 as motor;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::Res;
use crate::load::{
    CALL_TIMEOUT, MAX_OPS_PER_TASK, TaskStats, Window, connect, is_powered, status_text,
};

/// Connects `n` channels to `addr`, at most 64 handshakes at a time.
pub async fn connect_many(addr: SocketAddr, n: usize) -> Res<Vec<Channel>> {
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let gate = gate.clone();
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            (i, connect(addr).await)
        });
    }
    let mut out: Vec<Option<Channel>> = vec![None; n];
    while let Some(joined) = set.join_next().await {
        let (i, ch) = joined?;
        out[i] = Some(ch?);
    }
    Ok(out.into_iter().flatten().collect())
}

/// How a call names its resource: `bench:motor1` / `p7:motor1` through partgate, plain
/// `motor1` elsewhere; fleet calls also carry the part in a header for the peers.
#[derive(Debug, Clone)]
pub struct Naming {
    /// partgate: names carry the part prefix.
    pub prefixed: bool,
}

impl Naming {
    pub fn single(&self, resource: &str) -> String {
        if self.prefixed {
            format!("bench:{resource}")
        } else {
            resource.to_owned()
        }
    }

    pub fn fleet(&self, part: &str, resource: &str) -> String {
        if self.prefixed {
            format!("{part}:{resource}")
        } else {
            resource.to_owned()
        }
    }
}

/// One IsPowered call, checked.
pub async fn call_once(ch: Channel, name: &str, part: Option<&str>) -> Result<(), String> {
    let mut client = motor::motor_service_client::MotorServiceClient::new(ch);
    match tokio::time::timeout(CALL_TIMEOUT, client.is_powered(is_powered(name, part))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status_text(&status)),
        Err(_) => Err("IsPowered timed out".into()),
    }
}

/// Back-to-back IsPowered calls to the fleet's parts in turn (starting at part `first`), with the
/// part also in the `x-part` header. `channels` has one channel per part (direct) or a few to
/// one proxy (used in turn by task index).
pub async fn fleet_task(
    channels: Arc<Vec<Channel>>,
    per_part: bool,
    naming: Naming,
    task: usize,
    parts: usize,
    w: Window,
) -> TaskStats {
    let mut st = TaskStats::default();
    let names: Vec<(String, String)> = (0..parts)
        .map(|i| {
            let part = crate::peers::part_name(i);
            (naming.fleet(&part, "motor1"), part)
        })
        .collect();
    let Some(first) = channels.first() else {
        st.error("no channel");
        return st;
    };
    let mut shared = motor::motor_service_client::MotorServiceClient::new(
        channels.get(task % channels.len()).unwrap_or(first).clone(),
    );
    for k in 0..w.limit.min(MAX_OPS_PER_TASK) {
        let started = Instant::now();
        if started >= w.end || st.give_up() || parts == 0 {
            break;
        }
        let i = (task + k as usize * 7) % parts;
        let (name, part) = &names[i];
        let req = is_powered(name, Some(part));
        let call = async {
            if per_part {
                let ch = channels.get(i).unwrap_or(first).clone();
                motor::motor_service_client::MotorServiceClient::new(ch)
                    .is_powered(req)
                    .await
            } else {
                shared.is_powered(req).await
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => st.done(&w, Some(started), Instant::now()),
            Ok(Err(status)) => st.error(format!("{part}: {}", status_text(&status))),
            Err(_) => st.error("IsPowered timed out"),
        }
    }
    st
}

/// One client of many: an IsPowered call every `period`, the first at `first`.
pub async fn paced_task(
    ch: Channel,
    name: String,
    first: Instant,
    period: Duration,
    w: Window,
) -> TaskStats {
    let mut client = motor::motor_service_client::MotorServiceClient::new(ch);
    let mut st = TaskStats::default();
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for _ in 0..w.limit {
        let at = tick.tick().await;
        if at >= w.end || st.give_up() {
            break;
        }
        let started = Instant::now();
        match tokio::time::timeout(CALL_TIMEOUT, client.is_powered(is_powered(&name, None))).await {
            Ok(Ok(_)) => st.done(&w, Some(started), Instant::now()),
            Ok(Err(status)) => st.error(status_text(&status)),
            Err(_) => st.error("IsPowered timed out"),
        }
    }
    st
}
