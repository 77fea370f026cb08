//! Container names, images and labels from the Docker Engine API, kept current by the events
//! stream (re-listing on every container event, so nothing depends on parsing each event kind)
//! and re-listed in full after every reconnect, so events missed while Docker was away are
//! recovered. Docker being unreachable is a visible state, logged once per transition; the
//! kernel-side attribution (ids from cgroup paths) keeps working without it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};

use bollard::{
    Docker,
    query_parameters::{EventsOptions, ListContainersOptions},
};
use futures_util::StreamExt;
use tracing::{info, warn};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub state: String,
}

pub use crate::model::DockerState;

/// What the drain reads: id -> metadata, and the connection state. Bounded by the number of
/// containers Docker reports (the last listing replaces the whole map); while Docker is
/// unreachable the last known names are kept.
#[derive(Debug)]
pub struct DockerView {
    pub state: DockerState,
    pub containers: HashMap<String, ContainerMeta>,
    pub api_version: String,
}

pub type SharedView = Arc<RwLock<DockerView>>;

pub fn disabled_view() -> SharedView {
    Arc::new(RwLock::new(DockerView {
        state: DockerState::Disabled,
        containers: HashMap::new(),
        api_version: String::new(),
    }))
}

/// Starts the watcher task; returns the view it keeps current.
pub fn spawn_watcher() -> SharedView {
    let view = Arc::new(RwLock::new(DockerView {
        state: DockerState::Connecting,
        containers: HashMap::new(),
        api_version: String::new(),
    }));
    tokio::spawn(watch(view.clone()));
    view
}

const API_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

async fn watch(view: SharedView) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match session(&view).await {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(e) => {
                let mut v = view.write().expect("docker view lock");
                if v.state != DockerState::Unreachable {
                    warn!(
                        "Docker unreachable, containers are named from cgroup paths until it returns: {e:#}"
                    );
                    v.state = DockerState::Unreachable;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection: negotiate, list, then follow events until the stream ends or fails.
async fn session(view: &SharedView) -> anyhow::Result<()> {
    let docker = Docker::connect_with_defaults()?.with_timeout(API_TIMEOUT);
    // bollard speaks the newest API by default; old engines (Debian's 20.10: 1.41) reject it.
    let docker = tokio::time::timeout(API_TIMEOUT, docker.negotiate_version())
        .await
        .map_err(|_| anyhow::anyhow!("timed out negotiating the API version"))??;
    let version = docker.client_version().to_string();
    let mut events = docker.events(Some(EventsOptions {
        filters: Some(HashMap::from([(
            "type".to_string(),
            vec!["container".to_string()],
        )])),
        ..Default::default()
    }));
    // Subscribe first, then list: a container started in between is in one or the other.
    relist(&docker, view).await?;
    {
        let mut v = view.write().expect("docker view lock");
        if v.state != DockerState::Up {
            info!(api_version = %version, "Docker reachable, naming containers");
        }
        v.state = DockerState::Up;
        v.api_version = version;
    }
    while let Some(event) = events.next().await {
        event?;
        relist(&docker, view).await?;
    }
    anyhow::bail!("Docker closed the events stream")
}

async fn relist(docker: &Docker, view: &SharedView) -> anyhow::Result<()> {
    let list = tokio::time::timeout(
        API_TIMEOUT,
        docker.list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        })),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out listing containers"))??;
    let containers = list
        .into_iter()
        .filter_map(|c| {
            let id = c.id?;
            let name = c
                .names
                .and_then(|n| n.into_iter().next())
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            let meta = ContainerMeta {
                name,
                image: c.image.unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            };
            Some((id, meta))
        })
        .collect();
    view.write().expect("docker view lock").containers = containers;
    Ok(())
}
