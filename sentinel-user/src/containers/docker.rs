//! The one connection to the Docker Engine API, shared by container naming, healing and
//! `sentinel check`: one endpoint (`[docker] host`, else `$DOCKER_HOST`, else the local
//! socket), one client with the negotiated API version, one watcher task and one state.
//!
//! The watcher connects (every step bounded by the API time-out), lists every container,
//! follows the events stream (re-listing on every container event, so naming depends on no
//! event kind), pings the engine every [`PING_EVERY`] (a SIGSTOPped dockerd keeps the stream
//! open and silent, D3) and, on any failure, says so once per transition, waits (capped
//! exponential back-off) and starts over; after every reconnect the full list is read again,
//! so events missed while Docker was away are recovered. Healing gets the connection and the
//! container events through a bounded channel ([`WatchMsg`]); naming reads the shared
//! [`DockerView`]. Docker being unreachable is a visible state, never a crash: ids from cgroup
//! paths stay exact, healing turns monitor-only.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bollard::{
    Docker,
    errors::Error as BollardError,
    models::ContainerSummary,
    query_parameters::{EventsOptions, ListContainersOptions},
};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{layout::Runtime, roster::Poke};
use crate::sanitize::{for_log, truncate};

pub use crate::model::DockerState;

/// The engine's socket when neither `[docker] host` nor `$DOCKER_HOST` says otherwise.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Oldest Engine API sentinel accepts (Docker 17.06). Debian 12's engine 20.10 speaks 1.41;
/// bollard 0.21 starts at 1.53 and `negotiate_version` lowers it to the server's.
pub const MIN_API: (u16, u16) = (1, 30);

/// How often the watcher pings a connected engine: a hung (SIGSTOPped) dockerd keeps the event
/// stream open and silent, so only a bounded ping notices it (D3).
pub const PING_EVERY: Duration = Duration::from_secs(2);

/// Longest Docker message kept in an error.
const MAX_MESSAGE: usize = 1024;

/// Podman's rootful API socket (`podman.socket`, or `podman system service`).
pub const PODMAN_DEFAULT_HOST: &str = "unix:///run/podman/podman.sock";

/// Podman's endpoint: `CONTAINER_HOST` (the variable podman's own remote client reads), else
/// the rootful socket. Podman serves Docker's API there too, which bollard speaks.
pub fn podman_endpoint() -> String {
    std::env::var("CONTAINER_HOST")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| PODMAN_DEFAULT_HOST.to_string())
}

/// Where to connect: `[docker] host`, then `DOCKER_HOST`, then the default unix socket.
pub fn endpoint(host: Option<&str>) -> String {
    host.map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_HOST.to_string())
}

/// How the one connection is made and kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `[docker] host` (`unix:///path`, `tcp://host:port`); `None`: `$DOCKER_HOST`, then
    /// [`DEFAULT_HOST`].
    pub host: Option<String>,
    /// Bound on every call that is not an action (connect, list, inspect, ping).
    pub api_timeout: Duration,
    /// bollard's own bound on every request, actions included: above the action time-out, so
    /// that sentinel's bounds are the ones that fire and are audited as such.
    pub request_timeout: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl Settings {
    /// From the whole configuration: `[docker] host` and the `[heal]` time-outs.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let h = &cfg.heal;
        Self {
            host: cfg.docker.host.clone(),
            api_timeout: h.api_timeout(),
            request_timeout: h.action_timeout().max(h.api_timeout()) + Duration::from_secs(5),
            reconnect_initial: crate::heal::config::secs(h.reconnect_initial_secs),
            reconnect_max: crate::heal::config::secs(h.reconnect_max_secs),
        }
    }

    pub fn endpoint(&self) -> String {
        endpoint(self.host.as_deref())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_config(&crate::config::Config::default())
    }
}

/// Errors a caller branches on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DockerError {
    #[error("docker unreachable at {endpoint}: {message}")]
    DockerUnreachable { endpoint: String, message: String },
    #[error("container gone: {message}")]
    ContainerGone { message: String },
    #[error("denied by the Docker API endpoint: {method} {path}: {message}")]
    DeniedByApi {
        method: &'static str,
        path: String,
        message: String,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("docker API error {status}: {message}")]
    Api { status: u16, message: String },
    #[error(
        "docker API version {server} is older than the oldest supported {}.{} (client offered {client})",
        MIN_API.0, MIN_API.1
    )]
    VersionUnsupported { client: String, server: String },
}

impl DockerError {
    /// Audit reason (snake_case, stable).
    pub fn kind(&self) -> &'static str {
        match self {
            DockerError::DockerUnreachable { .. } => "docker_unreachable",
            DockerError::ContainerGone { .. } => "container_gone",
            DockerError::DeniedByApi { .. } => "denied_by_docker_api",
            DockerError::Timeout(_) => "timeout",
            DockerError::Api { .. } => "api_error",
            DockerError::VersionUnsupported { .. } => "docker_api_version",
        }
    }

    pub(crate) fn from_bollard(
        e: BollardError,
        method: &'static str,
        path: &str,
        endpoint: &str,
    ) -> Self {
        match e {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => {
                let message = truncate(&message, MAX_MESSAGE);
                // Docker 20.10 answers a restart of a container removed meanwhile with 500
                // "... is marked for removal and cannot be started" (D4): that is gone too.
                let vanishing = [
                    "No such container",
                    "marked for removal",
                    "removal in progress",
                ]
                .iter()
                .any(|m| message.contains(m));
                match status_code {
                    404 | 410 => DockerError::ContainerGone { message },
                    409 | 500 if vanishing => DockerError::ContainerGone { message },
                    401 | 403 => DockerError::DeniedByApi {
                        method,
                        path: path.to_string(),
                        message,
                    },
                    // 409 "is not running" is still a container problem, kept as an API error
                    // with Docker's text.
                    s => DockerError::Api { status: s, message },
                }
            }
            BollardError::RequestTimeoutError => DockerError::Timeout(Duration::ZERO),
            other => DockerError::DockerUnreachable {
                endpoint: endpoint.to_string(),
                message: truncate(&other.to_string(), MAX_MESSAGE),
            },
        }
    }
}

/// A connected client with the negotiated API version.
#[derive(Clone)]
pub struct DockerClient {
    pub docker: Docker,
    pub endpoint: String,
    pub api_version: String,
    pub(crate) api_timeout: Duration,
}

impl std::fmt::Debug for DockerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerClient")
            .field("endpoint", &self.endpoint)
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

/// Connect and negotiate the API version, every step bounded by the API time-out.
pub async fn connect(settings: &Settings) -> Result<DockerClient, DockerError> {
    let ep = settings.endpoint();
    let timeout = settings.api_timeout;
    let docker = Docker::connect_with_host(&ep)
        .map_err(|e| DockerError::DockerUnreachable {
            endpoint: ep.clone(),
            message: truncate(&e.to_string(), MAX_MESSAGE),
        })?
        .with_timeout(settings.request_timeout);
    let offered = docker.client_version().to_string();
    let docker = tokio::time::timeout(timeout, docker.negotiate_version())
        .await
        .map_err(|_| DockerError::Timeout(timeout))?
        .map_err(|e| DockerError::from_bollard(e, "GET", "/version", &ep))?;
    let v = docker.client_version();
    if (v.major_version, v.minor_version) < (MIN_API.0 as usize, MIN_API.1 as usize) {
        return Err(DockerError::VersionUnsupported {
            client: offered,
            server: v.to_string(),
        });
    }
    Ok(DockerClient {
        api_version: v.to_string(),
        docker,
        endpoint: ep,
        api_timeout: timeout,
    })
}

impl DockerClient {
    /// One API call under the API time-out, its error mapped.
    pub(crate) async fn bounded<T>(
        &self,
        method: &'static str,
        path: &str,
        fut: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<T, DockerError> {
        match tokio::time::timeout(self.api_timeout, fut).await {
            Err(_) => Err(DockerError::Timeout(self.api_timeout)),
            Ok(r) => {
                r.map_err(
                    |e| match DockerError::from_bollard(e, method, path, &self.endpoint) {
                        DockerError::Timeout(_) => DockerError::Timeout(self.api_timeout),
                        other => other,
                    },
                )
            }
        }
    }

    pub async fn ping(&self) -> Result<(), DockerError> {
        self.bounded("GET", "/_ping", self.docker.ping())
            .await
            .map(|_| ())
    }

    /// The engine's (version, API version), for `sentinel check`.
    pub async fn version(&self) -> Result<(String, String), DockerError> {
        let v = self
            .bounded("GET", "/version", self.docker.version())
            .await?;
        Ok((
            v.version.unwrap_or_else(|| "?".into()),
            v.api_version.unwrap_or_else(|| "?".into()),
        ))
    }

    /// `GET /containers/json` of every container, running or not: what naming and healing
    /// both read.
    pub(crate) async fn list_all(&self) -> Result<Vec<ContainerSummary>, DockerError> {
        let opts = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        self.bounded(
            "GET",
            "/containers/json",
            self.docker.list_containers(Some(opts)),
        )
        .await
    }

    /// Every container (running or not) with what naming shows.
    async fn containers(&self) -> Result<HashMap<String, ContainerMeta>, DockerError> {
        Ok(self
            .list_all()
            .await?
            .into_iter()
            .filter_map(|c| {
                let id = c.id?;
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string();
                let labels: BTreeMap<String, String> =
                    c.labels.unwrap_or_default().into_iter().collect();
                let meta = ContainerMeta {
                    name,
                    image: c.image.unwrap_or_default(),
                    // Docker as the kubelet's runtime (cri-dockerd) sets the same labels.
                    pod: labels.get(super::K8S_POD).cloned().unwrap_or_default(),
                    namespace: labels
                        .get(super::K8S_NAMESPACE)
                        .cloned()
                        .unwrap_or_default(),
                    labels,
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    scope: String::new(),
                };
                Some((id, meta))
            })
            .collect())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub state: String,
    /// Kubernetes pod name and namespace (`io.kubernetes.pod.*` labels), when it owns the
    /// container.
    pub pod: String,
    pub namespace: String,
    /// containerd's namespace of the container (empty for Docker and podman).
    pub scope: String,
}

/// How long the names of containers that left a runtime's list are kept: the last counts of a
/// container that just went (its final exits) are named, not shown under a bare id.
pub const GONE_NAMES_KEPT: Duration = Duration::from_secs(60);
/// At most this many recently gone containers are remembered (a churn storm cannot grow it).
const GONE_NAMES_MAX: usize = 1024;

/// What the drain reads: id -> metadata, and the connection state. Bounded by the number of
/// containers the runtime reports (the last listing replaces the whole map) plus
/// `GONE_NAMES_MAX`; while the runtime is unreachable the last known names are kept.
#[derive(Debug)]
pub struct DockerView {
    pub state: DockerState,
    pub containers: HashMap<String, ContainerMeta>,
    /// Containers that left the list lately, with when (see [`GONE_NAMES_KEPT`]).
    pub recently_gone: HashMap<String, (ContainerMeta, Instant)>,
    pub api_version: String,
    /// The runtime socket was not there when last looked at: the runtime is not installed or
    /// not started (a state of its own, not a failure).
    pub absent: bool,
}

impl DockerView {
    /// Replaces the listing; containers that left it are kept a while as recently gone.
    pub fn replace(&mut self, containers: HashMap<String, ContainerMeta>) {
        let now = Instant::now();
        let old = std::mem::replace(&mut self.containers, containers);
        for (id, meta) in old {
            if !self.containers.contains_key(&id) {
                self.recently_gone.insert(id, (meta, now));
            }
        }
        self.recently_gone.retain(|id, (_, at)| {
            now.duration_since(*at) < GONE_NAMES_KEPT && !self.containers.contains_key(id)
        });
        if self.recently_gone.len() > GONE_NAMES_MAX {
            let mut by_age: Vec<(Instant, String)> = self
                .recently_gone
                .iter()
                .map(|(id, (_, at))| (*at, id.clone()))
                .collect();
            by_age.sort();
            for (_, id) in by_age
                .into_iter()
                .take(self.recently_gone.len() - GONE_NAMES_MAX)
            {
                self.recently_gone.remove(&id);
            }
        }
    }

    /// A listed container, else one that left the list lately.
    pub fn get(&self, id: &str) -> Option<&ContainerMeta> {
        self.containers
            .get(id)
            .or_else(|| self.recently_gone.get(id).map(|(m, _)| m))
    }
}

pub type SharedView = Arc<RwLock<DockerView>>;

pub(crate) fn view(state: DockerState) -> SharedView {
    Arc::new(RwLock::new(DockerView {
        state,
        containers: HashMap::new(),
        recently_gone: HashMap::new(),
        api_version: String::new(),
        absent: false,
    }))
}

/// A container event, reduced to what healing uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerEvent {
    pub id: String,
    /// Docker's action: `die`, `stop`, `kill`, `start`, `destroy`, `health_status: unhealthy`, ...
    pub action: String,
    pub exit_code: Option<i64>,
    pub at: Instant,
}

/// What healing hears from the watcher.
#[derive(Clone, Debug)]
pub enum WatchMsg {
    Connected(DockerClient),
    Disconnected(String),
    Event(ContainerEvent),
}

/// Counters the watcher keeps.
#[derive(Debug, Default)]
pub struct WatchCounters {
    /// Events healing's bounded queue refused (it re-reads every container each interval, so
    /// nothing is lost for good).
    pub dropped_events: AtomicU64,
    pub reconnects: AtomicU64,
}

/// The running watcher: the view naming reads, the receiver healing takes, and the task
/// (aborted when this is dropped).
pub struct Watcher {
    pub view: SharedView,
    pub events: Option<mpsc::Receiver<WatchMsg>>,
    pub counters: Arc<WatchCounters>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Watcher {
    /// Docker is not contacted (`--no-docker`): a view that says `disabled`, nothing else.
    pub fn disabled() -> Self {
        Self {
            view: view(DockerState::Disabled),
            events: None,
            counters: Arc::default(),
            task: None,
        }
    }

    /// Starts the watcher. With `heal_events`, healing gets the connection and the container
    /// events through `events`. Must be called inside a tokio runtime.
    pub fn spawn(settings: Settings, heal_events: bool) -> Self {
        Self::spawn_for(Runtime::Docker, settings, heal_events, Poke::none())
    }

    /// The watcher of `runtime`'s Docker-compatible API (Docker's own, or podman's): every
    /// container event also pokes the roster, so a container that started or went is seen by
    /// the next drain.
    pub fn spawn_for(runtime: Runtime, settings: Settings, heal_events: bool, poke: Poke) -> Self {
        let shared = view(DockerState::Connecting);
        let counters: Arc<WatchCounters> = Arc::default();
        // Capacity for bursts of events; connectivity messages wait for room, events are
        // dropped and counted (healing re-reads every container each interval).
        let (tx, rx) = if heal_events {
            let (tx, rx) = mpsc::channel(1024);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let task = tokio::spawn(watch(
            Watched {
                runtime,
                settings,
                poke,
            },
            shared.clone(),
            tx,
            counters.clone(),
        ));
        Self {
            view: shared,
            events: rx,
            counters,
            task: Some(task),
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> DockerState {
        self.view
            .read()
            .map(|v| v.state)
            .unwrap_or(DockerState::Unreachable)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// What one watcher watches.
struct Watched {
    runtime: Runtime,
    settings: Settings,
    poke: Poke,
}

/// How often an optional runtime whose socket is missing is looked for again.
pub const ABSENT_RECHECK: Duration = Duration::from_secs(30);

/// The socket path of a `unix://` endpoint.
pub fn unix_socket(endpoint: &str) -> Option<&std::path::Path> {
    endpoint.strip_prefix("unix://").map(std::path::Path::new)
}

/// The watcher's loop: one session per connection, one log line per transition.
async fn watch(
    w: Watched,
    view: SharedView,
    tx: Option<mpsc::Sender<WatchMsg>>,
    counters: Arc<WatchCounters>,
) {
    let mut wait = w.settings.reconnect_initial;
    loop {
        // Podman is optional: no socket means not installed or not started, not a failure.
        if w.runtime != Runtime::Docker
            && unix_socket(&w.settings.endpoint()).is_some_and(|p| !p.exists())
        {
            let was_absent = {
                let mut v = view
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                v.state = DockerState::Disabled;
                std::mem::replace(&mut v.absent, true)
            };
            if !was_absent {
                info!(
                    endpoint = %w.settings.endpoint(),
                    "{}: no API socket; its containers are named by id (looked for again every {}s)",
                    w.runtime,
                    ABSENT_RECHECK.as_secs()
                );
            }
            tokio::time::sleep(ABSENT_RECHECK).await;
            continue;
        }
        view.write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .absent = false;
        let reason = match connect(&w.settings).await {
            Ok(client) => {
                wait = w.settings.reconnect_initial;
                session(&w, &client, &view, tx.as_ref(), &counters).await
            }
            Err(e) => e.to_string(),
        };
        if tx.as_ref().is_some_and(mpsc::Sender::is_closed) {
            // Healing is gone (shutdown): so is the reason to watch for it. Naming keeps
            // its last view.
            return;
        }
        let was = {
            let mut v = view
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::replace(&mut v.state, DockerState::Unreachable)
        };
        if was != DockerState::Unreachable {
            // Once per transition, for naming and healing together (D1).
            if w.runtime == Runtime::Docker {
                warn!(
                    reason = %for_log(&reason),
                    "Docker unreachable: containers are named from cgroup paths and healing is \
                     monitor-only until it returns"
                );
            } else {
                warn!(
                    reason = %for_log(&reason),
                    runtime = %w.runtime,
                    "{} unreachable: its containers are named by id until it returns",
                    w.runtime
                );
            }
        }
        if let Some(tx) = &tx
            && tx.send(WatchMsg::Disconnected(reason)).await.is_err()
        {
            return;
        }
        counters.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(w.settings.reconnect_max);
    }
}

/// One connection: subscribe, list, announce, then follow events and ping until something
/// fails. Returns why it ended.
async fn session(
    w: &Watched,
    client: &DockerClient,
    view: &SharedView,
    tx: Option<&mpsc::Sender<WatchMsg>>,
    counters: &WatchCounters,
) -> String {
    let mut events = client.docker.events(Some(EventsOptions {
        filters: Some(HashMap::from([(
            "type".to_string(),
            vec!["container".to_string()],
        )])),
        ..Default::default()
    }));
    // Subscribe first, then list: a container started in between is in one or the other.
    let containers = match client.containers().await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    {
        let mut v = view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if v.state != DockerState::Up {
            if w.runtime == Runtime::Docker {
                info!(
                    endpoint = %client.endpoint,
                    api_version = %client.api_version,
                    "Docker reachable: naming containers, healing active"
                );
            } else {
                info!(
                    endpoint = %client.endpoint,
                    api_version = %client.api_version,
                    "{} reachable: naming its containers (healing stays Docker-only)",
                    w.runtime
                );
            }
        }
        v.state = DockerState::Up;
        v.api_version.clone_from(&client.api_version);
        v.replace(containers);
    }
    w.poke.poke();
    if let Some(tx) = tx
        && tx.send(WatchMsg::Connected(client.clone())).await.is_err()
    {
        return "healing gone".into();
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                None => return format!("{} closed the events stream", w.runtime),
                Some(Err(e)) => return truncate(&e.to_string(), MAX_MESSAGE),
                Some(Ok(m)) => {
                    // A container started, died or went: the roster scans /proc again now,
                    // so a recycled key is re-resolved by the next drain.
                    w.poke.poke();
                    if let Some(tx) = tx
                        && let Some(actor) = m.actor
                        && let Some(id) = actor.id
                    {
                        let attrs = actor.attributes.unwrap_or_default();
                        let ev = ContainerEvent {
                            id,
                            action: m.action.unwrap_or_default(),
                            exit_code: attrs.get("exitCode").and_then(|s| s.parse().ok()),
                            at: Instant::now(),
                        };
                        // Never block the stream on a slow engine: drop and count.
                        if tx.try_send(WatchMsg::Event(ev)).is_err() {
                            if tx.is_closed() {
                                return "healing gone".into();
                            }
                            counters.dropped_events.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    match client.containers().await {
                        Ok(c) => view.write().unwrap_or_else(std::sync::PoisonError::into_inner).replace(c),
                        Err(e) => return e.to_string(),
                    }
                    w.poke.poke();
                }
            },
            _ = ping.tick() => {
                if let Err(e) = client.ping().await {
                    return e.to_string();
                }
            }
        }
    }
}

/// `sentinel check`: can the engine be reached at the configured endpoint, and which version
/// is it? Bounded by `timeout` in all.
pub fn probe_version(
    settings: &Settings,
    timeout: Duration,
) -> Result<(String, String), DockerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DockerError::DockerUnreachable {
            endpoint: settings.endpoint(),
            message: format!("cannot start a runtime: {e}"),
        })?;
    let settings = Settings {
        api_timeout: timeout,
        request_timeout: timeout,
        ..settings.clone()
    };
    runtime.block_on(async {
        tokio::time::timeout(timeout, async {
            let client = connect(&settings).await?;
            client.version().await
        })
        .await
        .map_err(|_| DockerError::Timeout(timeout))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unix socket answering every request with `body` as JSON (Docker API `api`).
    /// Must run inside a tokio runtime.
    fn fake_engine(api: &str, body: &'static str) -> (tempfile::TempDir, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("docker.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        let api = api.to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let api = api.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nApi-Version: {api}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        let host = format!("unix://{}", sock.display());
        (dir, host)
    }

    fn settings(host: &str) -> Settings {
        Settings {
            host: Some(host.to_string()),
            api_timeout: Duration::from_secs(2),
            ..Settings::default()
        }
    }

    #[test]
    fn endpoint_prefers_the_config_then_docker_host_then_the_socket() {
        assert_eq!(
            endpoint(Some("tcp://127.0.0.1:2375")),
            "tcp://127.0.0.1:2375"
        );
        // DOCKER_HOST is read at call time; the test process does not set it.
        if std::env::var_os("DOCKER_HOST").is_none() {
            assert_eq!(endpoint(None), DEFAULT_HOST);
        }
    }

    /// FAULT-MATRIX D4 (a container removed under a restart is `container_gone` with Docker's
    /// text) and D13 (a 403 from a socket proxy is `denied_by_docker_api` naming method and
    /// path; healing settles it as neutral, never a container failure).
    #[test]
    fn error_mapping() {
        let e = |status_code: u16, message: &str| BollardError::DockerResponseServerError {
            status_code,
            message: message.to_string(),
        };
        let gone = DockerError::from_bollard(
            e(
                500,
                "Cannot restart container abc: container is marked for removal and cannot be started",
            ),
            "POST",
            "/containers/abc/restart",
            "unix:///x",
        );
        assert_eq!(gone.kind(), "container_gone");
        assert!(gone.to_string().contains("marked for removal"), "{gone}");
        let nsc = DockerError::from_bollard(
            e(404, "No such container: abc"),
            "GET",
            "/containers/abc/json",
            "unix:///x",
        );
        assert_eq!(nsc.kind(), "container_gone");
        let denied = DockerError::from_bollard(
            e(403, "Forbidden"),
            "POST",
            "/containers/abc/restart",
            "unix:///x",
        );
        assert_eq!(denied.kind(), "denied_by_docker_api");
        assert!(
            denied
                .to_string()
                .contains("denied by the Docker API endpoint: POST /containers/abc/restart"),
            "{denied}"
        );
        let conflict = DockerError::from_bollard(
            e(409, "Container abc is not running"),
            "POST",
            "/containers/abc/kill",
            "unix:///x",
        );
        assert_eq!(conflict.kind(), "api_error");
    }

    /// FAULT-MATRIX D14: an engine answering `/version` with an API older than sentinel
    /// supports is refused with one line naming both versions; no panic, no retry storm.
    #[tokio::test]
    async fn old_api_version_is_refused_naming_both() {
        let (_dir, host) = fake_engine(
            "1.24",
            r#"{"ApiVersion":"1.24","Version":"1.12.6","MinAPIVersion":"1.12"}"#,
        );
        match connect(&settings(&host)).await {
            Err(e @ DockerError::VersionUnsupported { .. }) => {
                let line = e.to_string();
                assert!(line.contains("1.24"), "server version named: {line}");
                assert!(line.contains("1.30"), "oldest supported named: {line}");
                assert!(!line.contains('\n'), "one line: {line}");
                assert_eq!(e.kind(), "docker_api_version");
            }
            Err(e) => panic!("wrong error kind: {e}"),
            Ok(c) => panic!("accepted API {}", c.api_version),
        }
    }

    #[tokio::test]
    async fn missing_socket_is_docker_unreachable() {
        match connect(&settings("unix:///nonexistent/docker.sock")).await {
            Err(e @ DockerError::DockerUnreachable { .. }) => {
                assert!(e.to_string().contains("/nonexistent/docker.sock"), "{e}");
            }
            Err(e) => panic!("wrong kind: {e}"),
            Ok(_) => panic!("connected to nothing"),
        }
    }

    /// `sentinel check` talks to the configured endpoint through the same client.
    #[test]
    fn check_reads_the_version_at_the_configured_host() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (_dir, host) = rt.block_on(async {
            fake_engine(
                "1.41",
                r#"{"ApiVersion":"1.41","Version":"20.10.24","MinAPIVersion":"1.12"}"#,
            )
        });
        let got = probe_version(&settings(&host), Duration::from_secs(2)).unwrap();
        assert_eq!(got, ("20.10.24".to_string(), "1.41".to_string()));
        let err = probe_version(
            &settings("unix:///nonexistent/docker.sock"),
            Duration::from_secs(2),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/docker.sock"),
            "{err}"
        );
    }

    /// The one watcher turns `unreachable` when the engine is missing, and tells healing.
    #[tokio::test]
    async fn watcher_reports_an_unreachable_engine_once_to_healing() {
        let mut w = Watcher::spawn(
            Settings {
                reconnect_initial: Duration::from_millis(10),
                reconnect_max: Duration::from_millis(20),
                ..settings("unix:///nonexistent/docker.sock")
            },
            true,
        );
        let mut rx = w.events.take().unwrap();
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(WatchMsg::Disconnected(reason))) => {
                assert!(reason.contains("/nonexistent/docker.sock"), "{reason}");
            }
            other => panic!("expected Disconnected, got {other:?}"),
        }
        assert_eq!(w.state(), DockerState::Unreachable);
        assert_eq!(Watcher::disabled().state(), DockerState::Disabled);
    }
}
