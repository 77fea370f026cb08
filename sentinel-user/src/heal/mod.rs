//! Healing engine: anomaly / Docker-health / death / HTTP-probe triggers -> rules -> one safety
//! gate -> bounded, timed Docker actions -> append-only audit log.
//!
//! # API for the daemon
//!
//! ```ignore
//! let mut heal = HealEngine::new(cfg, audit_path, Box::new(watcher_events), counters)?;
//! loop {
//!     tokio::select! {
//!         _ = tick.tick() => heal.tick(Instant::now()).await,          // every ~250 ms
//!         iv = intervals.recv() => {                                  // every drained interval
//!             heal.on_interval(Instant::now(), &container_anomalies).await;
//!             let status = heal.snapshot(Instant::now());  // `healing` / `actions` of the interval
//!         }
//!         _ = shutdown.recv() => { heal.shutdown(Instant::now()).await; break }
//!     }
//! }
//! ```
//!
//! * `new` validates the config, opens the audit log and books what earlier processes decided
//!   (`audit::read_past`). Docker comes through a [`docker::Link`]: the shared watcher's
//!   connection and container events (`containers::docker`), or a test's fake.
//! * `tick(now)` is cheap: it applies link messages (Docker up/down, events), collects finished
//!   actions and probes, moves breakers on the monotonic clock (OPEN -> HALF_OPEN on time, D12)
//!   and reacts to health/death events at once (after the storm hold, default 1 s).
//! * `on_interval(now, anomalies)` advances the k-interval triggers, starts the next HTTP
//!   probes (they run in their own tasks, each bounded by its time-out, never in this call),
//!   re-reads the full container list (events missed while Docker was away are recovered) and
//!   evaluates every rule. Every pass over Docker is cut off after half an interval (D3).
//! * `snapshot(now)` is the `healing` object of the interval and its recent decisions.
//! * `shutdown(now)` cancels in-flight actions (audited `cancelled_shutdown`, not failures).
//!
//! Where each concern lives: [`triggers`] (what fires, pure functions and streaks), [`probe`]
//! (HTTP probes off the drain loop), `pass` (reading Docker and asking the gate), [`gate`] (the
//! one place that decides, storm guard included), `lifecycle` (intent, run, outcome, audit),
//! [`audit`] (the log and its replay at start-up), [`docker`] (the Docker trait). State
//! machines (`breaker`, `backoff`, `gate`) are plain structs over an injected `Instant`; the
//! async code only moves values between them, Docker and the audit log.

pub mod audit;
pub mod backoff;
pub mod breaker;
mod cap;
#[cfg(test)]
mod cap_tests;
pub mod config;
pub mod docker;
pub(crate) mod executor;
#[cfg(test)]
mod fake;
pub(crate) mod gate;
mod lifecycle;
#[cfg(test)]
mod matrix_tests;
mod pass;
pub(crate) mod probe;
mod runtimes;
pub(crate) mod triggers;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;

use audit::{AuditLog, AuditRecord, truncate};
use breaker::BreakerState;
use config::{ConfigError, HealConfig, Signal};
use docker::{ContainerEvent, DockerApi, Link, LinkMsg, WatchCounters};
use executor::{ExecOutcome, Executor};
use gate::{Gate, Grant, SkipReason};
use probe::Prober;
use triggers::Streaks;

pub use crate::model::{
    ActionKind, ContainerBreaker, Decision, DockerState, HealCounters, HealState, HealStatus,
};

/// Hand-off from detection: an anomaly attributed to one container in this interval.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerAnomaly {
    /// Full or short Docker container id (as resolved from the cgroup).
    pub container_id: String,
    /// The container signal a rule's `trigger.signal` matches.
    pub signal: Signal,
    pub score: f64,
    /// On `runq_latency`: the container's top contender in the interval and its share of the
    /// wait (`noisy 62%`), written into the trigger text of the decisions it leads to.
    pub slowed_by: Option<String>,
    /// The top contender (a container name, or `host`) and how much of the wait it caused:
    /// whom a `cap_contender` rule caps, if it weighs enough.
    pub contender: Option<Contender>,
}

/// A waiting container's top contender in one interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Contender {
    pub name: String,
    /// Its share of the container's whole run-queue wait (0..=1).
    pub share: f64,
    /// The wait behind it as a fraction of the interval's wall time (0..=1).
    pub wait_fraction: f64,
}

/// What the engine learned about a container from Docker's events and inspections.
#[derive(Debug, Default)]
struct Tracked {
    name: String,
    stopped_by_operator: bool,
    /// Events before this instant are echoes of sentinel's own action.
    own_until: Option<Instant>,
    /// Destroyed while an action was in flight: forget after the action is reaped.
    gone: bool,
}

/// An action running now.
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
    link: Option<Box<dyn Link>>,
    watch_counters: Arc<WatchCounters>,
    api: Option<Arc<dyn DockerApi>>,
    api_version: Option<String>,
    docker: DockerState,
    docker_reason: Option<String>,
    tasks: JoinSet<ExecOutcome>,
    inflight: HashMap<tokio::task::Id, InFlight>,
    containers: HashMap<String, Tracked>,
    streaks: Streaks,
    prober: Prober,
    last_skip: HashMap<(String, usize), SkipReason>,
    dirty: BTreeSet<String>,
    settle: Vec<(Instant, String)>,
    resync: bool,
    warned_denied: HashSet<String>,
    counters: HealCounters,
    window_count: usize,
    /// Opted-in containers at the last full pass (the storm guard's denominator).
    labelled: usize,
    /// Time between the last two `on_interval` calls: sets the budget of a pass.
    interval_est: Option<Duration>,
    last_interval: Option<Instant>,
    /// After a pass was cut short, the tick leaves Docker alone until then.
    slow_until: Option<Instant>,
    /// Containers whose state came from the audit log: the first full pass drops the gone.
    restored_ids: Vec<String>,
    /// Containers of other runtimes whose anomaly was audited as not Docker's (once each).
    not_docker: runtimes::NotDocker,
    /// CPU caps set by `cap_contender` (or left by an earlier process), by container id.
    caps: HashMap<String, cap::Cap>,
}

impl HealEngine {
    /// Validate, open the audit log, book what earlier processes decided. `link` brings the
    /// Docker connection and its container events.
    pub fn new(
        cfg: HealConfig,
        audit_path: &Path,
        link: Box<dyn Link>,
        watch_counters: Arc<WatchCounters>,
    ) -> Result<Self, Vec<ConfigError>> {
        cfg.validate()?;
        let (link, docker) = if cfg.enabled {
            (Some(link), DockerState::Connecting)
        } else {
            (None, DockerState::Disabled)
        };
        let mut gate = Gate::new(&cfg);
        let (past, reopened) =
            audit::read_past(audit_path, &cfg, Instant::now(), SystemTime::now());
        gate.restore(&past);
        let restored_ids: Vec<String> = past.keys().cloned().collect();
        // Caps an earlier process set and never lifted: lifted as soon as Docker answers.
        let caps = audit::unlifted_caps(audit_path)
            .into_iter()
            .map(|(id, name, cpu)| {
                let cap = cap::Cap {
                    name,
                    reason: None,
                    lift_after: 0,
                    calm: 0,
                    cpu,
                    lift_failed: false,
                };
                (id, cap)
            })
            .collect();
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
            caps,
            restored_ids,
            not_docker: runtimes::NotDocker::default(),
            audit,
            exec: Executor::new(
                cfg.max_concurrent_actions,
                cfg.permit_wait(),
                cfg.action_timeout(),
            ),
            link,
            watch_counters,
            api: None,
            api_version: None,
            docker,
            docker_reason: None,
            tasks: JoinSet::new(),
            inflight: HashMap::new(),
            containers: HashMap::new(),
            streaks: Streaks::default(),
            prober: Prober::default(),
            last_skip: HashMap::new(),
            dirty: BTreeSet::new(),
            settle: Vec::new(),
            resync: false,
            warned_denied: HashSet::new(),
            counters: HealCounters::default(),
            window_count: 0,
            labelled: 0,
            interval_est: None,
            last_interval: None,
            slow_until: None,
            cfg,
        })
    }

    /// Containers the gate currently keeps state for (bounded by live containers, D4).
    pub fn tracked_containers(&self) -> usize {
        self.gate.tracked()
    }

    /// Frequent, cheap work; see the module docs.
    pub async fn tick(&mut self, now: Instant) {
        self.tick_inner(now, true).await;
    }

    /// `evaluate` false: bookkeeping only (the caller's full pass follows and covers every
    /// container the tick would have looked at, so a hung Docker costs one budget, not two).
    async fn tick_inner(&mut self, now: Instant, evaluate: bool) {
        self.drain_link(now);
        self.reap(now);
        let results = self.prober.collect();
        self.streaks.apply_probes(results);
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

    /// Once per drained interval: advance k-interval triggers, start the next probes, re-read
    /// all containers, evaluate.
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
        self.tick_inner(now, false).await;
        self.resync = false;
        let hits: Vec<(String, Signal)> = anomalies
            .iter()
            .map(|a| (self.resolve_id(&a.container_id), a.signal))
            .collect();
        self.streaks.advance_anomalies(&self.cfg.rules, &hits);
        self.advance_caps(&hits).await;
        self.streaks.slowed_by = anomalies
            .iter()
            .filter_map(|a| {
                let by = a.slowed_by.as_ref()?;
                Some((
                    (self.resolve_id(&a.container_id), a.signal),
                    crate::sanitize::truncate(by, 120),
                ))
            })
            .collect();
        self.streaks.contender = anomalies
            .iter()
            .filter_map(|a| {
                let by = a.contender.clone()?;
                Some(((self.resolve_id(&a.container_id), a.signal), by))
            })
            .collect();
        self.prober.launch(&self.cfg.rules);
        if self.docker == DockerState::Up {
            self.bounded_pass(now, None).await;
        } else {
            self.audit_unreachable_due(now);
        }
        self.window_count = self.gate.actions_in_global_window(now);
    }

    /// Cancel in-flight actions (audited `cancelled_shutdown`, no breaker effect), lift the
    /// CPU caps sentinel set, and stop listening to Docker.
    pub async fn shutdown(&mut self, now: Instant) {
        self.tasks.abort_all();
        while let Some(res) = self.tasks.join_next_with_id().await {
            self.settle_task(now, res);
        }
        if self.docker == DockerState::Up {
            self.lift_all("shutdown").await;
        }
        self.prober.abort();
        self.link = None;
    }

    /// The engine's state (`healing` in the interval) and its recent decisions.
    pub fn snapshot(&self, now: Instant) -> HealStatus {
        let (global, per) = self.gate.view(now);
        let mut c = self.counters.clone();
        c.audit_write_errors = self.audit.write_errors();
        c.audit_records = self.audit.written();
        c.audit_rotations = self.audit.reopened();
        c.decisions = self.audit.decided();
        c.dropped_events = self.watch_counters.dropped_events.load(Ordering::Relaxed);
        c.docker_reconnects = self.watch_counters.reconnects.load(Ordering::Relaxed);
        let state = HealState {
            docker: self.docker,
            docker_reason: self.docker_reason.clone(),
            api_version: self.api_version.clone(),
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

    // ---- the link to Docker ------------------------------------------------------------

    fn drain_link(&mut self, now: Instant) {
        let mut msgs = Vec::new();
        if let Some(link) = self.link.as_mut() {
            while let Some(m) = link.poll() {
                msgs.push(m);
            }
        }
        for m in msgs {
            match m {
                LinkMsg::Up { api, api_version } => {
                    let mut r = AuditRecord::new("", "", Decision::Docker, "reachable");
                    r.outcome = Some(format!("api {api_version}"));
                    if self.docker == DockerState::Unreachable {
                        r.error = self.docker_reason.clone();
                    }
                    self.write_audit(r);
                    self.api = Some(api);
                    self.api_version = Some(api_version);
                    self.docker = DockerState::Up;
                    self.docker_reason = None;
                    // Events may have been missed while away: re-read everything (D2).
                    self.resync = true;
                }
                LinkMsg::Down(reason) => {
                    self.api = None;
                    self.api_version = None;
                    if self.docker != DockerState::Unreachable {
                        // Audited once per transition (the watcher logs it, D1).
                        let mut r = AuditRecord::new("", "", Decision::Docker, "unreachable");
                        r.error = Some(truncate(&reason, audit::MAX_TEXT));
                        self.write_audit(r);
                    }
                    self.docker = DockerState::Unreachable;
                    self.docker_reason = Some(truncate(&reason, audit::MAX_TEXT));
                }
                LinkMsg::Event(ev) => self.on_event(now, ev),
            }
        }
    }

    fn on_event(&mut self, now: Instant, ev: ContainerEvent) {
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
        self.streaks.forget(id);
        self.dirty.remove(id);
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

    /// Docker is away: every (container, rule) whose k-interval trigger fires is due, and the
    /// gate skips it (`docker_unreachable`), audited once per state change.
    fn audit_unreachable_due(&mut self, now: Instant) {
        for (id, idx, trigger) in self.streaks.due(&self.cfg.rules) {
            let name = self
                .containers
                .get(&id)
                .map(|t| t.name.clone())
                .unwrap_or_default();
            let verdict = self.gate.decide(now, &self.request(&id, idx, None));
            if let gate::Verdict::Skip(reason) = verdict {
                self.skip(&id, &name, idx, reason, &trigger);
            }
        }
    }

    /// The gate's question for (container, rule); `facts` is `None` when Docker could not be
    /// asked (the gate then refuses before it needs them).
    fn request<'a>(
        &self,
        id: &'a str,
        rule: usize,
        facts: Option<gate::Facts>,
    ) -> gate::Request<'a> {
        let r = &self.cfg.rules[rule];
        gate::Request {
            container_id: id,
            rule,
            cooldown: config::secs(r.cooldown_secs),
            rule_limit: (r.max_actions, config::secs(r.limit_window_secs)),
            facts: facts.unwrap_or(gate::Facts {
                consent: gate::Consent::NotLabelled,
                stopped_by_operator: false,
                restart_policy_active: false,
            }),
            docker_up: self.docker == DockerState::Up && facts.is_some(),
            dry_run: self.cfg.dry_run,
        }
    }
}
