//! What healing asks of Docker, behind the [`DockerApi`] trait: the container facts the gate
//! needs (inspect + image labels), the list, the actions and a ping. The one shared client
//! (`containers::docker`) implements it over bollard; the unit tests use an in-memory fake
//! (`heal::fake`). [`Link`] is how the engine hears about the connection and the events.
//!
//! API surface used (so it runs behind a socket proxy allowing exactly this): `GET /_ping`,
//! `/version`, `/containers/json`, `/containers/{id}/json`, `/images/{id}/json`, `/events`;
//! `POST /containers/{id}/restart|stop|start|kill`; `POST /containers/{id}/exec` and
//! `/exec/{id}/start`, `GET /exec/{id}/json` only when an exec rule exists;
//! `POST /containers/{id}/update` only when a `cap_contender` rule exists (or a cap an earlier
//! process left is lifted).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerStateStatusEnum, HealthStatusEnum, RestartPolicyNameEnum};
use bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptions, RestartContainerOptions, StartContainerOptions,
    StopContainerOptions,
};
use futures_util::StreamExt;

use super::config::ActionConfig;
pub use crate::containers::docker::{
    ContainerEvent, DockerClient, DockerError, WatchCounters, WatchMsg,
};

/// Everything healing asks of Docker. Object-safe (boxed futures), so the engine holds an
/// `Arc<dyn DockerApi>`; `act` and `ping` futures own what they need, for spawned tasks.
pub trait DockerApi: Send + Sync {
    /// Every container, summarised. Bounded by the API time-out.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Summary>, DockerError>>;
    /// One container's facts. Bounded by the API time-out.
    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerInfo, DockerError>>;
    /// Run one action. Not bounded here: the executor applies the action time-out.
    fn act(
        &self,
        id: String,
        action: ActionConfig,
    ) -> BoxFuture<'static, Result<ActionDone, DockerError>>;
    /// Is the engine answering? Bounded by the API time-out.
    fn ping(&self) -> BoxFuture<'static, Result<(), DockerError>>;
    /// Set a container's `CpuQuota`/`CpuPeriod` (lifting a cap: the values it replaced).
    /// Bounded by the API time-out.
    fn set_cpu(
        &self,
        id: String,
        quota: i64,
        period: i64,
    ) -> BoxFuture<'static, Result<(), DockerError>>;
}

impl DockerApi for DockerClient {
    fn list(&self) -> BoxFuture<'_, Result<Vec<Summary>, DockerError>> {
        Box::pin(DockerClient::list(self))
    }

    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerInfo, DockerError>> {
        Box::pin(DockerClient::inspect(self, id))
    }

    fn act(
        &self,
        id: String,
        action: ActionConfig,
    ) -> BoxFuture<'static, Result<ActionDone, DockerError>> {
        let client = self.clone();
        Box::pin(async move { DockerClient::act(&client, &id, &action).await })
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), DockerError>> {
        let client = self.clone();
        Box::pin(async move { client.ping().await })
    }

    fn set_cpu(
        &self,
        id: String,
        quota: i64,
        period: i64,
    ) -> BoxFuture<'static, Result<(), DockerError>> {
        let client = self.clone();
        Box::pin(async move {
            let path = format!("/containers/{id}/update");
            let update = client.update_cpu(&id, quota, period);
            client.bounded("POST", &path, update).await
        })
    }
}

/// What the engine hears about Docker.
pub enum LinkMsg {
    /// Connected (again): act through `api`; events may have been missed meanwhile.
    Up {
        api: Arc<dyn DockerApi>,
        api_version: String,
    },
    /// Unreachable, with why.
    Down(String),
    Event(ContainerEvent),
}

/// Where the engine's [`LinkMsg`]s come from: the shared watcher's channel, or a test's fake.
pub trait Link: Send {
    /// The next message, if one is waiting (never blocks).
    fn poll(&mut self) -> Option<LinkMsg>;
}

impl Link for mpsc::Receiver<WatchMsg> {
    fn poll(&mut self) -> Option<LinkMsg> {
        self.try_recv().ok().map(|m| match m {
            WatchMsg::Connected(client) => LinkMsg::Up {
                api_version: client.api_version.clone(),
                api: Arc::new(client),
            },
            WatchMsg::Disconnected(reason) => LinkMsg::Down(reason),
            WatchMsg::Event(ev) => LinkMsg::Event(ev),
        })
    }
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
    /// `HostConfig.CpuQuota`/`CpuPeriod` (0 = not set).
    pub cpu_quota: i64,
    pub cpu_period: i64,
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
    pub async fn inspect(&self, id: &str) -> Result<ContainerInfo, DockerError> {
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
        }
        if let Some(rp) = c
            .host_config
            .as_ref()
            .and_then(|h| h.restart_policy.as_ref())
        {
            info.restart_policy = rp.name.unwrap_or(RestartPolicyNameEnum::EMPTY).to_string();
            info.max_retry = rp.maximum_retry_count.unwrap_or(0);
        }
        if let Some(h) = &c.host_config {
            info.cpu_quota = h.cpu_quota.unwrap_or(0);
            info.cpu_period = h.cpu_period.unwrap_or(0);
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
                Err(DockerError::ContainerGone { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(info)
    }

    /// All containers (running or not), summarised.
    pub async fn list(&self) -> Result<Vec<Summary>, DockerError> {
        Ok(self
            .list_all()
            .await?
            .into_iter()
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
    pub async fn act(&self, id: &str, action: &ActionConfig) -> Result<ActionDone, DockerError> {
        let ep = &self.endpoint;
        let d = &self.docker;
        let (method, path) = (
            "POST",
            format!("/containers/{id}/{}", action.kind().as_str()),
        );
        let map = |e: BollardError| DockerError::from_bollard(e, method, &path, ep);
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
            ActionConfig::CapContender { .. } => {
                let (quota, period) = action.cpu_quota().unwrap_or_default();
                self.update_cpu(id, quota, period).await.map_err(map)?;
            }
        }
        Ok(ActionDone { exit_code: None })
    }

    /// `POST /containers/{id}/update` with the CPU bandwidth only. Docker ignores a quota of
    /// 0 ("unchanged"), so an unlimited one is sent as -1, which it stores as such.
    fn update_cpu(
        &self,
        id: &str,
        quota: i64,
        period: i64,
    ) -> impl std::future::Future<Output = Result<(), BollardError>> + Send + 'static {
        let body = bollard::models::ContainerUpdateBody {
            cpu_quota: Some(if quota <= 0 { -1 } else { quota }),
            cpu_period: (period > 0).then_some(period),
            ..Default::default()
        };
        let docker = self.docker.clone();
        let id = id.to_string();
        async move { docker.update_container(&id, body).await }
    }

    async fn exec(&self, id: &str, cmd: &[String]) -> Result<ActionDone, DockerError> {
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
            .map_err(|e| DockerError::from_bollard(e, "POST", &cpath, ep))?;
        let spath = format!("/exec/{}/start", created.id);
        match self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| DockerError::from_bollard(e, "POST", &spath, ep))?
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared watcher's messages reach the engine as link messages, in order.
    #[test]
    fn the_watcher_channel_is_a_link() {
        let (tx, rx) = mpsc::channel(4);
        let mut link: Box<dyn Link> = Box::new(rx);
        assert!(link.poll().is_none());
        tx.try_send(WatchMsg::Disconnected("gone".into())).unwrap();
        tx.try_send(WatchMsg::Event(ContainerEvent {
            id: "abc".into(),
            action: "die".into(),
            exit_code: Some(1),
            at: std::time::Instant::now(),
        }))
        .unwrap();
        assert!(matches!(link.poll(), Some(LinkMsg::Down(r)) if r == "gone"));
        assert!(
            matches!(link.poll(), Some(LinkMsg::Event(e)) if e.id == "abc" && e.exit_code == Some(1))
        );
        assert!(link.poll().is_none());
    }

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
}
