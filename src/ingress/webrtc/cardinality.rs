//! Method cardinality for the data-channel bridge: whether a call takes exactly one request
//! message, so the bridge half-closes the downstream request after it (TS SDK unary calls over
//! WebRTC never send `eos`).
//!
//! Receives a method path; hands back [`Requests`]. Sources, in order:
//!
//! 1. built in ([`builtin`]): the compiled descriptor set (`FILE_DESCRIPTOR_SET`: the Viam
//!    subset, reflection, auth, health), then a list of the Viam API's client- and
//!    bidi-streaming methods (every other method of a `viam.*` service is unary or
//!    server-streaming). A static table, read without locks.
//! 2. reflection ([`MethodCache`]), for custom (modular) APIs: the service's file is asked for
//!    with `FileContainingSymbol` (the data-channel server asks through the call stack, so the
//!    gateway's fleet reflection sends it to the part that owns the service), and every method
//!    of the service is learned from its `client_streaming` flag. Answers are cached per
//!    service: at most [`CACHE_ENTRIES`] services, known answers for [`KNOWN_TTL`], failed or
//!    empty lookups for [`UNKNOWN_TTL`]. A TTL rather than invalidation on part reconnect or
//!    reload: the data-channel server does not see the pool, and a module changing a method's
//!    cardinality in place is rare; the TTL bounds how long a stale answer lives. Concurrent
//!    first calls of one service share one lookup; a lookup takes at most [`LOOKUP_TIMEOUT`]
//!    and at most [`MAX_LOOKUPS`] run at once.
//! 3. otherwise streaming: the downstream body is half-closed only on `eos`. Go, Python
//!    (rust-utils) and TS *streams* send `eos`, so only TS unary calls to a custom API whose
//!    part cannot tell its descriptors wait for their deadline. Guessing "single" instead would
//!    silently truncate custom client streams, which is worse.
//!
//! The protos under `partgate/test/` (the counter API) are compiled in for the simulated parts
//! and tests, but they stand in for a module's API: the built-in table leaves them out, so the
//! gateway learns them through reflection exactly as it would a real module's.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::{OnceCell, Semaphore};
use tracing::debug;

/// How many request messages a method takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requests {
    /// Unary or server-streaming: half-close after the first complete message.
    Single,
    /// Client- or bidi-streaming (or unknown): half-close on `eos`.
    Stream,
}

/// Services whose cardinality the cache remembers at most.
pub const CACHE_ENTRIES: usize = 1024;
/// How long a service's learned methods are trusted.
pub const KNOWN_TTL: Duration = Duration::from_secs(300);
/// How long a failed or empty lookup stands before the service is asked about again.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(5);
/// How long one lookup may take (the fleet's own per-part limit is the same).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Lookups running at once; more first calls fall back to streaming without waiting.
pub const MAX_LOOKUPS: usize = 32;

/// Why reflection did not tell a service's methods.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No part answered for the service (not found, no reflection, part down).
    #[error("no part describes service {0:?}")]
    NotFound(String),
    /// The reflection call failed.
    #[error("reflection call failed: {0}")]
    Call(String),
    /// The answer did not decode as file descriptors.
    #[error("undecodable file descriptor: {0}")]
    Decode(String),
    /// The lookup took longer than its limit ([`LOOKUP_TIMEOUT`] by default).
    #[error("lookup took longer than {0:?}")]
    Timeout(Duration),
    /// [`MAX_LOOKUPS`] lookups were already running (not cached: the next call asks again).
    #[error("too many lookups at once")]
    Busy,
}

/// Viam API methods whose requests stream (client- or bidi-streaming), from the `viam.*`
/// protos; every other `viam.*` method takes a single request.
const VIAM_STREAMING_REQUESTS: &[&str] = &[
    "/viam.robot.v1.RobotService/Tunnel",
    "/viam.service.shell.v1.ShellService/Shell",
    "/viam.service.shell.v1.ShellService/CopyFilesToMachine",
    "/viam.service.shell.v1.ShellService/CopyFilesFromMachine",
    "/viam.component.audioout.v1.AudioOutService/PlayStream",
    "/viam.app.datasync.v1.DataSyncService/StreamingDataCaptureUpload",
    "/viam.app.packages.v1.PackageService/CreatePackage",
    "/viam.app.v1.AppService/UploadModuleFile",
    "/viam.app.mltraining.v1.MLTrainingService/UploadCustomTrainingScript",
];

/// Compiled-in files that stand in for modules' APIs (see the module docs).
const MODULE_STAND_INS: &str = "partgate/test/";

/// The built-in cardinality of a method; `None` for a custom API (learn it by reflection).
pub fn builtin(path: &str) -> Option<Requests> {
    if let Some(&client_streaming) = compiled().get(path) {
        return Some(if client_streaming {
            Requests::Stream
        } else {
            Requests::Single
        });
    }
    if VIAM_STREAMING_REQUESTS.contains(&path) {
        return Some(Requests::Stream);
    }
    if path.starts_with("/viam.") {
        return Some(Requests::Single);
    }
    None
}

/// The request cardinality of a method without asking anyone: built in, else streaming.
pub fn requests(path: &str) -> Requests {
    builtin(path).unwrap_or(Requests::Stream)
}

/// Method path -> client_streaming, from the compiled descriptor set (built once).
fn compiled() -> &'static HashMap<String, bool> {
    static TABLE: OnceLock<HashMap<String, bool>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = HashMap::new();
        let Ok(set) = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
        else {
            return table;
        };
        for file in set.file {
            if file.name().starts_with(MODULE_STAND_INS) {
                continue;
            }
            table.extend(
                methods_of(&file).map(|(path, requests)| (path, requests == Requests::Stream)),
            );
        }
        table
    })
}

/// Every method of a file as (`/package.Service/Method`, cardinality).
fn methods_of(file: &prost_types::FileDescriptorProto) -> impl Iterator<Item = (String, Requests)> {
    let package = file.package();
    file.service.iter().flat_map(move |service| {
        let service_name = qualified(package, service.name());
        service.method.iter().map(move |method| {
            let requests = if method.client_streaming() {
                Requests::Stream
            } else {
                Requests::Single
            };
            (format!("/{service_name}/{}", method.name()), requests)
        })
    })
}

fn qualified(package: &str, name: &str) -> String {
    if package.is_empty() {
        name.to_owned()
    } else {
        format!("{package}.{name}")
    }
}

/// `/package.Service/Method` -> (`package.Service`, `Method`).
fn split(path: &str) -> Option<(&str, &str)> {
    let (service, method) = crate::route::split_once_ascii(path.strip_prefix('/')?, b'/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// One service's methods as reflection described them; `None`: unknown (lookup failed).
type Methods = Option<Arc<HashMap<String, Requests>>>;

/// A cached lookup: filled once (concurrent callers wait on the same cell).
struct Slot {
    cell: Arc<OnceCell<(Instant, Methods)>>,
}

impl Slot {
    fn new() -> Self {
        Self {
            cell: Arc::new(OnceCell::new()),
        }
    }

    /// The answer, if filled and still fresh.
    fn fresh(&self, now: Instant) -> Option<&Methods> {
        let (at, methods) = self.cell.get()?;
        let ttl = if methods.is_some() {
            KNOWN_TTL
        } else {
            UNKNOWN_TTL
        };
        (now.saturating_duration_since(*at) < ttl).then_some(methods)
    }

    fn expired(&self, now: Instant) -> bool {
        self.cell.initialized() && self.fresh(now).is_none()
    }
}

/// Custom APIs' cardinality learned from reflection, per service; bounded, with a TTL.
/// Read-mostly: a hit takes a shared read lock and no allocation.
pub struct MethodCache {
    slots: RwLock<HashMap<String, Slot>>,
    capacity: usize,
    lookup_timeout: Duration,
    lookups: Semaphore,
}

impl std::fmt::Debug for MethodCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Default for MethodCache {
    fn default() -> Self {
        Self::new(CACHE_ENTRIES)
    }
}

impl MethodCache {
    /// A cache of at most `capacity` services.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
            lookup_timeout: LOOKUP_TIMEOUT,
            lookups: Semaphore::new(MAX_LOOKUPS),
        }
    }

    /// The same with another limit on one lookup than [`LOOKUP_TIMEOUT`].
    pub fn with_lookup_timeout(mut self, limit: Duration) -> Self {
        self.lookup_timeout = limit;
        self
    }

    /// The process-wide cache the data-channel server uses by default.
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<MethodCache>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(Self::default())).clone()
    }

    /// Services cached (answered, failed or being asked about).
    pub fn len(&self) -> usize {
        self.slots.read().map_or(0, |slots| slots.len())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cardinality without waiting: built in, else a fresh cached answer; `None` when the
    /// method's service must be looked up first.
    pub fn known(&self, path: &str) -> Option<Requests> {
        if let Some(requests) = builtin(path) {
            return Some(requests);
        }
        let (service, method) = split(path)?;
        let slots = self.slots.read().ok()?;
        let methods = slots.get(service)?.fresh(Instant::now())?;
        Some(answer(methods, method))
    }

    /// The cardinality, asking `lookup` (service name -> the encoded `FileDescriptorProto`s
    /// reflection returned) when neither built in nor cached. Falls back to
    /// [`Requests::Stream`] on any failure; never takes much longer than [`LOOKUP_TIMEOUT`].
    pub async fn resolve<F, Fut>(&self, path: &str, lookup: F) -> Requests
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<Vec<Vec<u8>>, LookupError>>,
    {
        if let Some(requests) = self.known(path) {
            return requests;
        }
        let Some((service, method)) = split(path) else {
            return Requests::Stream;
        };
        let Some(cell) = self.slot(service) else {
            return Requests::Stream;
        };
        let filled = cell
            .get_or_try_init(|| async {
                let _permit = self.lookups.try_acquire().map_err(|_| LookupError::Busy)?;
                let limit = self.lookup_timeout;
                let asked = tokio::time::timeout(limit, lookup(service.to_owned()));
                let methods = match asked.await {
                    Ok(Ok(files)) => parse(service, &files),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(LookupError::Timeout(limit)),
                };
                let methods = match methods {
                    Ok(methods) => Some(Arc::new(methods)),
                    Err(e) => {
                        debug!(service, error = %e, "no cardinality from reflection; custom methods of this service half-close on eos");
                        None
                    }
                };
                Ok::<_, LookupError>((Instant::now(), methods))
            })
            .await;
        match filled {
            Ok((_, methods)) => answer(methods, method),
            Err(e) => {
                debug!(service, error = %e, "cardinality lookup skipped");
                Requests::Stream
            }
        }
    }

    /// The cell for `service`: the cached one unless expired, else a new one (evicting expired
    /// entries, then an arbitrary one, when full).
    fn slot(&self, service: &str) -> Option<Arc<OnceCell<(Instant, Methods)>>> {
        let now = Instant::now();
        if let Ok(slots) = self.slots.read()
            && let Some(slot) = slots.get(service)
            && !slot.expired(now)
        {
            return Some(slot.cell.clone());
        }
        let mut slots = self.slots.write().ok()?;
        if let Some(slot) = slots.get(service)
            && !slot.expired(now)
        {
            return Some(slot.cell.clone());
        }
        slots.remove(service);
        if slots.len() >= self.capacity {
            slots.retain(|_, slot| !slot.expired(now));
        }
        if slots.len() >= self.capacity {
            // Prefer dropping a finished answer over a lookup others are waiting on.
            let victim = slots
                .iter()
                .find(|(_, slot)| slot.cell.initialized())
                .or_else(|| slots.iter().next())
                .map(|(name, _)| name.clone());
            if let Some(victim) = victim {
                slots.remove(&victim);
            }
        }
        let slot = Slot::new();
        let cell = slot.cell.clone();
        slots.insert(service.to_owned(), slot);
        Some(cell)
    }
}

fn answer(methods: &Methods, method: &str) -> Requests {
    methods
        .as_ref()
        .and_then(|m| m.get(method).copied())
        .unwrap_or(Requests::Stream)
}

/// `service`'s methods from the files reflection returned (the service's own file comes
/// first; its dependencies may follow).
fn parse(service: &str, files: &[Vec<u8>]) -> Result<HashMap<String, Requests>, LookupError> {
    let prefix = format!("/{service}/");
    for raw in files {
        let file = prost_types::FileDescriptorProto::decode(raw.as_slice())
            .map_err(|e| LookupError::Decode(e.to_string()))?;
        let methods: HashMap<String, Requests> = methods_of(&file)
            .filter_map(|(path, requests)| {
                path.strip_prefix(&prefix)
                    .map(|method| (method.to_owned(), requests))
            })
            .collect();
        if !methods.is_empty() {
            return Ok(methods);
        }
    }
    Err(LookupError::NotFound(service.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const GET: &str = "/acme.component.counter.v1.CounterService/Get";
    const ADD: &str = "/acme.component.counter.v1.CounterService/Add";
    const COUNTER: &str = "acme.component.counter.v1.CounterService";

    /// The counter's file as a part's reflection returns it.
    fn counter_files() -> Vec<Vec<u8>> {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        set.file
            .into_iter()
            .filter(|f| f.name().ends_with("counter.proto"))
            .map(|f| f.encode_to_vec())
            .collect()
    }

    #[test]
    fn builtin_methods_use_their_descriptor() {
        let single = [
            "/viam.component.motor.v1.MotorService/SetPower",
            "/viam.component.testecho.v1.TestEchoService/EchoMultiple",
            "/viam.robot.v1.RobotService/ResourceNames",
        ];
        for path in single {
            assert_eq!(builtin(path), Some(Requests::Single), "{path}");
        }
        let stream = [
            "/viam.component.testecho.v1.TestEchoService/EchoBiDi",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ];
        for path in stream {
            assert_eq!(builtin(path), Some(Requests::Stream), "{path}");
        }
    }

    #[test]
    fn viam_api_defaults_to_single_and_custom_apis_are_not_built_in() {
        assert_eq!(
            builtin("/viam.component.arm.v1.ArmService/MoveToPosition"),
            Some(Requests::Single)
        );
        assert_eq!(
            builtin("/viam.service.shell.v1.ShellService/Shell"),
            Some(Requests::Stream)
        );
        // The counter stands in for a module: learned by reflection, like any custom API.
        assert_eq!(builtin(GET), None);
        assert_eq!(builtin("/acme.thing.v1.ThingService/Whatever"), None);
        assert_eq!(requests(GET), Requests::Stream);
    }

    #[test]
    fn parse_finds_the_service_methods() {
        let methods = parse(COUNTER, &counter_files()).unwrap_or_default();
        assert_eq!(methods.get("Get"), Some(&Requests::Single));
        assert_eq!(methods.get("Watch"), Some(&Requests::Single));
        assert_eq!(methods.get("Add"), Some(&Requests::Stream));
        assert_eq!(methods.get("Chat"), Some(&Requests::Stream));
        assert!(matches!(
            parse("acme.other.v1.Other", &counter_files()),
            Err(LookupError::NotFound(_))
        ));
        assert!(matches!(
            parse(COUNTER, &[vec![0xff, 0xff]]),
            Err(LookupError::Decode(_))
        ));
    }

    #[tokio::test]
    async fn one_lookup_per_service_then_cached() {
        let cache = Arc::new(MethodCache::default());
        let asked = Arc::new(AtomicUsize::new(0));
        assert_eq!(cache.known(GET), None);
        let calls = (0..8).map(|i| {
            let cache = cache.clone();
            let asked = asked.clone();
            async move {
                let path = if i % 2 == 0 { GET } else { ADD };
                cache
                    .resolve(path, |service| async move {
                        assert_eq!(service, COUNTER);
                        asked.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(counter_files())
                    })
                    .await
            }
        });
        let answers = futures_util::future::join_all(calls).await;
        for (i, got) in answers.into_iter().enumerate() {
            let want = if i % 2 == 0 {
                Requests::Single
            } else {
                Requests::Stream
            };
            assert_eq!(got, want);
        }
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "concurrent first calls share one lookup"
        );
        assert_eq!(cache.known(GET), Some(Requests::Single));
        assert_eq!(cache.known(ADD), Some(Requests::Stream));
        // A method the service does not have: streaming.
        assert_eq!(
            cache.known("/acme.component.counter.v1.CounterService/Nope"),
            Some(Requests::Stream)
        );
    }

    #[tokio::test]
    async fn failures_fall_back_to_stream_and_are_remembered_briefly() {
        let cache = MethodCache::default();
        let got = cache
            .resolve(GET, |s| async move { Err(LookupError::NotFound(s)) })
            .await;
        assert_eq!(got, Requests::Stream);
        // Remembered: no second lookup within UNKNOWN_TTL.
        assert_eq!(cache.known(GET), Some(Requests::Stream));
        let got = cache
            .resolve(GET, |_| async { panic!("asked again") })
            .await;
        assert_eq!(got, Requests::Stream);
        // Malformed paths never look anything up.
        let got = cache.resolve("nope", |_| async { panic!("asked") }).await;
        assert_eq!(got, Requests::Stream);
    }

    #[tokio::test]
    async fn a_slow_lookup_is_cut_at_the_limit() {
        let limit = Duration::from_millis(100);
        let cache = MethodCache::default().with_lookup_timeout(limit);
        let start = Instant::now();
        let got = cache
            .resolve(GET, |_| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(counter_files())
            })
            .await;
        assert_eq!(got, Requests::Stream);
        let took = start.elapsed();
        assert!(took >= limit && took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let cache = MethodCache::new(16);
        for i in 0..100 {
            let path = format!("/acme.s{i}.v1.S/M");
            cache
                .resolve(&path, |s| async move { Err(LookupError::NotFound(s)) })
                .await;
            assert!(cache.len() <= 16, "{}", cache.len());
        }
        assert_eq!(cache.len(), 16);
        // The newest answer survived the evictions.
        assert_eq!(cache.known("/acme.s99.v1.S/M"), Some(Requests::Stream));
    }
}
