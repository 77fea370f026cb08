//! containerd's gRPC API, for naming: every namespace's containers (Kubernetes' `k8s.io`
//! included), their images and the labels the kubelet sets (`io.kubernetes.pod.name`,
//! `io.kubernetes.pod.namespace`, `io.kubernetes.container.name`). Docker's own containers,
//! which containerd also holds in the `moby` namespace, are left to Docker (named once).
//!
//! Optional: without a socket the state is `absent` (looked for again now and then); a socket
//! that does not answer is `unreachable`, said once per transition. The watcher lists every
//! namespace, then follows the events stream and lists again on every container or task
//! event (and every [`RELIST_EVERY`] regardless, which is also its liveness check).

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Duration,
};

#[cfg(feature = "containerd")]
use containerd_client::{
    services::v1::{
        ListContainersRequest, ListNamespacesRequest, SubscribeRequest,
        containers_client::ContainersClient, events_client::EventsClient,
        namespaces_client::NamespacesClient, version_client::VersionClient,
    },
    tonic::{Request, transport::Channel},
};
#[cfg(feature = "containerd")]
use futures_util::StreamExt;
use tracing::{info, warn};

use super::{
    K8S_CONTAINER, K8S_NAMESPACE, K8S_POD,
    docker::{ABSENT_RECHECK, ContainerMeta, SharedView, view},
    roster::Poke,
};
use crate::{model::DockerState, sanitize::for_log};

/// containerd's socket unless `CONTAINERD_ADDRESS` (the variable `ctr` reads) says otherwise.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";

/// Docker's namespace in containerd: Docker names those containers.
pub const DOCKER_NAMESPACE: &str = "moby";

/// Listing again without any event: picks up what a lost event missed, and notices a hung
/// containerd.
pub const RELIST_EVERY: Duration = Duration::from_secs(10);

/// Bound on every call (connect, version, list).
#[cfg(feature = "containerd")]
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many containers are kept per listing (the view is bounded whatever a
/// runtime reports).
#[cfg(feature = "containerd")]
const MAX_CONTAINERS: usize = 65_536;

/// The label containerd's CRI plugin puts on a pod's sandbox (its `pause` container).
const CRI_KIND: &str = "io.cri-containerd.kind";

/// The socket to use: `CONTAINERD_ADDRESS`, else the default.
pub fn address() -> PathBuf {
    std::env::var_os("CONTAINERD_ADDRESS")
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_ADDRESS), PathBuf::from)
}

#[cfg(feature = "containerd")]
fn with_namespace<T>(msg: T, ns: &str) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(v) = ns.parse() {
        req.metadata_mut().insert("containerd-namespace", v);
    }
    req
}

#[cfg(feature = "containerd")]
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Err(_) => Err(format!("{what}: timed out after {CALL_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!(
            "{what}: {}",
            crate::sanitize::truncate(&e.to_string(), 512)
        )),
        Ok(Ok(v)) => Ok(v),
    }
}

#[cfg(feature = "containerd")]
/// Connects and reads the version (the liveness proof): `(channel, version)`.
pub async fn connect(path: &std::path::Path) -> Result<(Channel, String), String> {
    let channel = bounded(
        &format!("connect {}", path.display()),
        containerd_client::connect(path),
    )
    .await?;
    let v = bounded(
        "version",
        VersionClient::new(channel.clone()).version(Request::new(())),
    )
    .await?
    .into_inner();
    Ok((channel, v.version))
}

/// The display name of a container from its labels: `<namespace>/<pod>/<container>` for a
/// Kubernetes container (`POD` for the pod's sandbox), else nerdctl's name, else the id.
pub fn describe(
    id: &str,
    scope: &str,
    image: &str,
    labels: &HashMap<String, String>,
) -> ContainerMeta {
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let (pod, namespace) = (label(K8S_POD), label(K8S_NAMESPACE));
    let name = if !pod.is_empty() {
        let container = if labels.get(CRI_KIND).is_some_and(|k| k == "sandbox") {
            "POD".to_string()
        } else {
            labels
                .get(K8S_CONTAINER)
                .cloned()
                .unwrap_or_else(|| id.to_string())
        };
        if namespace.is_empty() {
            format!("{pod}/{container}")
        } else {
            format!("{namespace}/{pod}/{container}")
        }
    } else {
        labels
            .get("nerdctl/name")
            .cloned()
            .unwrap_or_else(|| id.to_string())
    };
    ContainerMeta {
        name,
        image: image.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        state: String::new(),
        pod,
        namespace,
        scope: scope.to_string(),
    }
}

#[cfg(feature = "containerd")]
/// Every container of every namespace but Docker's.
async fn list_all(channel: &Channel) -> Result<HashMap<String, ContainerMeta>, String> {
    let namespaces = bounded(
        "list namespaces",
        NamespacesClient::new(channel.clone()).list(ListNamespacesRequest::default()),
    )
    .await?
    .into_inner()
    .namespaces;
    let mut out = HashMap::new();
    for ns in namespaces.iter().filter(|n| n.name != DOCKER_NAMESPACE) {
        let containers = bounded(
            "list containers",
            ContainersClient::new(channel.clone())
                .list(with_namespace(ListContainersRequest::default(), &ns.name)),
        )
        .await?
        .into_inner()
        .containers;
        for c in containers {
            if out.len() >= MAX_CONTAINERS {
                break;
            }
            let meta = describe(&c.id, &ns.name, &c.image, &c.labels);
            out.entry(c.id).or_insert(meta);
        }
    }
    Ok(out)
}

/// The running watcher (aborted when dropped).
pub struct ContainerdWatcher {
    pub view: SharedView,
    task: tokio::task::JoinHandle<()>,
}

impl ContainerdWatcher {
    /// Must be called inside a tokio runtime.
    pub fn spawn(path: PathBuf, poke: Poke) -> Self {
        let shared = view(DockerState::Connecting);
        let task = tokio::spawn(watch(path, shared.clone(), poke));
        Self { view: shared, task }
    }
}

impl Drop for ContainerdWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn set_state(view: &SharedView, state: DockerState, absent: bool) -> (DockerState, bool) {
    let mut v = view
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let was = (v.state, v.absent);
    v.state = state;
    v.absent = absent;
    was
}

async fn watch(path: PathBuf, view: SharedView, poke: Poke) {
    let mut wait = Duration::from_secs(1);
    loop {
        if !path.exists() {
            if !set_state(&view, DockerState::Disabled, true).1 {
                info!(
                    socket = %path.display(),
                    "containerd: no API socket; its containers are named by id (looked for again every {}s)",
                    ABSENT_RECHECK.as_secs()
                );
            }
            tokio::time::sleep(ABSENT_RECHECK).await;
            continue;
        }
        let reason = session(&path, &view, &poke).await;
        let (was, _) = set_state(&view, DockerState::Unreachable, false);
        if was != DockerState::Unreachable {
            warn!(
                socket = %path.display(),
                reason = %for_log(&reason),
                "containerd unreachable: its containers are named by id until it returns"
            );
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

#[cfg(feature = "containerd")]
/// One connection: subscribe to events, list, then list again on events and every
/// `RELIST_EVERY`. Returns why it ended.
async fn session(path: &std::path::Path, view: &SharedView, poke: &Poke) -> String {
    let (channel, version) = match connect(path).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    // Every event (images and snapshots too: few), filtered here by topic. Not awaited here:
    // a server may send the stream's headers only with its first event.
    let mut events_client = EventsClient::new(channel.clone());
    let mut subscribe = Box::pin(events_client.subscribe(SubscribeRequest::default()));
    let mut events: Option<
        containerd_client::tonic::Streaming<containerd_client::types::Envelope>,
    > = None;
    let list = match list_all(&channel).await {
        Ok(l) => l,
        Err(e) => return e,
    };
    {
        let mut v = view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if v.state != DockerState::Up {
            info!(
                socket = %path.display(),
                version = %for_log(&version),
                containers = list.len(),
                "containerd reachable: naming its containers (every namespace but Docker's)"
            );
        }
        v.state = DockerState::Up;
        v.absent = false;
        v.api_version = version;
        v.replace(list);
    }
    poke.poke();
    let mut relist = tokio::time::interval(RELIST_EVERY);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    relist.tick().await;
    loop {
        tokio::select! {
            sub = &mut subscribe, if events.is_none() => match sub {
                Ok(r) => events = Some(r.into_inner()),
                Err(e) => return format!("subscribe: {}", crate::sanitize::truncate(&e.to_string(), 512)),
            },
            ev = async { events.as_mut().expect("guarded").next().await }, if events.is_some() => match ev {
                None => return "containerd closed the events stream".into(),
                Some(Err(e)) => return crate::sanitize::truncate(&e.to_string(), 512),
                Some(Ok(envelope)) => {
                    let topic = envelope.topic.as_str();
                    let ours = topic.starts_with("/containers/") || topic.starts_with("/tasks/");
                    if envelope.namespace == DOCKER_NAMESPACE || !ours {
                        continue;
                    }
                    poke.poke();
                }
            },
            _ = relist.tick() => {}
        }
        match list_all(&channel).await {
            Ok(l) => view
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .replace(l),
            Err(e) => return e,
        }
        poke.poke();
    }
}

/// `sentinel check`: is containerd there, and which version? `Ok(None)`: no socket.
pub fn probe(path: &std::path::Path) -> Result<Option<String>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    #[cfg(feature = "containerd")]
    return runtime.block_on(async { connect(path).await.map(|(_, v)| Some(v)) });
    #[cfg(not(feature = "containerd"))]
    {
        drop(runtime);
        Err(NOT_BUILT.to_string())
    }
}

/// Without the `containerd` feature (the developer tools' build of the library) there is no
/// gRPC client: the watcher reports every session as failed with this reason.
#[cfg(not(feature = "containerd"))]
const NOT_BUILT: &str =
    "this build of sentinel has no containerd client (cargo feature `containerd`)";

#[cfg(not(feature = "containerd"))]
#[expect(
    clippy::unused_async,
    reason = "stands in for the gRPC session, which the watcher awaits"
)]
async fn session(_path: &std::path::Path, _view: &SharedView, _poke: &Poke) -> String {
    NOT_BUILT.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn kubernetes_containers_and_sandboxes_are_named_by_pod() {
        // Labels as the kubelet and containerd's CRI plugin set them.
        let app = describe(
            "abc",
            "k8s.io",
            "registry.k8s.io/nginx:1.25",
            &labels(&[
                (K8S_POD, "web-7d4b9"),
                (K8S_NAMESPACE, "shop"),
                (K8S_CONTAINER, "nginx"),
                (CRI_KIND, "container"),
            ]),
        );
        assert_eq!(app.name, "shop/web-7d4b9/nginx");
        assert_eq!(
            (app.pod.as_str(), app.namespace.as_str()),
            ("web-7d4b9", "shop")
        );
        assert_eq!(app.scope, "k8s.io");
        let sandbox = describe(
            "def",
            "k8s.io",
            "registry.k8s.io/pause:3.9",
            &labels(&[
                (K8S_POD, "web-7d4b9"),
                (K8S_NAMESPACE, "shop"),
                (CRI_KIND, "sandbox"),
            ]),
        );
        assert_eq!(sandbox.name, "shop/web-7d4b9/POD");
        assert_eq!(sandbox.pod, "web-7d4b9");
        // Pod labels without a container name (what the integration test sets with ctr).
        let ctr = describe(
            "bars",
            "k8s.io",
            "x",
            &labels(&[(K8S_POD, "bars"), (K8S_NAMESPACE, "team")]),
        );
        assert_eq!(ctr.name, "team/bars/bars");
        // Not Kubernetes: nerdctl's name, else the id.
        assert_eq!(
            describe("i", "default", "", &labels(&[("nerdctl/name", "db")])).name,
            "db"
        );
        assert_eq!(describe("i", "default", "", &HashMap::new()).name, "i");
    }

    #[test]
    fn a_missing_socket_is_absent_not_an_error() {
        assert_eq!(
            probe(std::path::Path::new("/nonexistent/containerd.sock")),
            Ok(None)
        );
    }

    #[cfg(feature = "containerd")]
    #[tokio::test]
    async fn a_socket_that_does_not_speak_grpc_is_an_error_in_bounded_time() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("containerd.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        // Accepts and says nothing.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let started = std::time::Instant::now();
        let err = connect(&sock).await.unwrap_err();
        assert!(started.elapsed() < CALL_TIMEOUT * 3, "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
