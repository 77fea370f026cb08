//! Docker access on bollard: connection with version negotiation, typed errors, the container
//! facts the gate needs, the actions, and the event watcher task that reconnects with capped
//! exponential back-off.
//!
//! API surface used (so it runs behind a socket proxy allowing exactly this): `GET /_ping`,
//! `/version`, `/containers/json`, `/containers/{id}/json`, `/images/{id}/json`, `/events`;
//! `POST /containers/{id}/restart|stop|start|kill`; `POST /containers/{id}/exec` and
//! `/exec/{id}/start`, `GET /exec/{id}/json` only when an exec rule exists.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerStateStatusEnum, HealthStatusEnum, RestartPolicyNameEnum};
use bollard::query_parameters::{
    EventsOptions, InspectContainerOptions, KillContainerOptions, ListContainersOptions,
    RestartContainerOptions, StartContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::audit::truncate;
use super::config::{ActionConfig, HealConfig, secs};

/// Oldest Engine API sentinel accepts (Docker 17.06). Debian 12's engine 20.10 speaks 1.41;
/// bollard 0.21 starts at 1.53 and `negotiate_version` lowers it to the server's.
pub const MIN_API: (u16, u16) = (1, 30);

/// Errors a caller branches on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HealError {
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

impl HealError {
    /// Audit reason (snake_case, stable).
    pub fn kind(&self) -> &'static str {
        match self {
            HealError::DockerUnreachable { .. } => "docker_unreachable",
            HealError::ContainerGone { .. } => "container_gone",
            HealError::DeniedByApi { .. } => "denied_by_docker_api",
            HealError::Timeout(_) => "timeout",
            HealError::Api { .. } => "api_error",
            HealError::VersionUnsupported { .. } => "docker_api_version",
        }
    }

    fn from_bollard(e: BollardError, method: &'static str, path: &str, endpoint: &str) -> Self {
        match e {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => {
                let message = truncate(&message, 1024);
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
                    404 | 410 => HealError::ContainerGone { message },
                    409 | 500 if vanishing => HealError::ContainerGone { message },
                    401 | 403 => HealError::DeniedByApi {
                        method,
                        path: path.to_string(),
                        message,
                    },
                    // 409 "removal in progress" / "is not running" for a vanishing container
                    // is still a container problem, kept as an API error with Docker's text.
                    s => HealError::Api { status: s, message },
                }
            }
            BollardError::RequestTimeoutError => HealError::Timeout(Duration::ZERO),
            other => HealError::DockerUnreachable {
                endpoint: endpoint.to_string(),
                message: truncate(&other.to_string(), 1024),
            },
        }
    }
}

/// Where to connect: config, then `DOCKER_HOST`, then the default unix socket.
pub fn endpoint(cfg: &HealConfig) -> String {
    cfg.docker_host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

/// A connected client with the negotiated API version.
#[derive(Clone)]
pub struct DockerClient {
    pub docker: Docker,
    pub endpoint: String,
    pub api_version: String,
    api_timeout: Duration,
}

/// Connect and negotiate the API version, every step bounded by the API time-out.
pub async fn connect(cfg: &HealConfig) -> Result<DockerClient, HealError> {
    let ep = endpoint(cfg);
    let timeout = cfg.api_timeout();
    let unreachable = |m: String| HealError::DockerUnreachable {
        endpoint: ep.clone(),
        message: truncate(&m, 1024),
    };
    // bollard's own time-out applies to every request, actions included: keep it above the
    // action time-out so that sentinel's bounds (API calls: `api_timeout`, actions:
    // `action_timeout`) are the ones that fire and are audited as such.
    let docker = Docker::connect_with_host(&ep)
        .map_err(|e| unreachable(e.to_string()))?
        .with_timeout(cfg.action_timeout().max(timeout) + Duration::from_secs(5));
    let offered = docker.client_version().to_string();
    let docker = tokio::time::timeout(timeout, docker.negotiate_version())
        .await
        .map_err(|_| HealError::Timeout(timeout))?
        .map_err(|e| HealError::from_bollard(e, "GET", "/version", &ep))?;
    let v = docker.client_version();
    if (v.major_version, v.minor_version) < (MIN_API.0 as usize, MIN_API.1 as usize) {
        return Err(HealError::VersionUnsupported {
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

/// What the engine needs to know about one container, from inspect (+ image inspect).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// Effective labels (container config: image labels merged with `--label`).
    pub labels: HashMap<String, String>,
    /// Labels of the image the container was created from.
    pub image_labels: HashMap<String, String>,
    pub running: bool,
    pub restarting: bool,
    pub status: String,
    /// `none` when the container has no health check.
    pub health: String,
    pub exit_code: i64,
    pub oom_killed: bool,
    pub restart_policy: String,
    pub max_retry: i64,
    pub restart_count: i64,
    pub started_at: String,
}

impl ContainerInfo {
    /// Would Docker's own restart policy bring this (stopped) container back?
    pub fn policy_will_restart(&self) -> bool {
        if self.restarting {
            return true;
        }
        if self.running {
            return false;
        }
        match self.restart_policy.as_str() {
            "always" | "unless-stopped" => true,
            "on-failure" => {
                self.exit_code != 0 && (self.max_retry == 0 || self.restart_count < self.max_retry)
            }
            _ => false,
        }
    }
}

impl DockerClient {
    async fn bounded<T>(
        &self,
        method: &'static str,
        path: &str,
        fut: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<T, HealError> {
        match tokio::time::timeout(self.api_timeout, fut).await {
            Err(_) => Err(HealError::Timeout(self.api_timeout)),
            Ok(r) => {
                r.map_err(
                    |e| match HealError::from_bollard(e, method, path, &self.endpoint) {
                        HealError::Timeout(_) => HealError::Timeout(self.api_timeout),
                        other => other,
                    },
                )
            }
        }
    }

    pub async fn ping(&self) -> Result<(), HealError> {
        self.bounded("GET", "/_ping", self.docker.ping())
            .await
            .map(|_| ())
    }

    pub async fn inspect(&self, id: &str) -> Result<ContainerInfo, HealError> {
        let path = format!("/containers/{id}/json");
        let c = self
            .bounded(
                "GET",
                &path,
                self.docker
                    .inspect_container(id, None::<InspectContainerOptions>),
            )
            .await?;
        let mut info = ContainerInfo {
            id: c.id.clone().unwrap_or_else(|| id.to_string()),
            name: c
                .name
                .clone()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            labels: c
                .config
                .as_ref()
                .and_then(|c| c.labels.clone())
                .unwrap_or_default(),
            restart_count: c.restart_count.unwrap_or(0),
            ..ContainerInfo::default()
        };
        if let Some(s) = &c.state {
            info.running = s.running.unwrap_or(false);
            info.restarting = s.restarting.unwrap_or(false);
            info.status = s
                .status
                .map(|x| x.to_string())
                .unwrap_or_else(|| ContainerStateStatusEnum::EMPTY.to_string());
            info.health = s
                .health
                .as_ref()
                .and_then(|h| h.status)
                .unwrap_or(HealthStatusEnum::NONE)
                .to_string();
            info.exit_code = s.exit_code.unwrap_or(0);
            info.oom_killed = s.oom_killed.unwrap_or(false);
            info.started_at = s.started_at.clone().unwrap_or_default();
        }
        if let Some(rp) = c
            .host_config
            .as_ref()
            .and_then(|h| h.restart_policy.as_ref())
        {
            info.restart_policy = rp.name.unwrap_or(RestartPolicyNameEnum::EMPTY).to_string();
            info.max_retry = rp.maximum_retry_count.unwrap_or(0);
        }
        if let Some(image) = c.image.as_deref() {
            let ipath = format!("/images/{image}/json");
            // An image that is gone (removed after the container was created) has no labels to
            // inherit; any other error is returned, so consent is never judged on missing data.
            match self
                .bounded("GET", &ipath, self.docker.inspect_image(image))
                .await
            {
                Ok(img) => {
                    info.image_labels = img.config.and_then(|c| c.labels).unwrap_or_default();
                }
                Err(HealError::ContainerGone { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(info)
    }

    /// All containers (running or not), summarised.
    pub async fn list(&self) -> Result<Vec<Summary>, HealError> {
        let opts = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let v = self
            .bounded(
                "GET",
                "/containers/json",
                self.docker.list_containers(Some(opts)),
            )
            .await?;
        Ok(v.into_iter()
            .filter_map(|c| {
                Some(Summary {
                    id: c.id?,
                    labels: c.labels.unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    status: c.status.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Run one action. Not bounded here: the executor applies the action time-out, which is
    /// usually longer than the API time-out (a restart waits for the stop time-out).
    pub async fn act(&self, id: &str, action: &ActionConfig) -> Result<ActionDone, HealError> {
        let ep = &self.endpoint;
        let d = &self.docker;
        let (method, path) = (
            "POST",
            format!("/containers/{id}/{}", action.kind().as_str()),
        );
        let map = |e: BollardError| HealError::from_bollard(e, method, &path, ep);
        match action {
            ActionConfig::Restart { stop_timeout_secs } => {
                let o = RestartContainerOptions {
                    t: Some(*stop_timeout_secs as i32),
                    ..Default::default()
                };
                d.restart_container(id, Some(o)).await.map_err(map)?;
            }
            ActionConfig::Stop { stop_timeout_secs } => {
                let o = StopContainerOptions {
                    t: Some(*stop_timeout_secs as i32),
                    ..Default::default()
                };
                d.stop_container(id, Some(o)).await.map_err(map)?;
            }
            ActionConfig::Start => {
                d.start_container(id, None::<StartContainerOptions>)
                    .await
                    .map_err(map)?;
            }
            ActionConfig::Kill { signal } => {
                let o = KillContainerOptions {
                    signal: signal.clone(),
                };
                d.kill_container(id, Some(o)).await.map_err(map)?;
            }
            ActionConfig::Exec { cmd } => return self.exec(id, cmd).await,
        }
        Ok(ActionDone { exit_code: None })
    }

    async fn exec(&self, id: &str, cmd: &[String]) -> Result<ActionDone, HealError> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let ep = &self.endpoint;
        let cpath = format!("/containers/{id}/exec");
        let created = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| HealError::from_bollard(e, "POST", &cpath, ep))?;
        let spath = format!("/exec/{}/start", created.id);
        match self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| HealError::from_bollard(e, "POST", &spath, ep))?
        {
            // Drain the output (discarded: it is workload-controlled) until the command ends.
            StartExecResults::Attached { mut output, .. } => while output.next().await.is_some() {},
            StartExecResults::Detached => {}
        }
        let ipath = format!("/exec/{}/json", created.id);
        let info = self
            .bounded("GET", &ipath, self.docker.inspect_exec(&created.id))
            .await?;
        Ok(ActionDone {
            exit_code: info.exit_code,
        })
    }
}

/// One row of `GET /containers/json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub id: String,
    pub labels: HashMap<String, String>,
    /// `running`, `exited`, ...
    pub state: String,
    /// Human status, e.g. `Up 3 minutes (unhealthy)`: API 1.41 has no health field in the
    /// list, so this is where an unhealthy container shows.
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionDone {
    pub exit_code: Option<i64>,
}

/// A container event, reduced to what the engine uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerEvent {
    pub id: String,
    /// Docker's action: `die`, `stop`, `kill`, `start`, `destroy`, `health_status: unhealthy`, ...
    pub action: String,
    pub exit_code: Option<i64>,
    pub at: Instant,
}

#[derive(Clone)]
pub enum WatchMsg {
    Connected(DockerClient),
    Disconnected(String),
    Event(ContainerEvent),
}

/// Counters the watcher shares with the engine.
#[derive(Debug, Default)]
pub struct WatchCounters {
    pub dropped_events: AtomicU64,
    pub reconnects: AtomicU64,
}

/// How often the watcher pings a connected engine: a hung (SIGSTOPped) dockerd keeps the event
/// stream open and silent, so only a bounded ping notices it (D3).
pub const PING_EVERY: Duration = Duration::from_secs(2);

/// Spawn the watcher: connect, announce, stream container events, ping; on any failure
/// announce the loss once, wait (capped exponential back-off) and start over. Ends when the
/// receiver is dropped.
pub fn spawn_watcher(
    cfg: HealConfig,
    counters: Arc<WatchCounters>,
) -> (mpsc::Receiver<WatchMsg>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let h = tokio::spawn(async move {
        let initial = secs(cfg.reconnect_initial_secs);
        let max = secs(cfg.reconnect_max_secs);
        let mut wait = initial;
        loop {
            let reason = match connect(&cfg).await {
                Ok(client) => {
                    wait = initial;
                    if tx.send(WatchMsg::Connected(client.clone())).await.is_err() {
                        return;
                    }
                    stream_until_lost(&client, &tx, &counters).await
                }
                Err(e) => e.to_string(),
            };
            if tx.is_closed() {
                return;
            }
            // Capacity is reserved for connectivity messages: they are never dropped.
            if tx.send(WatchMsg::Disconnected(reason)).await.is_err() {
                return;
            }
            counters.reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(max);
        }
    });
    (rx, h)
}

async fn stream_until_lost(
    client: &DockerClient,
    tx: &mpsc::Sender<WatchMsg>,
    counters: &WatchCounters,
) -> String {
    let mut filters = HashMap::new();
    filters.insert("type".to_string(), vec!["container".to_string()]);
    let mut events = client.docker.events(Some(EventsOptions {
        filters: Some(filters),
        ..Default::default()
    }));
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                None => return "event stream ended".into(),
                Some(Err(e)) => return truncate(&e.to_string(), 1024),
                Some(Ok(m)) => {
                    let Some(actor) = m.actor else { continue };
                    let Some(id) = actor.id else { continue };
                    let attrs = actor.attributes.unwrap_or_default();
                    let ev = ContainerEvent {
                        id,
                        action: m.action.unwrap_or_default(),
                        exit_code: attrs.get("exitCode").and_then(|s| s.parse().ok()),
                        at: Instant::now(),
                    };
                    // Never block the stream on a slow engine: drop and count; the engine
                    // re-reads the full container list every interval, so nothing is lost
                    // for good.
                    if tx.try_send(WatchMsg::Event(ev)).is_err() {
                        if tx.is_closed() {
                            return "engine gone".into();
                        }
                        counters.dropped_events.fetch_add(1, Ordering::Relaxed);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_semantics() {
        let mut c = ContainerInfo {
            restart_policy: "on-failure".into(),
            exit_code: 1,
            max_retry: 3,
            restart_count: 1,
            ..Default::default()
        };
        assert!(c.policy_will_restart());
        c.restart_count = 3;
        assert!(!c.policy_will_restart());
        c.restart_policy = "always".into();
        assert!(c.policy_will_restart());
        c.running = true;
        assert!(!c.policy_will_restart());
        c.restarting = true;
        assert!(c.policy_will_restart());
        c.restart_policy = "no".into();
        c.restarting = false;
        c.running = false;
        assert!(!c.policy_will_restart());
    }

    /// FAULT-MATRIX D4 (a container removed under a restart is `container_gone` with Docker's
    /// text) and D13 (a 403 from a socket proxy is `denied_by_docker_api` naming method and
    /// path; the engine settles it as neutral, never a container failure).
    #[test]
    fn error_mapping() {
        let e = |status_code: u16, message: &str| BollardError::DockerResponseServerError {
            status_code,
            message: message.to_string(),
        };
        let gone = HealError::from_bollard(
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
        let nsc = HealError::from_bollard(
            e(404, "No such container: abc"),
            "GET",
            "/containers/abc/json",
            "unix:///x",
        );
        assert_eq!(nsc.kind(), "container_gone");
        let denied = HealError::from_bollard(
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
        let conflict = HealError::from_bollard(
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
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("old-docker.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = r#"{"ApiVersion":"1.24","Version":"1.12.6","MinAPIVersion":"1.12"}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nApi-Version: 1.24\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let cfg = HealConfig {
            docker_host: Some(format!("unix://{}", sock.display())),
            api_timeout_secs: 2.0,
            ..HealConfig::default()
        };
        match connect(&cfg).await {
            Err(e @ HealError::VersionUnsupported { .. }) => {
                let line = e.to_string();
                println!("{line}");
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
        let cfg = HealConfig {
            docker_host: Some("unix:///nonexistent/docker.sock".into()),
            ..HealConfig::default()
        };
        match connect(&cfg).await {
            Err(e @ HealError::DockerUnreachable { .. }) => {
                assert!(e.to_string().contains("/nonexistent/docker.sock"), "{e}")
            }
            Err(e) => panic!("wrong kind: {e}"),
            Ok(_) => panic!("connected to nothing"),
        }
    }
}
