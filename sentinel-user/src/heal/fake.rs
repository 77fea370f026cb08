//! An in-memory Docker for the engine's unit tests, and a harness that drives the engine on
//! tokio's paused clock: `advance` moves the engine's `now` and tokio's timers together, so
//! time-outs, back-offs and breaker waits of minutes run in microseconds, deterministically.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::config::{ActionConfig, HealConfig};
use super::docker::{
    ActionDone, ContainerEvent, ContainerInfo, DockerApi, DockerError, Link, LinkMsg, Summary,
};
use super::{ContainerAnomaly, HealEngine};
use crate::model::{AuditRecord, Decision, HealStatus};

/// What a fake container does when it is restarted or started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterStart {
    /// Healthy and running.
    Heals,
    /// Running but unhealthy again at once (a flapper).
    StaysSick,
}

#[derive(Default)]
struct State {
    containers: BTreeMap<String, ContainerInfo>,
    after_start: HashMap<String, AfterStart>,
    /// Every action Docker was asked for, in order.
    actions: Vec<(String, ActionConfig)>,
    /// Errors the next actions on a container return, in order.
    fail: HashMap<String, VecDeque<DockerError>>,
    /// Every call hangs while set (a SIGSTOPped dockerd).
    hung: bool,
    /// Actions take this long (tokio time).
    action_delay: Duration,
    exec_exit: Option<i64>,
    /// Calls running now, and the most ever (pile-up checks, D3).
    calls_now: usize,
    calls_max: usize,
    link: VecDeque<LinkMsg>,
    /// Containers whose CPU setting was restored (`set_cpu`), in order.
    lifts: Vec<String>,
}

/// The fake engine. Cheap to clone; clones share one state.
#[derive(Clone, Default)]
pub struct FakeDocker {
    st: Arc<Mutex<State>>,
}

/// Counts a call as running for as long as it lives.
struct CallGuard(Arc<Mutex<State>>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap().calls_now -= 1;
    }
}

impl FakeDocker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap()
    }

    fn call(&self) -> (CallGuard, bool) {
        let mut s = self.state();
        s.calls_now += 1;
        s.calls_max = s.calls_max.max(s.calls_now);
        (CallGuard(self.st.clone()), s.hung)
    }

    /// A running container with these labels and health (`none`, `healthy`, `unhealthy`,
    /// `starting`). Returns its id.
    pub fn add(&self, name: &str, labels: &[(&str, &str)], health: &str) -> String {
        let hex: String = name.bytes().take(32).map(|b| format!("{b:02x}")).collect();
        let id = format!("{hex:0<64}");
        let info = ContainerInfo {
            id: id.clone(),
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            running: true,
            status: "running".into(),
            health: health.to_string(),
            ..ContainerInfo::default()
        };
        self.state().containers.insert(id.clone(), info);
        id
    }

    pub fn set(&self, id: &str, f: impl FnOnce(&mut ContainerInfo)) {
        if let Some(c) = self.state().containers.get_mut(id) {
            f(c);
        }
    }

    pub fn info(&self, id: &str) -> Option<ContainerInfo> {
        self.state().containers.get(id).cloned()
    }

    pub fn remove(&self, id: &str) {
        self.state().containers.remove(id);
    }

    pub fn after_start(&self, id: &str, what: AfterStart) {
        self.state().after_start.insert(id.to_string(), what);
    }

    pub fn fail_next(&self, id: &str, e: DockerError) {
        self.state()
            .fail
            .entry(id.to_string())
            .or_default()
            .push_back(e);
    }

    pub fn hang(&self, hung: bool) {
        self.state().hung = hung;
    }

    pub fn action_delay(&self, d: Duration) {
        self.state().action_delay = d;
    }

    pub fn exec_exit(&self, code: i64) {
        self.state().exec_exit = Some(code);
    }

    /// Actions Docker was asked for on `id`.
    pub fn actions_on(&self, id: &str) -> Vec<ActionConfig> {
        self.state()
            .actions
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, a)| a.clone())
            .collect()
    }

    pub fn actions(&self) -> usize {
        self.state().actions.len()
    }

    /// `set_cpu` calls (cap lifts) on `id`.
    pub fn lifts_on(&self, id: &str) -> usize {
        self.state().lifts.iter().filter(|i| *i == id).count()
    }

    pub fn calls_max(&self) -> usize {
        self.state().calls_max
    }

    /// The link says Docker is up (again).
    pub fn connect(&self) {
        let api: Arc<dyn DockerApi> = Arc::new(self.clone());
        self.state().link.push_back(LinkMsg::Up {
            api,
            api_version: "1.41".into(),
        });
    }

    /// The link says Docker is gone.
    pub fn disconnect(&self, reason: &str) {
        self.state()
            .link
            .push_back(LinkMsg::Down(reason.to_string()));
    }

    /// A container event, as the watcher would forward it.
    pub fn event(&self, id: &str, action: &str, at: Instant) {
        self.state().link.push_back(LinkMsg::Event(ContainerEvent {
            id: id.to_string(),
            action: action.to_string(),
            exit_code: None,
            at,
        }));
    }

    pub fn link(&self) -> Box<dyn Link> {
        Box::new(FakeLink(self.clone()))
    }

    fn apply(&self, id: &str, action: &ActionConfig) -> Result<ActionDone, DockerError> {
        let mut s = self.state();
        s.actions.push((id.to_string(), action.clone()));
        if let Some(e) = s.fail.get_mut(id).and_then(VecDeque::pop_front) {
            return Err(e);
        }
        let after = s.after_start.get(id).copied().unwrap_or(AfterStart::Heals);
        let exec_exit = s.exec_exit;
        let Some(c) = s.containers.get_mut(id) else {
            return Err(DockerError::ContainerGone {
                message: format!("No such container: {id}"),
            });
        };
        match action {
            ActionConfig::Restart { .. } | ActionConfig::Start => {
                c.running = true;
                c.status = "running".into();
                c.exit_code = 0;
                if c.health != "none" {
                    c.health = match after {
                        AfterStart::Heals => "healthy".into(),
                        AfterStart::StaysSick => "unhealthy".into(),
                    };
                }
            }
            ActionConfig::Stop { .. } | ActionConfig::Kill { .. } => {
                c.running = false;
                c.status = "exited".into();
                c.exit_code = 137;
            }
            ActionConfig::Exec { .. } => {
                return Ok(ActionDone {
                    exit_code: Some(exec_exit.unwrap_or(0)),
                });
            }
            ActionConfig::CapContender { .. } => {
                let (quota, period) = action.cpu_quota().unwrap_or_default();
                c.cpu_quota = quota;
                c.cpu_period = period;
            }
        }
        Ok(ActionDone { exit_code: None })
    }
}

impl DockerApi for FakeDocker {
    fn list(&self) -> BoxFuture<'_, Result<Vec<Summary>, DockerError>> {
        Box::pin(async move {
            let (_call, hung) = self.call();
            if hung {
                std::future::pending::<()>().await;
            }
            Ok(self
                .state()
                .containers
                .values()
                .map(|c| Summary {
                    id: c.id.clone(),
                    labels: c.labels.clone(),
                    state: c.status.clone(),
                    status: if c.health == "unhealthy" {
                        "Up 1 minute (unhealthy)".into()
                    } else {
                        "Up 1 minute".into()
                    },
                })
                .collect())
        })
    }

    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerInfo, DockerError>> {
        Box::pin(async move {
            let (_call, hung) = self.call();
            if hung {
                std::future::pending::<()>().await;
            }
            let by_name = || {
                self.state()
                    .containers
                    .values()
                    .find(|c| c.name == id)
                    .cloned()
            };
            self.info(id)
                .or_else(by_name)
                .ok_or_else(|| DockerError::ContainerGone {
                    message: format!("No such container: {id}"),
                })
        })
    }

    fn act(
        &self,
        id: String,
        action: ActionConfig,
    ) -> BoxFuture<'static, Result<ActionDone, DockerError>> {
        let me = self.clone();
        Box::pin(async move {
            let (_call, hung) = me.call();
            if hung {
                std::future::pending::<()>().await;
            }
            let delay = me.state().action_delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            me.apply(&id, &action)
        })
    }

    fn set_cpu(
        &self,
        id: String,
        quota: i64,
        period: i64,
    ) -> BoxFuture<'static, Result<(), DockerError>> {
        let me = self.clone();
        Box::pin(async move {
            let (_call, hung) = me.call();
            if hung {
                std::future::pending::<()>().await;
            }
            let mut s = me.state();
            s.lifts.push(id.clone());
            if let Some(e) = s.fail.get_mut(&id).and_then(VecDeque::pop_front) {
                return Err(e);
            }
            let Some(c) = s.containers.get_mut(&id) else {
                return Err(DockerError::ContainerGone {
                    message: format!("No such container: {id}"),
                });
            };
            // As Docker does: 0 means "unchanged", -1 unlimited.
            c.cpu_quota = if quota <= 0 { -1 } else { quota };
            if period > 0 {
                c.cpu_period = period;
            }
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), DockerError>> {
        let me = self.clone();
        Box::pin(async move {
            if me.state().hung {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Err(DockerError::Timeout(Duration::from_secs(1)));
            }
            Ok(())
        })
    }
}

struct FakeLink(FakeDocker);

impl Link for FakeLink {
    fn poll(&mut self) -> Option<LinkMsg> {
        self.0.state().link.pop_front()
    }
}

/// Opt-in values that must not opt in (FAULT-MATRIX L3), plus a 1 MiB one built by the caller.
pub const HOSTILE_VALUES: [&str; 7] = ["TRUE", "yes", "true ", "true\n", "tгue", "1", ""];

/// The label every test opts in with.
pub const LABEL: &str = "sentinel.heal";
pub const OPT_IN: (&str, &str) = (LABEL, "true");

/// Short timings for tests: seconds, not minutes.
pub fn test_cfg() -> HealConfig {
    let mut c = HealConfig {
        api_timeout_secs: 1.0,
        grace_secs: 2.0,
        verify_secs: 5.0,
        action_timeout_secs: 5.0,
        permit_wait_secs: 2.0,
        storm_hold_secs: 0.0,
        ..HealConfig::default()
    };
    c.backoff.initial_secs = 1.0;
    c.backoff.max_secs = 4.0;
    c
}

/// The engine on a fake Docker and a paused clock. Use in `#[tokio::test(start_paused =
/// true)]`.
pub struct Harness {
    pub engine: HealEngine,
    pub docker: FakeDocker,
    pub now: Instant,
    pub audit_path: PathBuf,
    pub interval: Duration,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Docker up from the start.
    pub fn new(cfg: HealConfig) -> Self {
        let h = Self::without_docker(cfg);
        h.docker.connect();
        h
    }

    /// No Docker message yet: the test says what the link reports.
    pub fn without_docker(cfg: HealConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::with_audit(cfg, dir.path().join("audit.jsonl"), dir)
    }

    pub fn with_audit(cfg: HealConfig, audit_path: PathBuf, dir: tempfile::TempDir) -> Self {
        let docker = FakeDocker::default();
        let engine =
            HealEngine::new(cfg, &audit_path, docker.link(), Arc::default()).expect("valid");
        Self {
            engine,
            docker,
            now: Instant::now(),
            audit_path,
            interval: Duration::from_secs(1),
            _dir: dir,
        }
    }

    /// Move the engine's clock and tokio's together, letting spawned actions run.
    pub async fn advance(&mut self, d: Duration) {
        tokio::time::advance(d).await;
        self.now += d;
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    pub async fn tick(&mut self) {
        self.engine.tick(self.now).await;
    }

    /// One interval (with these container anomalies), then a tick to reap.
    pub async fn interval_with(&mut self, anomalies: &[ContainerAnomaly]) {
        self.engine.on_interval(self.now, anomalies).await;
        self.advance(Duration::from_millis(1)).await;
        self.tick().await;
    }

    /// `total` of intervals (every `self.interval`) and ticks (every 250 ms between).
    pub async fn run(&mut self, total: Duration) {
        self.run_with(total, &[]).await;
    }

    pub async fn run_with(&mut self, total: Duration, anomalies: &[ContainerAnomaly]) {
        let end = self.now + total;
        while self.now < end {
            self.interval_with(anomalies).await;
            let mut left = self.interval.saturating_sub(Duration::from_millis(1));
            while !left.is_zero() {
                let step = left.min(Duration::from_millis(250));
                self.advance(step).await;
                self.tick().await;
                left -= step;
            }
        }
    }

    pub fn snapshot(&self) -> HealStatus {
        self.engine.snapshot(self.now)
    }

    /// Every audit line, parsed (each must parse and carry the mandatory keys).
    pub fn audit(&self) -> Vec<AuditRecord> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
            .collect()
    }

    /// Audit lines about `id` with this decision (and reason).
    pub fn count(&self, id: &str, decision: Decision, reason: Option<&str>) -> usize {
        self.audit()
            .iter()
            .filter(|r| {
                r.container_id == id
                    && r.decision == decision
                    && reason.is_none_or(|x| r.reason == x)
            })
            .count()
    }

    /// Breaker states of `id` as the audit recorded its transitions, in order.
    pub fn breaker_path(&self, id: &str) -> Vec<(crate::model::BreakerState, Option<f64>)> {
        self.audit()
            .iter()
            .filter(|r| r.container_id == id && r.decision == Decision::Breaker)
            .filter_map(|r| r.breaker.map(|b| (b, r.wait_secs)))
            .collect()
    }
}
