//! Healing engine: anomaly / Docker-health / death / HTTP-probe triggers -> rules -> one safety
//! gate -> bounded, timed Docker actions -> append-only audit log.
//!
//! # API for the daemon
//!
//! ```ignore
//! let cfg: HealConfig = config.heal;            // `[heal]` + `[[heal.rules]]`, validated
//! let mut heal = HealEngine::new(cfg, Path::new("/var/log/sentinel/heal-audit.jsonl"))?;
//! loop {
//!     tokio::select! {
//!         _ = tick.tick() => heal.tick().await,                       // every ~250 ms
//!         iv = intervals.recv() => {                                  // every drained interval
//!             heal.on_interval(Instant::now(), &container_anomalies).await;
//!             interval.healing = serde_json::to_value(heal.snapshot())?;   // `healing` / `actions`
//!         }
//!         _ = shutdown.recv() => { heal.shutdown().await; break }
//!     }
//! }
//! ```
//!
//! * `HealEngine::new` validates the config, opens the audit log and spawns the Docker watcher
//!   task (connect + negotiate the API version, stream container events, ping; reconnect with
//!   capped exponential back-off). Must be called inside a tokio runtime.
//! * `tick()` is cheap: it applies watcher messages (Docker up/down, events), collects finished
//!   actions, moves breakers on the monotonic clock (OPEN -> HALF_OPEN on time, D12) and reacts
//!   to health/death events at once (after the storm guard's `storm_hold_secs`, default 1 s).
//!   Its Docker calls, like those of `on_interval`, are cut off after half an interval (D3).
//! * `on_interval(now, anomalies)` advances the k-interval triggers (anomalies, HTTP probes),
//!   re-reads the full container list (so events missed while Docker was away are recovered) and
//!   evaluates every rule.
//! * `snapshot()` is the `healing` object of the JSON interval: Docker state (`up` /
//!   `monitor_only`), breakers per container and global, counters, last N audit records.
//! * `shutdown()` cancels in-flight actions (audited `cancelled_shutdown`, not breaker failures).
//!
//! Every action passes through `gate::Gate::decide` (the only place that says yes) and is
//! written to the audit log *before* it runs; an action that cannot be audited is not taken.
//! State machines (`breaker`, `backoff`, `gate`) are plain structs over an injected `Instant`;
//! the async code here only moves values between them, Docker and the audit log.

pub mod audit;
pub mod backoff;
pub mod breaker;
pub mod config;
pub mod docker;
pub mod executor;
pub mod gate;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use audit::{AuditLog, AuditRecord, for_log};
use breaker::BreakerState;
use config::{ConfigError, HealConfig, Trigger, parse_probe_url, secs};
use docker::{ContainerInfo, DockerClient, DockerError, WatchCounters, WatchMsg};
use executor::{ExecOutcome, Executor};
use gate::{
    Consent, Facts, Finished, Gate, Grant, Request, Restored, ScopedTransition, SkipReason,
    StormGuard, Verdict,
};

pub use crate::model::{
    ActionKind, ContainerBreaker, Decision, DockerState, HealCounters, HealState, HealStatus,
};
use rules::Streaks;

pub use config::HealConfig as Config;

/// Hand-off from detection: an anomaly attributed to one container in this interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerAnomaly {
    /// Full or short Docker container id (as resolved from the cgroup).
    pub container_id: String,
    /// Signal name the rule's `trigger.signal` matches (e.g. `cpu`, `runq_latency`, `tcp_retrans`).
    pub signal: String,
    #[serde(default)]
    pub score: f64,
}

#[derive(Debug, Default)]
struct Tracked {
    name: String,
    stopped_by_operator: bool,
    /// Events before this instant are echoes of sentinel's own action.
    own_until: Option<Instant>,
    /// Destroyed while an action was in flight: forget after the action is reaped.
    gone: bool,
}

struct InFlight {
    id: String,
    name: String,
    rule: usize,
    grant: Grant,
    started: Instant,
}

/// Echoes of sentinel's own action (kill/stop/die/start events) arrive a little after the API
/// call returns; they must not be read as an operator's stop.
const OWN_EVENT_WINDOW: Duration = Duration::from_secs(3);
/// A `die` is judged this long after the event, so that the `stop` event a `docker stop` sends
/// right after its `die` is seen first (otherwise an operator stop would look like a crash).
const DIE_SETTLE: Duration = Duration::from_millis(1500);

pub struct HealEngine {
    cfg: HealConfig,
    gate: Gate,
    audit: AuditLog,
    exec: Executor,
    watch_rx: Option<mpsc::Receiver<WatchMsg>>,
    watch_counters: Arc<WatchCounters>,
    client: Option<DockerClient>,
    docker: DockerState,
    docker_reason: Option<String>,
    tasks: JoinSet<ExecOutcome>,
    inflight: HashMap<tokio::task::Id, InFlight>,
    containers: HashMap<String, Tracked>,
    streaks: Streaks,
    last_skip: HashMap<(String, usize), SkipReason>,
    dirty: BTreeSet<String>,
    settle: Vec<(Instant, String)>,
    resync: bool,
    warned_denied: HashSet<String>,
    counters: HealCounters,
    window_count: usize,
    storm: StormGuard,
    /// Opted-in containers at the last full pass (the storm guard's denominator).
    labelled: usize,
    /// Time between the last two `on_interval` calls: sets the budget of a pass.
    interval_est: Option<Duration>,
    last_interval: Option<Instant>,
    /// After a pass was cut short, the tick leaves Docker alone until then.
    slow_until: Option<Instant>,
    /// Containers whose state came from the audit log: the first full pass drops the gone.
    restored_ids: Vec<String>,
}

/// Longest bytes of an existing audit log read back at start-up (its tail).
const PAST_TAIL: u64 = 4 << 20;

/// A breaker restored OPEN: container id, name, seconds left of its wait.
type Reopened = (String, String, f64);

/// What earlier sentinel processes decided, from the tail of the audit log: the actions
/// (`intent` lines) and the breakers last OPEN or HALF_OPEN, within the longest window any
/// limit looks back. Unreadable or foreign lines are skipped. Also returns, for the audit,
/// each restored OPEN breaker with the seconds left of its wait.
fn read_past(
    path: &Path,
    cfg: &HealConfig,
    now: Instant,
    wall: SystemTime,
) -> (BTreeMap<String, Restored>, Vec<Reopened>) {
    use std::io::{Read, Seek, SeekFrom};
    let mut past: BTreeMap<String, Restored> = BTreeMap::new();
    let Ok(mut f) = std::fs::File::open(path) else {
        return (past, Vec::new());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(PAST_TAIL);
    let mut text = String::new();
    if f.seek(SeekFrom::Start(start)).is_err()
        || f.take(PAST_TAIL).read_to_string(&mut text).is_err()
    {
        return (past, Vec::new());
    }
    let horizon = cfg
        .rules
        .iter()
        .map(|r| r.limit_window_secs.max(r.cooldown_secs))
        .chain([
            cfg.global_cap.window_secs,
            cfg.backoff.reset_after_secs,
            cfg.breaker.open_max_secs,
        ])
        .fold(0.0, f64::max);
    // (name, opened at, wait) per container whose breaker was last OPEN or HALF_OPEN.
    let mut breakers: BTreeMap<String, (String, Instant, Duration)> = BTreeMap::new();
    for line in text.lines() {
        let Ok(r) = serde_json::from_str::<AuditRecord>(line) else {
            continue;
        };
        let Ok(ts) = humantime::parse_rfc3339_weak(&r.ts) else {
            continue;
        };
        let age = wall.duration_since(ts).unwrap_or(Duration::ZERO);
        if age.as_secs_f64() > horizon || r.container_id.is_empty() {
            continue;
        }
        let Some(at) = now.checked_sub(age) else {
            continue;
        };
        match r.decision {
            Decision::Intent => {
                if let Some(rule) = cfg
                    .rules
                    .iter()
                    .position(|x| Some(&x.name) == r.rule.as_ref())
                {
                    past.entry(r.container_id)
                        .or_default()
                        .actions
                        .push((rule, at));
                }
            }
            Decision::Breaker => match r.breaker {
                Some(BreakerState::Open) => {
                    let wait = secs(r.wait_secs.unwrap_or(cfg.breaker.open_secs));
                    breakers.insert(r.container_id, (r.container_name, at, wait));
                }
                // HALF_OPEN: restored as OPEN whose wait has elapsed (one trial, not CLOSED).
                Some(BreakerState::HalfOpen) => {
                    if let Some(b) = breakers.get_mut(&r.container_id) {
                        b.1 = at.checked_sub(b.2).unwrap_or(at);
                    }
                }
                _ => {
                    breakers.remove(&r.container_id);
                }
            },
            _ => {}
        }
    }
    let mut reopened = Vec::new();
    for (id, (name, at, wait)) in breakers {
        let left = (at + wait).saturating_duration_since(now).as_secs_f64();
        past.entry(id.clone()).or_default().open = Some((at, wait));
        reopened.push((id, name, left));
    }
    (past, reopened)
}

impl HealEngine {
    /// Validate and open the audit log. `docker` is the shared watcher's channel
    /// (`containers::docker::Watcher`): the connection and the container events.
    pub fn new(
        cfg: HealConfig,
        audit_path: &Path,
        docker: mpsc::Receiver<WatchMsg>,
        watch_counters: Arc<WatchCounters>,
    ) -> Result<Self, Vec<ConfigError>> {
        cfg.validate()?;
        let (watch_rx, docker) = if cfg.enabled {
            (Some(docker), DockerState::Connecting)
        } else {
            (None, DockerState::Disabled)
        };
        let mut gate = Gate::new(&cfg);
        let (past, reopened) = read_past(audit_path, &cfg, Instant::now(), SystemTime::now());
        gate.restore(&past);
        let restored_ids: Vec<String> = past.keys().cloned().collect();
        let mut audit = AuditLog::open(audit_path, cfg.recent_actions);
        for (id, name, remaining) in reopened {
            let mut r = AuditRecord::new(&id, &name, Decision::Breaker, "restored");
            r.from = Some(BreakerState::Closed);
            r.breaker = Some(BreakerState::Open);
            r.wait_secs = Some(remaining);
            let _ = audit.write(r);
        }
        Ok(Self {
            gate,
            restored_ids,
            audit,
            exec: Executor::new(
                cfg.max_concurrent_actions,
                cfg.permit_wait(),
                cfg.action_timeout(),
            ),
            watch_rx,
            watch_counters,
            client: None,
            docker,
            docker_reason: None,
            tasks: JoinSet::new(),
            inflight: HashMap::new(),
            containers: HashMap::new(),
            streaks: Streaks::default(),
            last_skip: HashMap::new(),
            dirty: BTreeSet::new(),
            settle: Vec::new(),
            resync: false,
            warned_denied: HashSet::new(),
            counters: HealCounters::default(),
            window_count: 0,
            storm: StormGuard::new(&cfg),
            labelled: 0,
            interval_est: None,
            last_interval: None,
            slow_until: None,
            cfg,
        })
    }

    pub fn docker_state(&self) -> DockerState {
        self.docker
    }

    /// Containers the gate currently keeps state for (bounded by live containers, D4).
    pub fn tracked_containers(&self) -> usize {
        self.gate.tracked()
    }

    /// Frequent, cheap work; see the module docs.
    pub async fn tick(&mut self) {
        self.tick_inner(true).await;
    }

    /// `evaluate` false: bookkeeping only (the caller's full pass follows and covers every
    /// container the tick would have looked at, so a hung Docker costs one budget, not two).
    async fn tick_inner(&mut self, evaluate: bool) {
        let now = Instant::now();
        self.drain_watcher(now);
        self.reap(now);
        let tr = self.gate.tick(now);
        self.audit_transitions(&tr);
        let mut due = Vec::new();
        self.settle.retain(|(t, id)| {
            if *t <= now {
                due.push(id.clone());
                false
            } else {
                true
            }
        });
        self.dirty.extend(due);
        let slow = self.slow_until.is_some_and(|t| now < t);
        if evaluate && self.docker == DockerState::Up && !slow {
            if self.resync {
                self.resync = false;
                self.bounded_pass(now, None).await;
            } else if !self.dirty.is_empty() {
                let ids: Vec<String> = std::mem::take(&mut self.dirty).into_iter().collect();
                self.bounded_pass(now, Some(ids)).await;
            }
        }
        self.window_count = self.gate.actions_in_global_window(now);
    }

    /// Time a pass over Docker may take: half an interval (so a hung Docker cannot stretch the
    /// caller's cadence to 2 intervals, D3), at least 200 ms, at most the API time-out.
    fn pass_budget(&self) -> Duration {
        let api = self.cfg.api_timeout();
        match self.interval_est {
            Some(iv) => (iv / 2).clamp(Duration::from_millis(200).min(api), api),
            None => api,
        }
    }

    /// A full pass (`ids` None) or an evaluation of `ids`, cut off at the pass budget. Cutting
    /// is safe: a pass only acts after all its inspections returned, and the next full pass
    /// re-reads everything.
    async fn bounded_pass(&mut self, now: Instant, ids: Option<Vec<String>>) {
        let budget = self.pass_budget();
        let done = match ids {
            None => tokio::time::timeout(budget, self.full_pass(now)).await,
            Some(ids) => tokio::time::timeout(budget, self.evaluate(now, ids)).await,
        };
        if done.is_err() {
            self.counters.passes_cut_short += 1;
            self.slow_until = Some(Instant::now() + self.interval_est.unwrap_or(budget));
            tracing::debug!(
                budget_ms = budget.as_millis() as u64,
                "Docker pass cut short"
            );
        } else {
            self.slow_until = None;
        }
    }

    /// Once per drained interval: advance k-interval triggers, re-read all containers, evaluate.
    pub async fn on_interval(&mut self, now: Instant, anomalies: &[ContainerAnomaly]) {
        if self.docker == DockerState::Disabled {
            return;
        }
        if let Some(last) = self.last_interval {
            let gap = now.saturating_duration_since(last);
            if !gap.is_zero() {
                self.interval_est = Some(gap);
            }
        }
        self.last_interval = Some(now);
        self.tick_inner(false).await;
        self.resync = false;
        self.advance_anomalies(anomalies);
        self.run_probes().await;
        if self.docker == DockerState::Up {
            self.bounded_pass(now, None).await;
        } else {
            self.audit_unreachable_due();
        }
        self.window_count = self.gate.actions_in_global_window(now);
    }

    /// Cancel in-flight actions (audited `cancelled_shutdown`, no breaker effect) and stop the
    /// watcher.
    pub async fn shutdown(&mut self) {
        let now = Instant::now();
        self.tasks.abort_all();
        while let Some(res) = self.tasks.join_next_with_id().await {
            self.settle_task(now, res);
        }
        self.watch_rx = None;
    }

    /// The engine's state (`healing` in the interval) and its recent decisions.
    pub fn snapshot(&self) -> HealStatus {
        let now = Instant::now();
        let (global, per) = self.gate.view(now);
        let mut c = self.counters.clone();
        c.audit_write_errors = self.audit.write_errors();
        c.dropped_events = self.watch_counters.dropped_events.load(Ordering::Relaxed);
        c.docker_reconnects = self.watch_counters.reconnects.load(Ordering::Relaxed);
        let state = HealState {
            docker: self.docker,
            docker_reason: self.docker_reason.clone(),
            api_version: self.client.as_ref().map(|c| c.api_version.clone()),
            dry_run: self.cfg.dry_run,
            global_breaker: global,
            breakers: per
                .into_iter()
                .map(|(id, view)| ContainerBreaker {
                    container_name: self
                        .containers
                        .get(&id)
                        .map(|t| t.name.clone())
                        .unwrap_or_default(),
                    container_id: id,
                    view,
                })
                .collect(),
            actions_in_global_window: self.window_count,
            in_flight: self.inflight.len(),
            permits_available: self.exec.available(),
            permits_total: self.exec.size(),
            counters: c,
        };
        HealStatus {
            state,
            recent: self.audit.recent().cloned().collect(),
        }
    }

    // ---- watcher messages -------------------------------------------------------------------

    fn drain_watcher(&mut self, now: Instant) {
        let mut msgs = Vec::new();
        if let Some(rx) = self.watch_rx.as_mut() {
            while let Ok(m) = rx.try_recv() {
                msgs.push(m);
            }
        }
        for m in msgs {
            match m {
                WatchMsg::Connected(client) => {
                    let was = self.docker;
                    let mut r = AuditRecord::new("", "", Decision::Docker, "reachable");
                    r.outcome = Some(format!("api {}", client.api_version));
                    if was == DockerState::Unreachable {
                        r.error = self.docker_reason.clone();
                    }
                    self.write_audit(r);
                    self.client = Some(client);
                    self.docker = DockerState::Up;
                    self.docker_reason = None;
                    // Events may have been missed while away: re-read everything (D2).
                    self.resync = true;
                }
                WatchMsg::Disconnected(reason) => {
                    self.client = None;
                    if self.docker != DockerState::Unreachable {
                        // Audited once per transition (the watcher logs it, D1).
                        let mut r = AuditRecord::new("", "", Decision::Docker, "unreachable");
                        r.error = Some(audit::truncate(&reason, audit::MAX_TEXT));
                        self.write_audit(r);
                    }
                    self.docker = DockerState::Unreachable;
                    self.docker_reason = Some(audit::truncate(&reason, audit::MAX_TEXT));
                }
                WatchMsg::Event(ev) => self.on_event(now, ev),
            }
        }
    }

    fn on_event(&mut self, now: Instant, ev: docker::ContainerEvent) {
        let a = ev.action.as_str();
        if a.starts_with("exec_") {
            // Health checks and exec actions: noise here.
            return;
        }
        let own = self.gate.in_flight(&ev.id)
            || self
                .containers
                .get(&ev.id)
                .and_then(|t| t.own_until)
                .is_some_and(|u| ev.at <= u);
        match a {
            "destroy" => {
                if self.gate.in_flight(&ev.id) {
                    self.containers.entry(ev.id.clone()).or_default().gone = true;
                } else {
                    self.forget(now, &ev.id);
                }
            }
            "stop" | "kill" if !own => {
                self.containers
                    .entry(ev.id.clone())
                    .or_default()
                    .stopped_by_operator = true;
            }
            "start" | "restart" if !own => {
                if let Some(t) = self.containers.get_mut(&ev.id) {
                    t.stopped_by_operator = false;
                }
            }
            "die" | "oom" => self.settle.push((now + DIE_SETTLE, ev.id)),
            _ if a.starts_with("health_status") => {
                self.dirty.insert(ev.id);
            }
            _ => {}
        }
    }

    fn forget(&mut self, now: Instant, id: &str) {
        self.gate.forget(now, id);
        self.containers.remove(id);
        self.last_skip.retain(|(c, _), _| c != id);
        self.streaks.anomaly.retain(|(c, _), _| c != id);
        self.dirty.remove(id);
        self.storm.forget(id);
    }

    // ---- triggers ---------------------------------------------------------------------------

    fn advance_anomalies(&mut self, anomalies: &[ContainerAnomaly]) {
        for (idx, rule) in self.cfg.rules.iter().enumerate() {
            let Trigger::Anomaly { signal, .. } = &rule.trigger else {
                continue;
            };
            let hit: HashSet<String> = anomalies
                .iter()
                .filter(|a| &a.signal == signal)
                .map(|a| self.resolve_id(&a.container_id))
                .collect();
            self.streaks
                .anomaly
                .retain(|(c, r), _| *r != idx || hit.contains(c));
            for c in hit {
                *self.streaks.anomaly.entry((c, idx)).or_insert(0) += 1;
            }
        }
    }

    /// Map a short id to a known full id (cgroup paths carry the full one, humans the short).
    fn resolve_id(&self, id: &str) -> String {
        if id.len() < 64
            && let Some(full) = self.containers.keys().find(|k| k.starts_with(id))
        {
            return full.clone();
        }
        id.to_string()
    }

    async fn run_probes(&mut self) {
        for (idx, rule) in self.cfg.rules.iter().enumerate() {
            let Trigger::HttpProbe {
                url,
                timeout_ms,
                max_latency_ms,
                ..
            } = &rule.trigger
            else {
                continue;
            };
            let Ok(target) = parse_probe_url(url) else {
                continue; // refused at validation; unreachable in practice
            };
            let res = rules::http_probe(&target, Duration::from_millis(*timeout_ms)).await;
            let failure = match res {
                Err(e) => Some(e),
                Ok(lat) => max_latency_ms
                    .filter(|max| lat > Duration::from_millis(*max))
                    .map(|max| format!("latency {} ms > {max} ms", lat.as_millis())),
            };
            match failure {
                Some(why) => {
                    let e = self.streaks.probe.entry(idx).or_default();
                    e.0 += 1;
                    e.1 = why;
                }
                None => {
                    self.streaks.probe.remove(&idx);
                }
            }
        }
    }

    /// Docker is away: every (container, rule) whose k-interval trigger fires is due but
    /// skipped, audited once per state change.
    fn audit_unreachable_due(&mut self) {
        let mut due: Vec<(String, usize, String)> = Vec::new();
        for (idx, rule) in self.cfg.rules.iter().enumerate() {
            match &rule.trigger {
                Trigger::Anomaly { intervals, signal } => {
                    for ((c, r), n) in &self.streaks.anomaly {
                        if *r == idx && *n >= *intervals {
                            due.push((
                                c.clone(),
                                idx,
                                format!("anomaly: {signal} for {n} intervals"),
                            ));
                        }
                    }
                }
                Trigger::HttpProbe { intervals, .. } => {
                    if let Some((n, why)) = self.streaks.probe.get(&idx)
                        && *n >= *intervals
                    {
                        let names = rule.selector.names.join(",");
                        due.push((names, idx, format!("http_probe: {why}")));
                    }
                }
                _ => {}
            }
        }
        due.sort();
        for (id, idx, trigger) in due {
            let name = self
                .containers
                .get(&id)
                .map(|t| t.name.clone())
                .unwrap_or_default();
            self.skip(&id, &name, idx, SkipReason::DockerUnreachable, &trigger);
        }
    }

    // ---- evaluation -------------------------------------------------------------------------

    async fn full_pass(&mut self, now: Instant) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let list = match client.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "container list failed");
                return;
            }
        };
        let label = self.cfg.label.clone();
        self.labelled = list
            .iter()
            .filter(|s| s.labels.get(&label).map(String::as_str) == Some("true"))
            .count();
        let live: HashSet<&str> = list.iter().map(|s| s.id.as_str()).collect();
        // Containers that vanished without a `destroy` event we saw (Docker was away).
        let vanished: Vec<String> = self
            .containers
            .keys()
            .filter(|id| !live.contains(id.as_str()) && !self.gate.in_flight(id))
            .cloned()
            .collect();
        // State restored from the audit log for containers that are gone by now.
        for id in std::mem::take(&mut self.restored_ids) {
            if !live.contains(id.as_str()) && !self.gate.in_flight(&id) {
                self.gate.forget(now, &id);
            }
        }
        for id in vanished {
            self.forget(now, &id);
        }
        let streak_rules: Vec<usize> = self
            .cfg
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.trigger, Trigger::HttpProbe { .. }))
            .map(|(i, _)| i)
            .collect();
        // Inspect only what can fire or has state: saves two API calls per quiet container.
        let ids: Vec<String> = list
            .iter()
            .filter(|s| {
                s.status.contains("unhealthy")
                    || s.state == "exited"
                    || s.state == "dead"
                    || s.state == "restarting"
                    || self.containers.contains_key(&s.id)
                    || self.streaks.anomaly.keys().any(|(c, _)| c == &s.id)
                    || (!streak_rules.is_empty()
                        && self.streaks.probe.keys().any(|k| streak_rules.contains(k)))
            })
            .map(|s| s.id.clone())
            .collect();
        self.dirty.clear();
        self.evaluate(now, ids).await;
    }

    /// Inspect `ids`, find fired rules, apply the storm guard, ask the gate, start allowed
    /// actions.
    async fn evaluate(&mut self, now: Instant, ids: Vec<String>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        struct Cand {
            info: ContainerInfo,
            rule: usize,
            trigger: String,
            facts: Facts,
        }
        let mut cands: Vec<Cand> = Vec::new();
        let mut quiet: Vec<(String, usize)> = Vec::new();
        let mut quiet_ids: Vec<String> = Vec::new();
        for id in ids {
            let info = match client.inspect(&id).await {
                Ok(i) => i,
                Err(DockerError::ContainerGone { .. }) => {
                    if !self.gate.in_flight(&id) {
                        self.forget(now, &id);
                    }
                    continue;
                }
                Err(e) => {
                    // Docker hung or gone: stop here instead of paying one time-out per
                    // container; the watcher's ping decides about monitor-only (D3).
                    tracing::debug!(error = %e, "inspect failed; evaluation cut short");
                    break;
                }
            };
            let t = self.containers.entry(info.id.clone()).or_default();
            t.name = info.name.clone();
            if info.running {
                t.stopped_by_operator = false;
            } else if rules::looks_stopped_on_purpose(&info) && !self.gate.in_flight(&info.id) {
                // Stopped before we could see its events: a 143/137 exit is what
                // `docker stop`/`docker kill` leaves; leave it alone.
                t.stopped_by_operator = true;
            }
            let stopped = t.stopped_by_operator;
            let consent = rules::consent(&self.cfg, &info);
            let mut fired_any = false;
            for (idx, rule) in self.cfg.rules.iter().enumerate() {
                if !rules::selects(&rule.selector, &info) {
                    continue;
                }
                match rules::fires(idx, rule, &info, &self.streaks, stopped) {
                    None => quiet.push((info.id.clone(), idx)),
                    Some(trigger) => {
                        fired_any = true;
                        let restart_policy_active = match rule.trigger {
                            Trigger::Died { .. } => info.policy_will_restart(),
                            _ => info.restarting,
                        };
                        cands.push(Cand {
                            info: info.clone(),
                            rule: idx,
                            trigger,
                            facts: Facts {
                                consent,
                                stopped_by_operator: stopped,
                                restart_policy_active,
                            },
                        });
                    }
                }
            }
            if !fired_any {
                quiet_ids.push(info.id.clone());
            }
            if fired_any && consent == Consent::Labelled {
                // The container is sick again: if an action on it is being verified, it failed.
                let tr = self.gate.on_trigger(now, &info.id);
                self.audit_transitions(&tr);
            }
        }
        // A rule that no longer fires: the next skip for it is news again.
        for k in quiet {
            self.last_skip.remove(&k);
        }
        // Storm guard (D8), on every evaluation, event-driven or full.
        // Only containers sentinel could act on count and are held: one stopped by an operator
        // or being restarted by Docker gets its own skip reason from the gate at once.
        let actionable = |c: &Cand| {
            c.facts.consent == Consent::Labelled
                && !c.facts.stopped_by_operator
                && !c.facts.restart_policy_active
        };
        let due: Vec<String> = cands
            .iter()
            .filter(|c| actionable(c))
            .map(|c| c.info.id.clone())
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect();
        let due_refs: Vec<&str> = due.iter().map(String::as_str).collect();
        let quiet_refs: Vec<&str> = quiet_ids.iter().map(String::as_str).collect();
        let v = self
            .storm
            .observe(&self.cfg, now, &due_refs, &quiet_refs, self.labelled);
        if let Some(started) = v.changed {
            let reason = if started { "storm_guard" } else { "storm_over" };
            let mut r = AuditRecord::new("", "(host)", Decision::Alert, reason);
            r.error = Some(format!(
                "{} of {} opted-in containers tripped within {} s; {}",
                v.tripped,
                self.labelled,
                self.cfg.storm_window_secs,
                if started {
                    "acting on none of them"
                } else {
                    "healing resumes"
                }
            ));
            if started {
                tracing::error!("{}", r.error.as_deref().unwrap_or_default());
            } else {
                tracing::warn!("{}", r.error.as_deref().unwrap_or_default());
            }
            self.write_audit(r);
        }
        if v.storm {
            for c in cands.iter().filter(|c| actionable(c)) {
                self.skip(
                    &c.info.id,
                    &c.info.name,
                    c.rule,
                    SkipReason::StormGuard,
                    &c.trigger,
                );
            }
            cands.retain(|c| !actionable(c));
        } else {
            // Held: tripped too recently for the storm count to be complete. Judged again
            // when the hold ends.
            let held: BTreeSet<String> = cands
                .iter()
                .filter(|c| actionable(c) && !self.storm.ready(now, &c.info.id))
                .map(|c| c.info.id.clone())
                .collect();
            for id in &held {
                if let Some(at) = self.storm.ready_at(id)
                    && !self.settle.iter().any(|(t, i)| i == id && *t == at)
                {
                    self.settle.push((at, id.clone()));
                }
            }
            cands.retain(|c| !held.contains(&c.info.id));
        }
        let mut acted: HashSet<String> = HashSet::new();
        for c in cands {
            if acted.contains(&c.info.id) {
                continue; // one action per container per evaluation
            }
            let rule = &self.cfg.rules[c.rule];
            let req = Request {
                container_id: &c.info.id,
                rule: c.rule,
                cooldown: secs(rule.cooldown_secs),
                rule_limit: (rule.max_actions, secs(rule.limit_window_secs)),
                facts: c.facts,
                docker_up: self.docker == DockerState::Up,
                dry_run: self.cfg.dry_run,
            };
            match self.gate.decide(now, &req) {
                Verdict::Skip(reason) => {
                    self.skip(&c.info.id, &c.info.name, c.rule, reason, &c.trigger);
                }
                Verdict::Allow(grant) => {
                    acted.insert(c.info.id.clone());
                    self.start_action(now, &client, &c.info, c.rule, grant, &c.trigger);
                }
            }
        }
    }

    fn start_action(
        &mut self,
        now: Instant,
        client: &DockerClient,
        info: &ContainerInfo,
        rule: usize,
        grant: Grant,
        trigger: &str,
    ) {
        let r = self.cfg.rules[rule].clone();
        let mut rec = AuditRecord::new(&info.id, &info.name, Decision::Intent, trigger);
        rec.rule = Some(r.name.clone());
        rec.action = Some(r.action.kind());
        rec.breaker = self.gate.breaker_state(&info.id);
        if !self.write_audit(rec) {
            // Fail safe: an action that cannot be audited is not taken.
            self.gate.finish(now, &info.id, grant, Finished::Neutral);
            self.counters.not_recorded += 1;
            tracing::error!(
                container = %for_log(&info.name),
                "audit log not writable: action not taken"
            );
            return;
        }
        self.last_skip.remove(&(info.id.clone(), rule));
        let fut = self.exec.run(client.clone(), info.id.clone(), r.action);
        let handle = self.tasks.spawn(fut);
        self.inflight.insert(
            handle.id(),
            InFlight {
                id: info.id.clone(),
                name: info.name.clone(),
                rule,
                grant,
                started: now,
            },
        );
    }

    fn reap(&mut self, now: Instant) {
        while let Some(res) = self.tasks.try_join_next_with_id() {
            self.settle_task(now, res);
        }
    }

    fn settle_task(
        &mut self,
        now: Instant,
        res: Result<(tokio::task::Id, ExecOutcome), tokio::task::JoinError>,
    ) {
        let (task_id, outcome) = match res {
            Ok((id, o)) => (id, Some(o)),
            Err(e) => (
                e.id(),
                if e.is_cancelled() {
                    None
                } else {
                    Some(ExecOutcome::Failed {
                        duration: Duration::ZERO,
                        error: DockerError::Api {
                            status: 0,
                            message: "action task panicked".into(),
                        },
                    })
                },
            ),
        };
        let Some(f) = self.inflight.remove(&task_id) else {
            return;
        };
        let rule = &self.cfg.rules[f.rule];
        let action = rule.action.kind();
        let mut rec = AuditRecord::new(&f.id, &f.name, Decision::Taken, "");
        rec.rule = Some(rule.name.clone());
        rec.action = Some(action);
        let how = match outcome {
            None => {
                rec.decision = Decision::Cancelled;
                rec.reason = "cancelled_shutdown".into();
                rec.duration_ms = Some(now.saturating_duration_since(f.started).as_millis() as u64);
                Finished::Neutral
            }
            Some(ExecOutcome::PermitWaitTimeout { waited }) => {
                rec.decision = Decision::NotRecorded;
                rec.reason = "permit_wait_timeout".into();
                rec.duration_ms = Some(waited.as_millis() as u64);
                self.counters.not_recorded += 1;
                Finished::Neutral
            }
            Some(ExecOutcome::Done {
                duration,
                exit_code,
            }) => {
                rec.duration_ms = Some(duration.as_millis() as u64);
                rec.exit_code = exit_code;
                if exit_code.is_some_and(|c| c != 0) {
                    rec.decision = Decision::Failed;
                    rec.reason = "exec_exit_nonzero".into();
                    rec.outcome = Some("failure".into());
                    self.counters.actions_failed += 1;
                    Finished::ContainerFailure
                } else {
                    rec.reason = "done".into();
                    rec.outcome = Some("success".into());
                    self.counters.actions_taken += 1;
                    Finished::Done
                }
            }
            Some(ExecOutcome::Failed { duration, error }) => {
                rec.decision = Decision::Failed;
                rec.reason = error.kind().into();
                rec.outcome = Some("failure".into());
                rec.duration_ms = Some(duration.as_millis() as u64);
                rec.error = Some(audit::truncate(&error.to_string(), audit::MAX_TEXT));
                self.counters.actions_failed += 1;
                match &error {
                    DockerError::DeniedByApi { method, path, .. } => {
                        // One warning per endpoint, never a container failure (D13).
                        let key = format!("{method} {}", path.split('/').nth(3).unwrap_or(""));
                        if self.warned_denied.insert(key) {
                            tracing::warn!(error = %for_log(&error.to_string()), "Docker API denied an action");
                        }
                        Finished::Neutral
                    }
                    DockerError::DockerUnreachable { .. } | DockerError::Timeout(_) => {
                        Finished::DockerFailure
                    }
                    _ => Finished::ContainerFailure,
                }
            }
            Some(ExecOutcome::TimedOut {
                duration,
                docker_alive,
            }) => {
                rec.decision = Decision::Failed;
                rec.reason = "timeout".into();
                rec.outcome = Some("timeout".into());
                rec.duration_ms = Some(duration.as_millis() as u64);
                rec.error = Some(format!(
                    "cut off after {:.1} s (action_timeout_secs {})",
                    duration.as_secs_f64(),
                    self.cfg.action_timeout_secs
                ));
                self.counters.actions_failed += 1;
                if docker_alive {
                    Finished::ContainerFailure
                } else {
                    Finished::DockerFailure
                }
            }
        };
        let tr = self.gate.finish(now, &f.id, f.grant, how);
        if let Some(t) = self.containers.get_mut(&f.id) {
            t.own_until = Some(Instant::now() + OWN_EVENT_WINDOW);
        }
        rec.breaker = self.gate.breaker_state(&f.id);
        rec.global_breaker = Some(self.gate.global_state());
        let failures = self
            .gate
            .view(now)
            .1
            .into_iter()
            .find(|(id, _)| id == &f.id)
            .map(|(_, v)| v.failures_in_window);
        if let (Some(n), true) = (failures, rec.decision == Decision::Failed) {
            rec.error = Some(format!(
                "{} (breaker failures in window: {n})",
                rec.error.unwrap_or_default()
            ));
        }
        self.write_audit(rec);
        self.audit_transitions(&tr);
        if self.containers.get(&f.id).is_some_and(|t| t.gone) {
            self.forget(now, &f.id);
        }
    }

    fn skip(&mut self, id: &str, name: &str, rule: usize, reason: SkipReason, trigger: &str) {
        // Once per state change, not once per interval (L1).
        if self.last_skip.get(&(id.to_string(), rule)) == Some(&reason) {
            return;
        }
        self.last_skip.insert((id.to_string(), rule), reason);
        self.counters.skipped += 1;
        let r = &self.cfg.rules[rule];
        let mut rec = AuditRecord::new(id, name, Decision::Skipped, reason.as_str());
        rec.rule = Some(r.name.clone());
        rec.action = Some(r.action.kind());
        rec.outcome = Some(audit::truncate(trigger, audit::MAX_TEXT));
        rec.breaker = self.gate.breaker_state(id);
        rec.dry_run = reason == SkipReason::DryRun;
        self.write_audit(rec);
    }

    fn audit_transitions(&mut self, tr: &[ScopedTransition]) {
        for t in tr {
            let id = t.container_id.clone().unwrap_or_default();
            let name = if id.is_empty() {
                "(global)".to_string()
            } else {
                self.containers
                    .get(&id)
                    .map(|c| c.name.clone())
                    .unwrap_or_default()
            };
            let mut r = AuditRecord::new(&id, &name, Decision::Breaker, t.transition.reason);
            r.breaker = Some(t.transition.to);
            r.from = Some(t.transition.from);
            r.wait_secs = t.transition.wait_secs;
            if t.transition.to == BreakerState::Open {
                tracing::warn!(
                    container = %for_log(&name),
                    wait_secs = t.transition.wait_secs.unwrap_or_default(),
                    "breaker OPEN: no healing actions until it half-opens"
                );
            }
            self.write_audit(r);
        }
    }

    /// True when the line was written.
    fn write_audit(&mut self, r: AuditRecord) -> bool {
        match self.audit.write(r) {
            Ok(()) => true,
            Err(e) => {
                // Counted in the snapshot; logged at most once per 100 failures.
                if self.audit.write_errors() % 100 == 1 {
                    tracing::error!(error = %e, "audit write failed; actions are suspended");
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod restore_tests {
    use super::gate::{Consent, Facts, Request};
    use super::*;

    fn line(id: &str, age_secs: f64, decision: &str, extra: &str) -> String {
        let ts = time::OffsetDateTime::now_utc() - time::Duration::seconds_f64(age_secs);
        let ts = ts
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        format!(
            r#"{{"ts":"{ts}","container_id":"{id}","container_name":"n","decision":"{decision}","reason":"r"{extra}}}"#
        )
    }

    fn req(id: &str, limit: u32) -> Request<'_> {
        Request {
            container_id: id,
            rule: 0,
            cooldown: Duration::ZERO,
            rule_limit: (limit, Duration::from_secs(60)),
            facts: Facts {
                consent: Consent::Labelled,
                stopped_by_operator: false,
                restart_policy_active: false,
            },
            docker_up: true,
            dry_run: false,
        }
    }

    /// Regression (chaos soak, seed 7): a SIGKILLed and restarted sentinel forgot its
    /// actions and breakers, and restarted a flapper 6 times within 60 s (rule limit 4).
    #[test]
    fn restart_keeps_limits_and_open_breakers_from_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rule = r#","rule":"autoheal","action":"restart""#;
        let lines = [
            line("old", 4000.0, "intent", rule),
            line("a", 40.0, "intent", rule),
            line("a", 30.0, "intent", rule),
            line("a", 20.0, "intent", rule),
            line("a", 5.0, "intent", rule),
            line("b", 3.0, "intent", rule),
            line(
                "b",
                2.0,
                "breaker",
                r#","from":"CLOSED","breaker":"OPEN","wait_secs":16.0"#,
            ),
            line(
                "c",
                30.0,
                "breaker",
                r#","from":"CLOSED","breaker":"OPEN","wait_secs":4.0"#,
            ),
            line(
                "c",
                20.0,
                "breaker",
                r#","from":"OPEN","breaker":"HALF_OPEN""#,
            ),
            line(
                "c",
                10.0,
                "breaker",
                r#","from":"HALF_OPEN","breaker":"CLOSED""#,
            ),
            "not json".to_string(),
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let mut cfg = HealConfig::default();
        cfg.rules[0].max_actions = 4;
        cfg.rules[0].limit_window_secs = 60.0;
        cfg.backoff.initial_secs = 1.0;
        cfg.backoff.max_secs = 1.0;
        cfg.grace_secs = 1.0;
        let now = Instant::now();
        let (past, reopened) = read_past(&path, &cfg, now, SystemTime::now());
        assert_eq!(past["a"].actions.len(), 4);
        assert!(!past.contains_key("old"), "older than every window");
        assert!(
            past.get("c").is_none_or(|r| r.open.is_none()),
            "closed since"
        );
        assert_eq!(reopened.len(), 1);
        assert_eq!(reopened[0].0, "b");
        assert!(
            reopened[0].2 > 12.0 && reopened[0].2 <= 14.5,
            "{reopened:?}"
        );
        let mut gate = Gate::new(&cfg);
        gate.restore(&past);
        assert_eq!(
            gate.decide(now, &req("a", 4)),
            Verdict::Skip(SkipReason::RuleLimit)
        );
        assert_eq!(gate.breaker_state("b"), Some(BreakerState::Open));
        assert_eq!(
            gate.decide(now + Duration::from_secs(2), &req("b", 4)),
            Verdict::Skip(SkipReason::BreakerOpen)
        );
        assert!(matches!(
            gate.decide(now, &req("fresh", 4)),
            Verdict::Allow(_)
        ));
    }
}
