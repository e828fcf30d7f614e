//! Live reconfiguration: SIGHUP, a changed config file or [`crate::Gateway::reload`] apply new
//! settings to the running gateway without a restart.
//!
//! Receives validated [`Settings`] (or a config file to load and validate); hands the part
//! changes to the pool (added parts dialed, removed ones drained, changed ones re-dialed,
//! unchanged ones untouched), the call limits to the call stack and readiness rules to the
//! operations endpoints. An invalid config is rejected with its reason and the running one
//! stays. Settings that need a new socket or a new auth stage are logged and kept until restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{Config, Settings};
use crate::error::ConfigError;
use crate::metrics::Metrics;
use crate::ops::admin::{Admin, ReloadStatus};
use crate::ops::logs::List;
use crate::stack::CallStack;
use crate::upstream::pool::{Pool, PoolChanges};

/// How long a reload waits for the parts it dialed to answer their first check.
const SETTLE_GRACE: Duration = Duration::from_secs(5);

/// Why a reload was rejected (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config could not be read, parsed or validated.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new settings could not be applied (for example, a TLS setting for parts).
    #[error("cannot apply the new configuration: {0}")]
    Apply(String),
}

/// What a successful reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Part changes.
    pub changes: PoolChanges,
    /// Settings that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Applies new settings to a running gateway, one reload at a time.
pub struct Reloader {
    current: Mutex<Settings>,
    pool: Arc<Pool>,
    stack: CallStack,
    admin: Arc<Admin>,
    metrics: Arc<Metrics>,
}

/// Polls a config file's size, modification time and contents.
#[derive(Debug)]
struct FileWatch {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    contents: Option<String>,
}

// === impl Reloader ===

impl Reloader {
    /// A reloader for a gateway started with `settings`.
    pub fn new(settings: Settings, pool: Arc<Pool>, stack: CallStack, admin: Arc<Admin>) -> Self {
        let metrics = pool.metrics().clone();
        Self {
            current: Mutex::new(settings),
            pool,
            stack,
            admin,
            metrics,
        }
    }

    /// Applies `new`: see the module docs. Waits (a bounded time) for new parts' first check.
    pub async fn apply(&self, mut new: Settings) -> Result<ReloadOutcome, ReloadError> {
        let mut current = self.current.lock().await;
        let needs_restart = restart_only_changes(&current, &new);
        for setting in &needs_restart {
            warn!(
                setting,
                "setting changed in the config; it takes effect only after a restart"
            );
        }
        keep_restart_only(&current, &mut new);
        let redial_all = current.connect_timeout != new.connect_timeout
            || current.keepalive_interval != new.keepalive_interval
            || current.keepalive_timeout != new.keepalive_timeout
            || current.parts_ca_pem != new.parts_ca_pem;
        let changes = self
            .pool
            .apply(&new, redial_all, current.drain_timeout)
            .map_err(|e| self.rejected(ReloadError::Apply(e.to_string())))?;
        self.stack.apply(&new);
        runtime::workers::set_idle_spin(new.idle_spin);
        runtime::workers::set_answer_spin(new.answer_spin);
        self.admin.apply(&new);
        self.metrics.watch_certificates(&new);
        let settle = new.connect_timeout + SETTLE_GRACE;
        *current = new;
        drop(current);
        self.applied(&changes);
        self.settle(&changes, settle).await;
        Ok(ReloadOutcome {
            changes,
            needs_restart,
        })
    }

    /// Logs and records an applied reload.
    fn applied(&self, changes: &PoolChanges) {
        let unchanged =
            changes.added.is_empty() && changes.removed.is_empty() && changes.redialed.is_empty();
        info!(
            added = %List(&changes.added),
            removed = %List(&changes.removed),
            redialed = %List(&changes.redialed),
            kept = changes.kept.len(),
            "configuration reloaded"
        );
        self.metrics
            .reload_result(true, if unchanged { "unchanged" } else { "applied" });
        self.admin.record_reload(ReloadStatus {
            at: SystemTime::now(),
            error: None,
            changes: changes.clone(),
        });
    }

    /// Waits (at most `limit`) for the parts a reload dialed to answer their first check, so
    /// their resources are listed when the reload returns.
    async fn settle(&self, changes: &PoolChanges, limit: Duration) {
        let dialed: Vec<String> = changes
            .added
            .iter()
            .chain(&changes.redialed)
            .cloned()
            .collect();
        if dialed.is_empty() {
            return;
        }
        let pending = self.pool.wait_settled_named(&dialed, limit).await;
        if !pending.is_empty() {
            warn!(parts = %List(&pending), "reloaded parts still connecting");
        }
    }

    /// Loads, validates and applies a config file; a bad one is logged and counted, and the
    /// running configuration stays.
    pub async fn apply_file(&self, path: &Path) -> Result<ReloadOutcome, ReloadError> {
        let loaded = Config::load(path).and_then(|config| config.validate());
        match loaded {
            Ok(settings) => self.apply(settings).await,
            Err(e) => Err(self.rejected(ReloadError::Config(e))),
        }
    }

    /// Logs and records a rejected reload, handing the error back.
    fn rejected(&self, err: ReloadError) -> ReloadError {
        warn!(error = %err, "configuration reload rejected; the running configuration stays");
        let reason = match &err {
            ReloadError::Config(ConfigError::Read { .. }) => "unreadable",
            ReloadError::Config(_) => "invalid",
            ReloadError::Apply(_) => "failed",
        };
        self.metrics.reload_result(false, reason);
        self.admin.record_reload(ReloadStatus {
            at: SystemTime::now(),
            error: Some(err.to_string()),
            changes: PoolChanges::default(),
        });
        err
    }

    /// Polls `path` every `every` and applies it whenever its contents change.
    pub fn watch(self: &Arc<Self>, path: PathBuf, every: Duration) -> JoinHandle<()> {
        let reloader = self.clone();
        // The baseline is taken now, so a change right after this call is not missed.
        let mut file = FileWatch::new(path);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if file.changed() {
                    info!(path = %file.path.display(), "config file changed; reloading");
                    let _ = reloader.apply_file(&file.path).await;
                }
            }
        })
    }
}

/// Names of the settings that differ and cannot change while running.
fn restart_only_changes(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.bind != new.bind {
        changed.push("network.bind_address");
    }
    if old.admin != new.admin {
        changed.push("gateway.admin_address");
    }
    if old.drain_timeout != new.drain_timeout {
        changed.push("gateway.drain_timeout");
    }
    if old.worker_threads != new.worker_threads {
        changed.push("gateway.worker_threads");
    }
    if old.tls != new.tls {
        changed.push("network.tls_cert_file/tls_key_file");
    }
    // The auth stage is built once; its settings compare by their (secret-free) debug form.
    if format!("{:?}", old.auth) != format!("{:?}", new.auth) {
        changed.push("auth");
    }
    // The WebRTC endpoint and signaling are built once, like auth (secret-free debug form).
    if format!("{:?}", old.webrtc) != format!("{:?}", new.webrtc) {
        changed.push("gateway.webrtc");
    }
    changed
}

/// Carries the running values of restart-only settings into `new`, so later reloads compare
/// against what actually runs.
fn keep_restart_only(old: &Settings, new: &mut Settings) {
    new.bind = old.bind;
    new.bind_text.clone_from(&old.bind_text);
    new.admin = old.admin;
    new.drain_timeout = old.drain_timeout;
    new.worker_threads = old.worker_threads;
    new.tls.clone_from(&old.tls);
    new.auth.clone_from(&old.auth);
    new.webrtc.clone_from(&old.webrtc);
}

// === impl FileWatch ===

impl FileWatch {
    /// Starts from the file as it is now (the config the gateway was started with).
    fn new(path: PathBuf) -> Self {
        let stamp = stamp(&path);
        let contents = std::fs::read_to_string(&path).ok();
        Self {
            path,
            stamp,
            contents,
        }
    }

    /// Whether the file's contents differ from the last time (a touch alone is no change).
    fn changed(&mut self) -> bool {
        let now = stamp(&self.path);
        if now == self.stamp {
            return false;
        }
        self.stamp = now;
        let contents = std::fs::read_to_string(&self.path).ok();
        if contents.is_none() || contents == self.contents {
            return false;
        }
        self.contents = contents;
        true
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_watch_sees_content_changes_not_touches() {
        let dir = std::env::temp_dir().join(format!("partgate-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.json");
        std::fs::write(&path, "{}").unwrap();
        let mut watch = FileWatch::new(path.clone());
        assert!(!watch.changed());
        std::fs::write(&path, "{}").unwrap();
        // Same contents (only the time may differ): no reload.
        assert!(!watch.changed());
        std::fs::write(&path, r#"{"remotes": []}"#).unwrap();
        assert!(watch.changed());
        assert!(!watch.changed());
        std::fs::remove_file(&path).unwrap();
        assert!(!watch.changed());
        std::fs::write(&path, "{ }").unwrap();
        assert!(watch.changed());
    }
}
