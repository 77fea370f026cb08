//! Chaos soak (FAULT-MATRIX S1): the seeded nemesis schedule, the recorded histories and the
//! checker that judges a run from those histories only (Jepsen-style). The harness that
//! produces the histories is `tests/chaos.rs`; CHAOS.md explains the checks.
//!
//! All times are Unix seconds (f64, wall clock: the audit log's `ts` and Docker's `timeNano`
//! are wall-clock too, and the run never moves the clock).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

/// Slack for "written a moment after it happened" (audit lines, Docker events, samplers).
pub const TOL: f64 = 0.5;
/// Longest dockerd SIGSTOP the schedule makes (see [`schedule`]).
pub const MAX_DOCKER_PAUSE: f64 = 10.0;

// ---------------------------------------------------------------------------------------------
// Seeded schedule

/// splitmix64: tiny, seedable, and the same on every platform, so a seed replays a schedule.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// dockerd SIGTERMed, down for `secs`, started again.
    DockerStop { secs: f64 },
    /// dockerd SIGSTOPped for `secs`.
    DockerPause { secs: f64 },
    /// `docker kill`, started again by the harness after `restore`.
    ContainerKill { slot: usize, restore: f64 },
    /// `docker stop -t 1`, started again after `restore`.
    ContainerStop { slot: usize, restore: f64 },
    /// `docker rm -f`, recreated (opted in or not) after `restore`.
    ContainerRemove {
        slot: usize,
        restore: f64,
        labelled: bool,
    },
    /// `rm /ok`: the health check fails; a restart heals it.
    Unhealthy { slot: usize },
    /// `/sick` marker: unhealthy and stays so across restarts (a flapper for the breaker).
    Sick { slot: usize },
    /// Marker gone, `/ok` back.
    Healthy { slot: usize },
    /// `rm /ok` in every container at once (the storm guard's case).
    UnhealthyAll,
    /// Sentinel SIGSTOPped for `secs`.
    SentinelPause { secs: f64 },
    /// Sentinel SIGKILLed, restarted after `secs` (exactly once per run).
    SentinelKill { secs: f64 },
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::DockerStop { .. } => "docker_stop",
            Fault::DockerPause { .. } => "docker_pause",
            Fault::ContainerKill { .. } => "container_kill",
            Fault::ContainerStop { .. } => "container_stop",
            Fault::ContainerRemove { .. } => "container_remove",
            Fault::Unhealthy { .. } => "health_unhealthy",
            Fault::Sick { .. } => "health_sick",
            Fault::Healthy { .. } => "health_healthy",
            Fault::UnhealthyAll => "health_unhealthy_all",
            Fault::SentinelPause { .. } => "sentinel_pause",
            Fault::SentinelKill { .. } => "sentinel_kill",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Seconds after the start of the nemesis.
    pub at: f64,
    pub fault: Fault,
}

/// The fault schedule: a function of the seed, the length and the population only.
pub fn schedule(seed: u64, secs: f64, slots: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let warmup = 15.0;
    let cooldown = 25.0;
    let end = (secs - cooldown).max(warmup + 1.0);
    let kill_at = warmup + (end - warmup) * rng.range(0.4, 0.6);
    let mut killed = false;
    let mut out = Vec::new();
    let mut t = warmup;
    // (weight, kind): health flips dominate, they are what makes sentinel act.
    // Sick outweighs Healthy so that flappers live long enough to open breakers.
    const KINDS: &[(u64, u8)] = &[
        (3, 0),
        (3, 1),
        (2, 2),
        (2, 3),
        (2, 4),
        (9, 5),
        (5, 6),
        (3, 7),
        (3, 8),
        (1, 9),
    ];
    let total: u64 = KINDS.iter().map(|k| k.0).sum();
    while t < end {
        if !killed && t >= kill_at {
            killed = true;
            out.push(Step {
                at: t,
                fault: Fault::SentinelKill {
                    secs: rng.range(1.5, 4.0),
                },
            });
            t += rng.range(6.0, 12.0);
            continue;
        }
        let mut pick = rng.below(total);
        let mut kind = 0;
        for &(w, k) in KINDS {
            if pick < w {
                kind = k;
                break;
            }
            pick -= w;
        }
        let slot = rng.below(slots as u64) as usize;
        let restore = rng.range(2.0, 10.0);
        let fault = match kind {
            0 => Fault::DockerStop {
                secs: rng.range(2.0, 8.0),
            },
            1 => Fault::DockerPause {
                secs: rng.range(2.0, 10.0),
            },
            2 => Fault::ContainerKill { slot, restore },
            3 => Fault::ContainerStop { slot, restore },
            4 => Fault::ContainerRemove {
                slot,
                restore,
                labelled: rng.below(10) < 6,
            },
            5 => Fault::Unhealthy { slot },
            6 => Fault::Sick { slot },
            7 => Fault::Healthy { slot },
            8 => Fault::SentinelPause {
                secs: rng.range(2.0, 6.0),
            },
            _ => Fault::UnhealthyAll,
        };
        out.push(Step { at: t, fault });
        t += rng.range(2.0, 9.0);
    }
    if !killed {
        out.push(Step {
            at: end.min(kill_at),
            fault: Fault::SentinelKill { secs: 2.0 },
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Histories

#[derive(Clone, Debug, PartialEq)]
pub struct AuditLine {
    pub t: f64,
    pub id: String,
    pub decision: String,
    pub reason: String,
    pub action: Option<String>,
    pub breaker: Option<String>,
    pub from: Option<String>,
    pub wait_secs: Option<f64>,
}

impl AuditLine {
    /// One line of sentinel's audit log. `Err` names what is wrong with it.
    pub fn parse(line: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let ts = s("ts").ok_or_else(|| format!("no ts: {line}"))?;
        let t = humantime::parse_rfc3339_weak(&ts)
            .map_err(|e| format!("ts {ts}: {e}"))?
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs_f64();
        Ok(Self {
            t,
            id: s("container_id").ok_or_else(|| format!("no container_id: {line}"))?,
            decision: s("decision").ok_or_else(|| format!("no decision: {line}"))?,
            reason: s("reason").ok_or_else(|| format!("no reason: {line}"))?,
            action: s("action"),
            breaker: s("breaker"),
            from: s("from"),
            wait_secs: v.get("wait_secs").and_then(Value::as_f64),
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DockerEvent {
    pub t: f64,
    pub id: String,
    pub action: String,
    pub name: String,
    /// The container's labels (Docker puts them in the event's attributes).
    pub attrs: BTreeMap<String, String>,
}

impl DockerEvent {
    /// One line of `docker events --format '{{json .}}'`; `None` for non-container events.
    pub fn parse(line: &str) -> Result<Option<Self>, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
        if v["Type"] != "container" {
            return Ok(None);
        }
        let t = v["timeNano"]
            .as_i64()
            .ok_or_else(|| format!("no timeNano: {line}"))? as f64
            / 1e9;
        let attrs: BTreeMap<String, String> = v["Actor"]["Attributes"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Self {
            t,
            id: v["Actor"]["ID"].as_str().unwrap_or_default().to_string(),
            action: v["Action"].as_str().unwrap_or_default().to_string(),
            name: attrs.get("name").cloned().unwrap_or_default(),
            attrs,
        }))
    }
}

/// The kernel's program list at one moment, and which of them sentinel's process held.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgSample {
    pub t: f64,
    /// Every loaded program: (id, name).
    pub kernel: Vec<(u32, String)>,
    /// For each sentinel process alive at the sample: the program ids in its fd table (program
    /// fds and link fds both name a `prog_id` in fdinfo).
    pub held: Vec<(i32, Vec<u32>)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResSample {
    pub t: f64,
    pub pid: i32,
    pub rss_kib: u64,
    pub fds: usize,
}

/// What the nemesis did, as the harness wrote it down.
#[derive(Clone, Debug, PartialEq)]
pub enum NemesisEvent {
    SentinelStart {
        t: f64,
        pid: i32,
    },
    /// Reaped (SIGKILL or the final SIGTERM).
    SentinelExit {
        t: f64,
        pid: i32,
    },
    SentinelStopped {
        t: f64,
    },
    SentinelContinued {
        t: f64,
    },
    Fault {
        t: f64,
        kind: String,
        detail: String,
    },
}

impl NemesisEvent {
    pub fn t(&self) -> f64 {
        match self {
            NemesisEvent::SentinelStart { t, .. }
            | NemesisEvent::SentinelExit { t, .. }
            | NemesisEvent::SentinelStopped { t }
            | NemesisEvent::SentinelContinued { t }
            | NemesisEvent::Fault { t, .. } => *t,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Histories {
    pub audit: Vec<AuditLine>,
    pub docker: Vec<DockerEvent>,
    /// Times when no `docker events` stream was connected (dockerd down or restarting).
    pub docker_gaps: Vec<(f64, f64)>,
    pub progs: Vec<ProgSample>,
    pub res: Vec<ResSample>,
    pub nemesis: Vec<NemesisEvent>,
    /// End of the recorded run.
    pub end: f64,
}

#[derive(Clone, Debug)]
pub struct BreakerLimits {
    pub half_open_max_wait: f64,
}

/// The bounds the config promises, as the checker applies them.
#[derive(Clone, Debug)]
pub struct Limits {
    pub label: String,
    pub interval: f64,
    pub rule_max: usize,
    pub rule_window: f64,
    pub backoff_initial: f64,
    pub global_max: usize,
    pub global_window: f64,
    pub action_timeout: f64,
    pub breaker: BreakerLimits,
    pub global_breaker: BreakerLimits,
    pub rss_kib_max: u64,
    pub fds_max: usize,
}

pub const CHECKS: [&str; 6] = [
    "check 1 (opt-in)",
    "check 2 (action bounds)",
    "check 3 (breaker)",
    "check 4 (audit = Docker)",
    "check 5 (programs)",
    "check 6 (rss/fds)",
];

#[derive(Debug, Default)]
pub struct Report {
    /// Each starts with the check's name from [`CHECKS`].
    pub violations: Vec<String>,
    pub stats: BTreeMap<String, u64>,
}

impl Report {
    fn fail(&mut self, check: usize, msg: String) {
        self.violations
            .push(format!("{}: {msg}", CHECKS[check - 1]));
    }

    fn stat(&mut self, k: &str, n: u64) {
        *self.stats.entry(k.to_string()).or_default() += n;
    }

    pub fn failed(&self, check: usize) -> bool {
        let p = format!("{}:", CHECKS[check - 1]);
        self.violations.iter().any(|v| v.starts_with(&p))
    }
}

struct Run {
    pid: i32,
    start: f64,
    exit: f64,
}

fn runs(h: &Histories) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for e in &h.nemesis {
        match e {
            NemesisEvent::SentinelStart { t, pid } => out.push(Run {
                pid: *pid,
                start: *t,
                exit: f64::INFINITY,
            }),
            NemesisEvent::SentinelExit { t, pid } => {
                if let Some(r) = out.iter_mut().rev().find(|r| r.pid == *pid) {
                    r.exit = *t;
                }
            }
            _ => {}
        }
    }
    out
}

/// Intervals during which sentinel was SIGSTOPped.
fn stopped_spans(h: &Histories) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut from = None;
    for e in &h.nemesis {
        match e {
            NemesisEvent::SentinelStopped { t } => from = Some(*t),
            NemesisEvent::SentinelContinued { t } => {
                if let Some(f) = from.take() {
                    out.push((f, *t));
                }
            }
            _ => {}
        }
    }
    if let Some(f) = from {
        out.push((f, h.end));
    }
    out
}

fn overlap(spans: &[(f64, f64)], a: f64, b: f64) -> f64 {
    spans
        .iter()
        .map(|&(s, e)| (e.min(b) - s.max(a)).max(0.0))
        .sum()
}

/// Largest number of `times` (sorted) inside any half-open window of length `w`.
fn max_in_window(times: &[f64], w: f64) -> (usize, f64) {
    let mut best = (0, 0.0);
    let mut j = 0;
    for i in 0..times.len() {
        while times[i] - times[j] >= w {
            j += 1;
        }
        if i + 1 - j > best.0 {
            best = (i + 1 - j, times[j]);
        }
    }
    best
}

fn is_action(a: &AuditLine) -> bool {
    a.decision == "intent"
}

fn opted_in(attrs: &BTreeMap<String, String>, label: &str) -> bool {
    attrs.get(label).is_some_and(|v| v == "true")
}

/// Judge a run from its histories.
pub fn check(h: &Histories, lim: &Limits) -> Report {
    let mut r = Report::default();
    let mut audit = h.audit.clone();
    audit.sort_by(|a, b| a.t.total_cmp(&b.t));
    let mut docker = h.docker.clone();
    docker.sort_by(|a, b| a.t.total_cmp(&b.t));
    let runs = runs(h);
    let stopped = stopped_spans(h);
    // Labels and destruction time per container id, from Docker's own history.
    let mut labels: HashMap<&str, &BTreeMap<String, String>> = HashMap::new();
    let mut destroyed: HashMap<&str, f64> = HashMap::new();
    for e in &docker {
        labels.entry(e.id.as_str()).or_insert(&e.attrs);
        if e.action == "destroy" {
            destroyed.insert(e.id.as_str(), e.t);
        }
    }
    let restarts: Vec<&DockerEvent> = docker.iter().filter(|e| e.action == "restart").collect();
    let intents: Vec<&AuditLine> = audit.iter().filter(|a| is_action(a)).collect();
    r.stat("audit_lines", audit.len() as u64);
    r.stat("audit_intent", intents.len() as u64);
    for a in &audit {
        r.stat(
            &format!("audit_{}", a.decision),
            u64::from(a.decision != "intent"),
        );
    }
    r.stat("docker_events", docker.len() as u64);
    r.stat("docker_restarts", restarts.len() as u64);
    r.stat("sentinel_runs", runs.len() as u64);

    // 1. Opt-in at decision time: a container's labels are fixed at creation.
    for e in &restarts {
        if !opted_in(&e.attrs, &lim.label) {
            r.fail(
                1,
                format!(
                    "Docker restarted {} ({}) at {:.3} but it is not opted in ({}={:?})",
                    e.name,
                    short(&e.id),
                    e.t,
                    lim.label,
                    e.attrs.get(&lim.label)
                ),
            );
        }
    }
    for a in audit.iter().filter(|a| {
        matches!(a.decision.as_str(), "intent" | "taken" | "failed") && !a.id.is_empty()
    }) {
        match labels.get(a.id.as_str()) {
            Some(l) if opted_in(l, &lim.label) => {}
            Some(l) => r.fail(
                1,
                format!(
                    "audit {} on {} at {:.3} but the container is not opted in ({}={:?})",
                    a.decision,
                    short(&a.id),
                    a.t,
                    lim.label,
                    l.get(&lim.label)
                ),
            ),
            None => r.fail(
                1,
                format!(
                    "audit {} on {} at {:.3}: Docker's history never saw that container",
                    a.decision,
                    short(&a.id),
                    a.t
                ),
            ),
        }
    }

    // 2. Bounds: per container (rule limit, back-off spacing) and host-wide (global cap).
    // Docker's restart events lag the decision by up to the action time-out, so their window
    // is shortened by that much.
    let lag = lim.action_timeout + TOL;
    let mut per: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for a in &intents {
        per.entry(a.id.as_str()).or_default().push(a.t);
    }
    for (id, ts) in &per {
        let (n, from) = max_in_window(ts, lim.rule_window - TOL);
        if n > lim.rule_max {
            r.fail(
                2,
                format!(
                    "{} actions decided on {} within {:.0} s from {from:.3} (bound {})",
                    n,
                    short(id),
                    lim.rule_window,
                    lim.rule_max
                ),
            );
        }
        for w in ts.windows(2) {
            if w[1] - w[0] < lim.backoff_initial - TOL {
                r.fail(
                    2,
                    format!(
                        "two actions on {} {:.3} s apart at {:.3} (back-off at least {} s)",
                        short(id),
                        w[1] - w[0],
                        w[1],
                        lim.backoff_initial
                    ),
                );
            }
        }
    }
    let mut per_docker: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for e in &restarts {
        per_docker.entry(e.id.as_str()).or_default().push(e.t);
    }
    for (id, ts) in &per_docker {
        let (n, from) = max_in_window(ts, lim.rule_window - lag);
        if n > lim.rule_max {
            r.fail(
                2,
                format!(
                    "Docker restarted {} {} times within {:.0} s from {from:.3} (bound {})",
                    short(id),
                    n,
                    lim.rule_window - lag,
                    lim.rule_max
                ),
            );
        }
    }
    let all: Vec<f64> = intents.iter().map(|a| a.t).collect();
    let (n, from) = max_in_window(&all, lim.global_window - TOL);
    r.stat("max_actions_in_global_window", n as u64);
    if n > lim.global_max {
        r.fail(
            2,
            format!(
                "{n} actions host-wide within {:.0} s from {from:.3} (global cap {})",
                lim.global_window, lim.global_max
            ),
        );
    }
    let all: Vec<f64> = restarts.iter().map(|e| e.t).collect();
    let (n, from) = max_in_window(&all, lim.global_window - lag);
    if n > lim.global_max {
        r.fail(
            2,
            format!(
                "Docker saw {n} restarts host-wide within {:.0} s from {from:.3} (global cap {})",
                lim.global_window - lag,
                lim.global_max
            ),
        );
    }

    // 3. Breakers, per sentinel run (a restarted sentinel starts every breaker CLOSED).
    for run in &runs {
        let lines: Vec<&AuditLine> = audit
            .iter()
            .filter(|a| a.t >= run.start - TOL && a.t <= run.exit + TOL)
            .collect();
        check_breakers(&mut r, lim, run, &lines, &destroyed, &stopped, h.end);
    }

    // 4. Nothing unaudited, nothing claimed but not done.
    let mut used_intent = vec![false; intents.len()];
    for e in &restarts {
        if !opted_in(&e.attrs, &lim.label) {
            continue; // check 1 already named it
        }
        let m = intents.iter().enumerate().position(|(i, a)| {
            !used_intent[i]
                && a.id == e.id
                && a.action.as_deref() == Some("restart")
                && a.t <= e.t + TOL
                // Docker may finish a restart after sentinel's time-out cut it (dockerd was
                // SIGSTOPped mid-restart): allow the longest pause of the schedule on top.
                && e.t - a.t <= lim.action_timeout + MAX_DOCKER_PAUSE + 2.0 * TOL
        });
        match m {
            Some(i) => used_intent[i] = true,
            None => r.fail(
                4,
                format!(
                    "Docker restarted {} ({}) at {:.3} with no audit intent before it",
                    e.name,
                    short(&e.id),
                    e.t
                ),
            ),
        }
    }
    let mut used_event = vec![false; restarts.len()];
    let mut unobservable = 0;
    for (k, a) in audit.iter().enumerate() {
        if a.decision != "taken" || a.action.as_deref() != Some("restart") {
            continue;
        }
        let since = audit[..k]
            .iter()
            .rev()
            .find(|b| b.id == a.id && b.decision == "intent")
            .map_or(a.t - lim.action_timeout, |b| b.t);
        let m = restarts.iter().enumerate().position(|(i, e)| {
            !used_event[i] && e.id == a.id && e.t >= since - TOL && e.t <= a.t + TOL
        });
        match m {
            Some(i) => used_event[i] = true,
            None if h
                .docker_gaps
                .iter()
                .any(|&(g0, g1)| g0 <= a.t + TOL && g1 >= since - TOL) =>
            {
                unobservable += 1;
            }
            None => r.fail(
                4,
                format!(
                    "audit says restart taken on {} at {:.3} (intent {since:.3}) but Docker \
                     recorded no restart of it",
                    short(&a.id),
                    a.t
                ),
            ),
        }
    }
    r.stat("taken_unobservable", unobservable);

    // 5. Programs: every id a sentinel process held is gone from the kernel once it exited.
    let mut ours: HashMap<i32, HashSet<u32>> = HashMap::new();
    for s in &h.progs {
        for (pid, ids) in &s.held {
            ours.entry(*pid).or_default().extend(ids.iter().copied());
        }
    }
    r.stat("prog_samples", h.progs.len() as u64);
    for (i, run) in runs.iter().enumerate() {
        let held = ours.get(&run.pid).cloned().unwrap_or_default();
        r.stat("programs_held_max", 0);
        let e = r.stats.entry("programs_held_max".into()).or_default();
        *e = (*e).max(held.len() as u64);
        if held.is_empty() {
            r.fail(
                5,
                format!(
                    "no program of sentinel pid {} was ever observed: nothing to judge",
                    run.pid
                ),
            );
            continue;
        }
        if !run.exit.is_finite() {
            r.fail(5, format!("sentinel pid {} never exited", run.pid));
            continue;
        }
        // Freeing after close is deferred (RCU): judge from 1 s after the reap.
        let next = runs.get(i + 1).map_or(f64::INFINITY, |n| n.start);
        let after: Vec<&ProgSample> = h.progs.iter().filter(|s| s.t >= run.exit + 1.0).collect();
        if !after.iter().any(|s| s.t < next) {
            r.fail(
                5,
                format!(
                    "no program-list sample between sentinel pid {}'s exit ({:.3}) + 1 s and \
                     the next start",
                    run.pid, run.exit
                ),
            );
        }
        for s in after {
            let left: Vec<String> = s
                .kernel
                .iter()
                .filter(|(id, _)| held.contains(id))
                .map(|(id, n)| format!("{id}:{n}"))
                .collect();
            if !left.is_empty() {
                r.fail(
                    5,
                    format!(
                        "{} program(s) of sentinel pid {} (exited {:.3}) still loaded at {:.3}: {}",
                        left.len(),
                        run.pid,
                        run.exit,
                        s.t,
                        left.join(", ")
                    ),
                );
                break;
            }
        }
    }

    // 6. Memory and fds below fixed ceilings for the whole run.
    for run in &runs {
        let samples: Vec<&ResSample> = h.res.iter().filter(|s| s.pid == run.pid).collect();
        if samples.is_empty() {
            r.fail(6, format!("no RSS/fd sample of sentinel pid {}", run.pid));
        }
        for s in samples {
            let e = r.stats.entry("rss_kib_max".into()).or_default();
            *e = (*e).max(s.rss_kib);
            let e = r.stats.entry("fds_max".into()).or_default();
            *e = (*e).max(s.fds as u64);
            if s.rss_kib > lim.rss_kib_max {
                r.fail(
                    6,
                    format!(
                        "sentinel pid {} RSS {} KiB at {:.3} (ceiling {} KiB)",
                        s.pid, s.rss_kib, s.t, lim.rss_kib_max
                    ),
                );
            }
            if s.fds > lim.fds_max {
                r.fail(
                    6,
                    format!(
                        "sentinel pid {} has {} open fds at {:.3} (ceiling {})",
                        s.pid, s.fds, s.t, lim.fds_max
                    ),
                );
            }
        }
    }
    r.stat("res_samples", h.res.len() as u64);
    r
}

fn short(id: &str) -> &str {
    if id.is_empty() {
        "(global)"
    } else {
        &id[..id.len().min(12)]
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum St {
    Closed,
    Open { since: f64, wait: f64 },
    HalfOpen { since: f64, trial: Option<f64> },
}

fn st_name(s: St) -> &'static str {
    match s {
        St::Closed => "CLOSED",
        St::Open { .. } => "OPEN",
        St::HalfOpen { .. } => "HALF_OPEN",
    }
}

/// Legal transitions and bounded time in OPEN / HALF_OPEN for every breaker of one run. The
/// bound is stretched by the time sentinel was SIGSTOPped inside the episode: a stopped
/// process cannot move a breaker, and moving it late by exactly that long is the behaviour
/// we want (the monotonic clock kept running).
fn check_breakers(
    r: &mut Report,
    lim: &Limits,
    run: &Run,
    lines: &[&AuditLine],
    destroyed: &HashMap<&str, f64>,
    stopped: &[(f64, f64)],
    end: f64,
) {
    let mut state: BTreeMap<&str, St> = BTreeMap::new();
    // Which container holds the global breaker's trial.
    let mut global_trial_of: Option<&str> = None;
    let bound_open = |since: f64, wait: f64, until: f64| {
        wait + lim.interval + TOL + overlap(stopped, since, until)
    };
    let half_max = |id: &str| {
        if id.is_empty() {
            lim.global_breaker.half_open_max_wait
        } else {
            lim.breaker.half_open_max_wait
        }
    };
    for a in lines {
        // Trials: an action decided while HALF_OPEN starts the clock; its end (any outcome
        // line) stops it (a failure also writes HALF_OPEN -> OPEN right after).
        if a.decision == "intent" {
            if let Some(St::HalfOpen { since, trial: None }) = state.get(a.id.as_str()).copied() {
                state.insert(
                    &a.id,
                    St::HalfOpen {
                        since,
                        trial: Some(a.t),
                    },
                );
            }
            if let Some(St::HalfOpen { since, trial: None }) = state.get("").copied() {
                state.insert(
                    "",
                    St::HalfOpen {
                        since,
                        trial: Some(a.t),
                    },
                );
                global_trial_of = Some(a.id.as_str());
            }
            if let Some(St::Open { .. }) = state.get("") {
                r.fail(
                    3,
                    format!(
                        "action decided on {} at {:.3} while the global breaker was OPEN",
                        short(&a.id),
                        a.t
                    ),
                );
            }
            if let Some(St::Open { .. }) = state.get(a.id.as_str()) {
                r.fail(
                    3,
                    format!(
                        "action decided on {} at {:.3} while its breaker was OPEN",
                        short(&a.id),
                        a.t
                    ),
                );
            }
        }
        if matches!(a.decision.as_str(), "failed" | "not_recorded" | "cancelled") {
            if let Some(St::HalfOpen { since, .. }) = state.get(a.id.as_str()).copied() {
                state.insert(&a.id, St::HalfOpen { since, trial: None });
            }
            if global_trial_of == Some(a.id.as_str())
                && let Some(St::HalfOpen { since, .. }) = state.get("").copied()
            {
                state.insert("", St::HalfOpen { since, trial: None });
            }
        }
        if a.decision != "breaker" {
            continue;
        }
        let cur = state.get(a.id.as_str()).copied().unwrap_or(St::Closed);
        let from = a.from.as_deref().unwrap_or("?");
        let to = a.breaker.as_deref().unwrap_or("?");
        if from != st_name(cur) {
            r.fail(
                3,
                format!(
                    "breaker of {} at {:.3}: recorded {from} -> {to} but it was {}",
                    short(&a.id),
                    a.t,
                    st_name(cur)
                ),
            );
        }
        r.stat(&format!("breaker_{from}->{to}"), 1);
        let next = match (cur, to) {
            (St::Closed | St::HalfOpen { .. }, "OPEN") => {
                let Some(wait) = a.wait_secs else {
                    r.fail(
                        3,
                        format!(
                            "breaker of {} OPEN at {:.3} without wait_secs",
                            short(&a.id),
                            a.t
                        ),
                    );
                    continue;
                };
                St::Open { since: a.t, wait }
            }
            (St::Open { since, wait }, "HALF_OPEN") => {
                if a.t - since < wait - TOL {
                    r.fail(
                        3,
                        format!(
                            "breaker of {} HALF_OPEN at {:.3}, {:.3} s after OPEN (wait {wait} s)",
                            short(&a.id),
                            a.t,
                            a.t - since
                        ),
                    );
                }
                let bound = bound_open(since, wait, a.t);
                if a.t - since > bound {
                    r.fail(
                        3,
                        format!(
                            "breaker of {} OPEN for {:.3} s until {:.3} (wait {wait} s + 1 \
                             interval + SIGSTOPped time = {bound:.3} s)",
                            short(&a.id),
                            a.t - since,
                            a.t
                        ),
                    );
                }
                St::HalfOpen {
                    since: a.t,
                    trial: None,
                }
            }
            (St::HalfOpen { trial, .. }, "CLOSED") => {
                if trial.is_none() && !a.id.is_empty() {
                    // A trial_succeeded needs a trial whose outcome arrived; with no trial
                    // started in this episode, nothing can have succeeded.
                    r.fail(
                        3,
                        format!(
                            "breaker of {} closed at {:.3} with no trial in HALF_OPEN",
                            short(&a.id),
                            a.t
                        ),
                    );
                }
                St::Closed
            }
            _ => {
                r.fail(
                    3,
                    format!(
                        "illegal breaker transition of {} at {:.3}: {} -> {to}",
                        short(&a.id),
                        a.t,
                        st_name(cur)
                    ),
                );
                continue;
            }
        };
        if let (
            St::HalfOpen {
                trial: Some(t0), ..
            },
            St::Open { .. } | St::Closed,
        ) = (cur, next)
        {
            let bound = half_max(&a.id) + lim.interval + TOL + overlap(stopped, t0, a.t);
            if a.t - t0 > bound {
                r.fail(
                    3,
                    format!(
                        "breaker of {} HALF_OPEN with a trial for {:.3} s until {:.3} (bound \
                         {bound:.3} s)",
                        short(&a.id),
                        a.t - t0,
                        a.t
                    ),
                );
            }
        }
        state.insert(&a.id, next);
    }
    // Episodes still open when the run (or the container) ended.
    for (id, st) in state {
        let until = destroyed
            .get(id)
            .copied()
            .unwrap_or(f64::INFINITY)
            .min(run.exit)
            .min(end);
        match st {
            St::Open { since, wait } if until - since > bound_open(since, wait, until) => {
                r.fail(
                    3,
                    format!(
                        "breaker of {} OPEN since {since:.3} (wait {wait} s) and still OPEN at \
                         {until:.3}",
                        short(id)
                    ),
                );
            }
            St::HalfOpen {
                trial: Some(t0), ..
            } if until - t0 > half_max(id) + lim.interval + TOL + overlap(stopped, t0, until) => {
                r.fail(
                    3,
                    format!(
                        "breaker of {} HALF_OPEN with a trial since {t0:.3}, still at {until:.3}",
                        short(id)
                    ),
                );
            }
            _ => {}
        }
    }
}
