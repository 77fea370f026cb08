//! The one place every action passes through. `Gate::decide` returns `Allow(Grant)` or
//! `Skip(reason)`; nothing reaches Docker without a `Grant`, and every `Skip` has a reason that
//! goes into the audit log. Plain struct, injected clock, no tokio.
//!
//! Order of the checks (first match wins, so the audit names the most fundamental reason):
//! docker_unreachable, not_labelled / label_from_image, stopped_by_operator,
//! docker_restart_policy_active, storm_guard (and the storm hold, which is not a refusal but a
//! "not yet": `Verdict::Hold`), action_in_flight, grace_period, cooldown, rule_limit, backoff,
//! rate_cap, breaker_open, global_breaker_open, dry_run.
//! The storm guard counts the containers an evaluation found due (`observe_storm`, once per
//! evaluation, before its decisions); `decide` then refuses or holds with the rest.
//! Breakers come last because asking a HALF_OPEN breaker takes a trial slot; a later refusal
//! would have to give it back.
//!
//! What counts for a breaker: an action whose API call failed for the container (gone, 409,
//! 500) is a failure at once; an action whose API call succeeded is judged later: a new trigger
//! after the grace period and before `verify` ends is a failure (the action did not heal), no
//! trigger until then is a success. Docker hung or unreachable counts for the global breaker
//! only (D3); API denial, permit-wait time-out and shutdown cancel count for neither (D10, D11,
//! D13).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::backoff::{Backoff, RateCap};
use super::breaker::{Breaker, BreakerState, Outcome, Transition, Trial};
use super::config::{HealConfig, secs};
pub use crate::model::BreakerView;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    NotLabelled,
    LabelFromImage,
    StoppedByOperator,
    DockerRestartPolicyActive,
    DockerUnreachable,
    ActionInFlight,
    GracePeriod,
    Cooldown,
    RuleLimit,
    Backoff,
    RateCap,
    BreakerOpen,
    GlobalBreakerOpen,
    DryRun,
    StormGuard,
    /// `cap_contender`: the waiting container does not carry the protect label.
    NotProtected,
    /// `cap_contender`: the top contender is not a Docker container here (`host`, another
    /// runtime, gone).
    NoContender,
    /// `cap_contender`: the top contender caused less of the wait than the rule's `min_share`
    /// or `min_wait_percent`.
    MinorContender,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotLabelled => "not_labelled",
            SkipReason::LabelFromImage => "label_from_image",
            SkipReason::StoppedByOperator => "stopped_by_operator",
            SkipReason::DockerRestartPolicyActive => "docker_restart_policy_active",
            SkipReason::DockerUnreachable => "docker_unreachable",
            SkipReason::ActionInFlight => "action_in_flight",
            SkipReason::GracePeriod => "grace_period",
            SkipReason::Cooldown => "cooldown",
            SkipReason::RuleLimit => "rule_limit",
            SkipReason::Backoff => "backoff",
            SkipReason::RateCap => "rate_cap",
            SkipReason::BreakerOpen => "breaker_open",
            SkipReason::GlobalBreakerOpen => "global_breaker_open",
            SkipReason::DryRun => "dry_run",
            SkipReason::StormGuard => "storm_guard",
            SkipReason::NotProtected => "not_protected",
            SkipReason::NoContender => "no_contender",
            SkipReason::MinorContender => "minor_contender",
        }
    }
}

/// Where the opt-in label comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consent {
    /// `label=true` set on the container (or from the image with `allow_image_label`).
    Labelled,
    NotLabelled,
    /// `label=true` only because the image carries it.
    LabelFromImage,
}

/// What Docker said about the container, reduced to what the gate needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub consent: Consent,
    pub stopped_by_operator: bool,
    pub restart_policy_active: bool,
}

#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub container_id: &'a str,
    pub rule: usize,
    pub cooldown: Duration,
    /// (max actions, window) of the rule for this container; max 0 = unlimited.
    pub rule_limit: (u32, Duration),
    pub facts: Facts,
    pub docker_up: bool,
    pub dry_run: bool,
}

/// Proof that the gate allowed an action; must go back through `finish` exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    container: Trial,
    global: Trial,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Allow(Grant),
    Skip(SkipReason),
    /// Due, but held until this instant so that containers tripping together are counted
    /// first (the storm hold): ask again then. Not audited.
    Hold(Instant),
}

/// How an allowed action ended, as the breakers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Docker did it; success or failure is judged by the verify window.
    Done,
    /// Failed because of the container (gone, conflict, server error, non-zero exec exit).
    ContainerFailure,
    /// Docker hung or vanished: global breaker only.
    DockerFailure,
    /// Denied by the API, permit-wait time-out, cancelled at shutdown: nothing counted.
    Neutral,
}

/// A breaker state change with the breaker it happened to (`None` = global).
#[derive(Clone, Debug, PartialEq)]
pub struct ScopedTransition {
    pub container_id: Option<String>,
    pub transition: Transition,
}

#[derive(Clone, Debug)]
struct Pending {
    grant: Grant,
    judge_from: Instant,
    success_at: Instant,
}

/// One container's past, from the audit log of an earlier process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Restored {
    /// (rule index, decision time) of every action, oldest first.
    pub actions: Vec<(usize, Instant)>,
    /// The breaker was last OPEN (or HALF_OPEN): when it opened and its wait.
    pub open: Option<(Instant, Duration)>,
}

#[derive(Clone, Debug)]
struct ContainerGate {
    breaker: Breaker,
    backoff: Backoff,
    in_flight: bool,
    last_end: Option<Instant>,
    rule_last: HashMap<usize, Instant>,
    rule_caps: HashMap<usize, RateCap>,
    pending: Option<Pending>,
}

fn view_of(b: &Breaker, now: Instant) -> BreakerView {
    BreakerView {
        state: b.state(),
        failures_in_window: b.failures(),
        wait_secs: b.wait().as_secs_f64(),
        open_remaining_secs: b.open_remaining(now).map(|d| d.as_secs_f64()),
    }
}

pub struct Gate {
    cfg: HealConfig,
    containers: HashMap<String, ContainerGate>,
    global_breaker: Breaker,
    global_cap: RateCap,
    storm: StormGuard,
}

impl Gate {
    pub fn new(cfg: &HealConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            containers: HashMap::new(),
            global_breaker: Breaker::new(&cfg.global_breaker),
            global_cap: RateCap::new(&cfg.global_cap),
            storm: StormGuard::new(cfg),
        }
    }

    /// One evaluation's view of the storm (D8): `due` are opted-in containers with a firing
    /// rule that the gate's first checks would let through (labelled, not stopped by an
    /// operator, not being restarted by Docker), `quiet` evaluated containers with none,
    /// `labelled` how many opted-in containers exist. `decide` then refuses (`storm_guard`)
    /// or holds accordingly. The verdict says when a storm starts or ends (one alert each).
    pub fn observe_storm(
        &mut self,
        now: Instant,
        due: &[&str],
        quiet: &[&str],
        labelled: usize,
    ) -> StormVerdict {
        self.storm.observe(&self.cfg, now, due, quiet, labelled)
    }

    fn entry(&mut self, id: &str) -> &mut ContainerGate {
        let cfg = &self.cfg;
        self.containers
            .entry(id.to_string())
            .or_insert_with(|| ContainerGate {
                breaker: Breaker::new(&cfg.breaker),
                backoff: Backoff::new(&cfg.backoff),
                in_flight: false,
                last_end: None,
                rule_last: HashMap::new(),
                rule_caps: HashMap::new(),
                pending: None,
            })
    }

    /// Book what a previous sentinel process decided (read back from the audit log), so that
    /// a restart resets neither back-off, cooldowns, rule limits and the global cap nor an
    /// OPEN breaker. Found by the chaos soak: after a SIGKILL and restart a flapper was
    /// restarted 6 times within 60 s against a rule limit of 4. Entries are made now, so the
    /// breakers move on the tick as usual; ids that no longer exist are dropped by the first
    /// full pass (`HealEngine::full_pass`).
    pub fn restore(&mut self, past: &BTreeMap<String, Restored>) {
        let mut all: Vec<Instant> = Vec::new();
        for (id, r) in past {
            let rules = self.cfg.rules.clone();
            let c = self.entry(id);
            for &(rule, t) in &r.actions {
                c.backoff.record_action(t);
                c.rule_last.insert(rule, t);
                c.last_end = Some(t);
                if let Some(rc) = rules.get(rule)
                    && rc.max_actions > 0
                {
                    c.rule_caps
                        .entry(rule)
                        .or_insert_with(|| {
                            RateCap::with(rc.max_actions, secs(rc.limit_window_secs))
                        })
                        .record(t);
                }
                all.push(t);
            }
            if let Some((at, wait)) = r.open {
                c.breaker.restore_open(at, wait);
            }
        }
        all.sort();
        for t in all {
            self.global_cap.record(t);
        }
    }

    /// Decide, and on Allow (or dry_run) book the action against cooldown, back-off and caps.
    pub fn decide(&mut self, now: Instant, req: &Request<'_>) -> Verdict {
        use SkipReason::{
            ActionInFlight, Backoff, BreakerOpen, Cooldown, DockerRestartPolicyActive,
            DockerUnreachable, DryRun, GlobalBreakerOpen, GracePeriod, LabelFromImage, NotLabelled,
            RateCap, RuleLimit, StoppedByOperator,
        };
        if !req.docker_up {
            return Verdict::Skip(DockerUnreachable);
        }
        match req.facts.consent {
            Consent::Labelled => {}
            Consent::NotLabelled => return Verdict::Skip(NotLabelled),
            Consent::LabelFromImage => return Verdict::Skip(LabelFromImage),
        }
        if req.facts.stopped_by_operator {
            return Verdict::Skip(StoppedByOperator);
        }
        if req.facts.restart_policy_active {
            return Verdict::Skip(DockerRestartPolicyActive);
        }
        if self.storm.in_storm {
            return Verdict::Skip(SkipReason::StormGuard);
        }
        if !self.storm.ready(now, req.container_id)
            && let Some(at) = self.storm.ready_at(req.container_id)
        {
            return Verdict::Hold(at);
        }
        let grace = secs(self.cfg.grace_secs);
        let c = self.entry(req.container_id);
        if c.in_flight {
            return Verdict::Skip(ActionInFlight);
        }
        if let Some(end) = c.last_end
            && now < end + grace
        {
            return Verdict::Skip(GracePeriod);
        }
        if let Some(&last) = c.rule_last.get(&req.rule)
            && now < last + req.cooldown
        {
            return Verdict::Skip(Cooldown);
        }
        let (max, window) = req.rule_limit;
        if max > 0 {
            let cap = c
                .rule_caps
                .entry(req.rule)
                .or_insert_with(|| super::backoff::RateCap::with(max, window));
            if !cap.allows(now) {
                return Verdict::Skip(RuleLimit);
            }
        }
        if c.backoff.check(now).is_err() {
            return Verdict::Skip(Backoff);
        }
        if !self.global_cap.allows(now) {
            return Verdict::Skip(RateCap);
        }
        let c = self
            .containers
            .get_mut(req.container_id)
            .expect("entry created above");
        let Ok(container_trial) = c.breaker.try_begin(now) else {
            return Verdict::Skip(BreakerOpen);
        };
        let Ok(global_trial) = self.global_breaker.try_begin(now) else {
            c.breaker.record(now, container_trial, Outcome::Neutral);
            return Verdict::Skip(GlobalBreakerOpen);
        };
        // Book the action: a dry run books it too, so its audit shows the cadence a real run
        // would have, but it never touches the breakers.
        c.backoff.record_action(now);
        c.rule_last.insert(req.rule, now);
        if let Some(cap) = c.rule_caps.get_mut(&req.rule) {
            cap.record(now);
        }
        self.global_cap.record(now);
        if req.dry_run {
            c.breaker.record(now, container_trial, Outcome::Neutral);
            self.global_breaker
                .record(now, global_trial, Outcome::Neutral);
            c.last_end = Some(now);
            return Verdict::Skip(DryRun);
        }
        c.in_flight = true;
        Verdict::Allow(Grant {
            container: container_trial,
            global: global_trial,
        })
    }

    /// The allowed action ended (or was dropped before it ran).
    pub fn finish(
        &mut self,
        now: Instant,
        id: &str,
        grant: Grant,
        how: Finished,
    ) -> Vec<ScopedTransition> {
        let verify = secs(self.cfg.verify_secs);
        let grace = secs(self.cfg.grace_secs);
        let mut out = Vec::new();
        let Some(c) = self.containers.get_mut(id) else {
            // State already dropped (container destroyed): still settle the global trial.
            let g = match how {
                Finished::ContainerFailure | Finished::DockerFailure => Outcome::Failure,
                _ => Outcome::Neutral,
            };
            push(
                &mut out,
                None,
                self.global_breaker.record(now, grant.global, g),
            );
            return out;
        };
        c.in_flight = false;
        let (co, go) = match how {
            Finished::Done => {
                c.last_end = Some(now);
                c.pending = Some(Pending {
                    grant,
                    judge_from: now + grace,
                    success_at: now + grace.max(verify),
                });
                return out;
            }
            Finished::ContainerFailure => {
                c.last_end = Some(now);
                (Outcome::Failure, Outcome::Failure)
            }
            Finished::DockerFailure => (Outcome::Neutral, Outcome::Failure),
            Finished::Neutral => (Outcome::Neutral, Outcome::Neutral),
        };
        push(
            &mut out,
            Some(id),
            c.breaker.record(now, grant.container, co),
        );
        push(
            &mut out,
            None,
            self.global_breaker.record(now, grant.global, go),
        );
        out
    }

    /// A trigger fired for the container: if an action on it is being verified and the grace is
    /// over, that action did not heal it.
    pub fn on_trigger(&mut self, now: Instant, id: &str) -> Vec<ScopedTransition> {
        let mut out = Vec::new();
        if let Some(c) = self.containers.get_mut(id)
            && let Some(p) = &c.pending
            && now >= p.judge_from
        {
            let grant = p.grant;
            c.pending = None;
            push(
                &mut out,
                Some(id),
                c.breaker.record(now, grant.container, Outcome::Failure),
            );
            push(
                &mut out,
                None,
                self.global_breaker
                    .record(now, grant.global, Outcome::Failure),
            );
        }
        out
    }

    /// Time-driven work: verify windows that ended quietly are successes; breakers move
    /// OPEN -> HALF_OPEN on time.
    pub fn tick(&mut self, now: Instant) -> Vec<ScopedTransition> {
        let mut out = Vec::new();
        let mut ids: Vec<&String> = self.containers.keys().collect();
        ids.sort();
        let ids: Vec<String> = ids.into_iter().cloned().collect();
        for id in ids {
            let c = self.containers.get_mut(&id).expect("listed");
            if let Some(p) = &c.pending
                && now >= p.success_at
            {
                let grant = p.grant;
                c.pending = None;
                push(
                    &mut out,
                    Some(&id),
                    c.breaker.record(now, grant.container, Outcome::Success),
                );
                push(
                    &mut out,
                    None,
                    self.global_breaker
                        .record(now, grant.global, Outcome::Success),
                );
            }
            push(&mut out, Some(&id), c.breaker.tick(now));
        }
        push(&mut out, None, self.global_breaker.tick(now));
        out
    }

    /// Drop everything known about a container (it was destroyed). A pending verify settles as
    /// neutral for the global breaker.
    pub fn forget(&mut self, now: Instant, id: &str) {
        self.storm.forget(id);
        if let Some(c) = self.containers.remove(id)
            && let Some(p) = c.pending
        {
            self.global_breaker
                .record(now, p.grant.global, Outcome::Neutral);
        }
    }

    pub fn tracked(&self) -> usize {
        self.containers.len()
    }

    pub fn in_flight(&self, id: &str) -> bool {
        self.containers.get(id).is_some_and(|c| c.in_flight)
    }

    pub fn breaker_state(&self, id: &str) -> Option<BreakerState> {
        self.containers.get(id).map(|c| c.breaker.state())
    }

    pub fn global_state(&self) -> BreakerState {
        self.global_breaker.state()
    }

    pub fn view(&self, now: Instant) -> (BreakerView, Vec<(String, BreakerView)>) {
        let mut v: Vec<(String, BreakerView)> = self
            .containers
            .iter()
            .map(|(id, c)| (id.clone(), view_of(&c.breaker, now)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        (view_of(&self.global_breaker, now), v)
    }

    pub fn actions_in_global_window(&mut self, now: Instant) -> usize {
        self.global_cap.count(now)
    }
}

fn push(out: &mut Vec<ScopedTransition>, id: Option<&str>, t: Option<Transition>) {
    if let Some(transition) = t {
        out.push(ScopedTransition {
            container_id: id.map(str::to_string),
            transition,
        });
    }
}

/// Correlated-anomaly guard (D8): too many opted-in containers due at once looks like a host
/// problem, where restarting everything makes it worse.
pub fn storm(cfg: &HealConfig, due: usize, labelled: usize) -> bool {
    due >= cfg.storm_min_containers.max(1) && (due as f64) > cfg.storm_fraction * labelled as f64
}

/// What `StormGuard::observe` concluded for one evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StormVerdict {
    /// Act on no labelled container now.
    pub storm: bool,
    /// The storm started (`Some(true)`) or ended (`Some(false)`) with this evaluation: audit
    /// one alert line per transition, not one per evaluation.
    pub changed: Option<bool>,
    /// Labelled containers that tripped within the window.
    pub tripped: usize,
}

/// The storm guard over time, so that containers whose health events arrive in different
/// engine ticks are still counted together (D8).
///
/// A labelled container that becomes due is held for `hold` before it may be acted on; every
/// container that trips within `window` counts. So when more than `storm_fraction` of the
/// opted-in containers trip within `hold` of each other, not one of them is acted on. The
/// price is `hold` added to every time-to-heal (`storm_hold_secs`, 0 turns the hold off).
#[derive(Clone, Debug)]
pub struct StormGuard {
    hold: Duration,
    window: Duration,
    due_since: HashMap<String, Instant>,
    in_storm: bool,
}

impl StormGuard {
    pub fn new(cfg: &HealConfig) -> Self {
        Self {
            hold: secs(cfg.storm_hold_secs),
            window: secs(cfg.storm_window_secs),
            due_since: HashMap::new(),
            in_storm: false,
        }
    }

    /// One evaluation: `due` are labelled containers with a firing rule, `quiet` evaluated
    /// containers with none; `labelled` is how many opted-in containers exist.
    pub fn observe(
        &mut self,
        cfg: &HealConfig,
        now: Instant,
        due: &[&str],
        quiet: &[&str],
        labelled: usize,
    ) -> StormVerdict {
        for id in quiet {
            self.due_since.remove(*id);
        }
        for id in due {
            self.due_since.entry(id.to_string()).or_insert(now);
        }
        let tripped = self
            .due_since
            .values()
            .filter(|&&t| now.saturating_duration_since(t) <= self.window)
            .count();
        let storm = storm(cfg, tripped, labelled.max(tripped));
        let changed = (storm != self.in_storm).then_some(storm);
        self.in_storm = storm;
        StormVerdict {
            storm,
            changed,
            tripped,
        }
    }

    /// The container has been due long enough to be acted on.
    pub fn ready(&self, now: Instant, id: &str) -> bool {
        self.due_since.get(id).is_none_or(|&t| now >= t + self.hold)
    }

    /// When a held container becomes ready (the engine evaluates it again then).
    pub fn ready_at(&self, id: &str) -> Option<Instant> {
        self.due_since.get(id).map(|&t| t + self.hold)
    }

    pub fn forget(&mut self, id: &str) {
        self.due_since.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts() -> Facts {
        Facts {
            consent: Consent::Labelled,
            stopped_by_operator: false,
            restart_policy_active: false,
        }
    }

    fn req(id: &str, cooldown: Duration) -> Request<'_> {
        Request {
            container_id: id,
            rule: 0,
            cooldown,
            rule_limit: (0, Duration::from_secs(600)),
            facts: facts(),
            docker_up: true,
            dry_run: false,
        }
    }

    fn test_cfg() -> HealConfig {
        let mut c = HealConfig {
            grace_secs: 1.0,
            verify_secs: 5.0,
            ..HealConfig::default()
        };
        c.backoff.initial_secs = 2.0;
        c.backoff.max_secs = 30.0;
        c.breaker.failure_threshold = 2;
        c.breaker.open_secs = 10.0;
        c.global_cap.max_actions = 5;
        c.global_cap.window_secs = 60.0;
        c
    }

    #[test]
    fn reasons_in_order() {
        let mut g = Gate::new(&test_cfg());
        let now = Instant::now();
        let mut r = req("a", Duration::ZERO);
        r.docker_up = false;
        r.facts.consent = Consent::NotLabelled;
        assert_eq!(
            g.decide(now, &r),
            Verdict::Skip(SkipReason::DockerUnreachable)
        );
        r.docker_up = true;
        assert_eq!(g.decide(now, &r), Verdict::Skip(SkipReason::NotLabelled));
        r.facts.consent = Consent::LabelFromImage;
        assert_eq!(g.decide(now, &r), Verdict::Skip(SkipReason::LabelFromImage));
        r.facts.consent = Consent::Labelled;
        r.facts.stopped_by_operator = true;
        assert_eq!(
            g.decide(now, &r),
            Verdict::Skip(SkipReason::StoppedByOperator)
        );
        r.facts.stopped_by_operator = false;
        r.facts.restart_policy_active = true;
        assert_eq!(
            g.decide(now, &r),
            Verdict::Skip(SkipReason::DockerRestartPolicyActive)
        );
        r.facts.restart_policy_active = false;
        r.dry_run = true;
        assert_eq!(g.decide(now, &r), Verdict::Skip(SkipReason::DryRun));
        assert_eq!(g.decide(now, &r), Verdict::Skip(SkipReason::GracePeriod));
        assert_eq!(g.breaker_state("a"), Some(BreakerState::Closed));
    }

    /// D8: the storm guard is the gate's: after the container facts (a stopped container is
    /// still `stopped_by_operator`), before every limit (so a storm is what the audit says).
    #[test]
    fn storm_is_decided_by_the_gate_after_the_facts_and_before_the_limits() {
        let cfg = HealConfig {
            storm_min_containers: 2,
            ..test_cfg()
        };
        let mut g = Gate::new(&cfg);
        let now = Instant::now();
        let v = g.observe_storm(now, &["a", "b", "c"], &[], 4);
        assert_eq!((v.storm, v.changed, v.tripped), (true, Some(true), 3));
        let mut r = req("a", Duration::ZERO);
        assert_eq!(g.decide(now, &r), Verdict::Skip(SkipReason::StormGuard));
        r.facts.stopped_by_operator = true;
        assert_eq!(
            g.decide(now, &r),
            Verdict::Skip(SkipReason::StoppedByOperator)
        );
        r.facts.stopped_by_operator = false;
        r.docker_up = false;
        assert_eq!(
            g.decide(now, &r),
            Verdict::Skip(SkipReason::DockerUnreachable)
        );
        // Over: healing resumes, once.
        let v = g.observe_storm(now, &[], &["a", "b", "c"], 4);
        assert_eq!((v.storm, v.changed), (false, Some(false)));
        assert!(matches!(
            g.decide(now, &req("a", Duration::ZERO)),
            Verdict::Allow(_)
        ));
    }

    /// The storm hold is a "not yet", not a refusal: nothing is booked, and the container is
    /// allowed once the hold is over.
    #[test]
    fn the_storm_hold_is_not_a_refusal() {
        let cfg = HealConfig {
            storm_hold_secs: 1.0,
            ..test_cfg()
        };
        let mut g = Gate::new(&cfg);
        let t0 = Instant::now();
        g.observe_storm(t0, &["a"], &[], 10);
        let at = t0 + Duration::from_secs(1);
        assert_eq!(g.decide(t0, &req("a", Duration::ZERO)), Verdict::Hold(at));
        assert_eq!(g.tracked(), 0, "a hold books nothing");
        assert!(matches!(
            g.decide(at, &req("a", Duration::ZERO)),
            Verdict::Allow(_)
        ));
        // Forgetting a container drops its storm state too.
        g.observe_storm(at, &["b"], &[], 10);
        g.forget(at, "b");
        assert!(matches!(
            g.decide(at, &req("b", Duration::ZERO)),
            Verdict::Allow(_)
        ));
    }

    /// A dry run books the action (cooldown, back-off, caps) so its audit shows a real run's
    /// cadence, and never touches a breaker.
    #[test]
    fn a_dry_run_books_the_action_and_leaves_the_breakers_alone() {
        let mut g = Gate::new(&test_cfg());
        let now = Instant::now();
        let mut r = req("a", Duration::from_secs(30));
        r.dry_run = true;
        assert_eq!(g.decide(now, &r), Verdict::Skip(SkipReason::DryRun));
        let later = now + Duration::from_secs(5);
        assert_eq!(g.decide(later, &r), Verdict::Skip(SkipReason::Cooldown));
        assert_eq!(g.actions_in_global_window(later), 1);
        let (global, per) = g.view(later);
        assert_eq!(global.failures_in_window, 0);
        assert_eq!(per[0].1.state, BreakerState::Closed);
        assert!(!g.in_flight("a"));
    }

    #[test]
    fn flapper_opens_breaker_then_one_trial() {
        let cfg = test_cfg();
        let mut g = Gate::new(&cfg);
        let t0 = Instant::now();
        let mut now = t0;
        let mut log = Vec::new();
        let mut acted = 0;
        // The container re-triggers every 500 ms forever.
        for _ in 0..200 {
            now += Duration::from_millis(500);
            for t in g.tick(now) {
                log.push(t.transition.to);
            }
            for t in g.on_trigger(now, "a") {
                log.push(t.transition.to);
            }
            if let Verdict::Allow(grant) = g.decide(now, &req("a", Duration::ZERO)) {
                acted += 1;
                g.finish(now, "a", grant, Finished::Done);
            }
        }
        assert!(log.len() >= 3, "{log:?}");
        assert_eq!(
            &log[..3],
            &[
                BreakerState::Open,
                BreakerState::HalfOpen,
                BreakerState::Open
            ]
        );
        // 2 to open it, then one trial per HALF_OPEN episode.
        let half_opens = log.iter().filter(|s| **s == BreakerState::HalfOpen).count();
        assert_eq!(acted, 2 + half_opens, "{log:?}");
    }

    /// FAULT-MATRIX D8 (arithmetic): containers whose health events arrive in different ticks
    /// within the hold are counted together; none is ready before the storm is seen; one alert
    /// transition each way.
    #[test]
    fn storm_guard_counts_trips_across_ticks() {
        let cfg = HealConfig {
            storm_hold_secs: 1.0,
            storm_window_secs: 10.0,
            ..HealConfig::default()
        };
        let mut g = StormGuard::new(&cfg);
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        // 20 labelled, 12 trip 50 ms apart (all within the 1 s hold of the first).
        let ids: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
        let mut changes = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let now = ms(50 * i as u64);
            let v = g.observe(&cfg, now, &[id.as_str()], &[], 20);
            changes.extend(v.changed);
            // Nobody may act before the hold is over: the storm is still being counted.
            assert!(ids[..=i].iter().all(|c| !g.ready(now, c)));
        }
        let v = g.observe(&cfg, ms(1100), &[], &[], 20);
        assert!(v.storm && v.tripped == 12, "{v:?}");
        assert_eq!(changes, vec![true], "one alert when the storm starts");
        // They recover: storm over, once.
        let quiet: Vec<&str> = ids.iter().map(String::as_str).collect();
        let v = g.observe(&cfg, ms(5000), &[], &quiet, 20);
        assert_eq!((v.storm, v.changed), (false, Some(false)));
        // A single sick container is not a storm and is ready after the hold.
        let v = g.observe(&cfg, ms(6000), &["x"], &[], 20);
        assert!(!v.storm);
        assert!(!g.ready(ms(6500), "x"));
        assert!(g.ready(ms(7000), "x"));
        assert_eq!(g.ready_at("x"), Some(ms(7000)));
        g.forget("x");
        assert_eq!(g.ready_at("x"), None);
    }

    proptest! {
        /// FAULT-MATRIX D8: whatever the arrival pattern, when more than the configured fraction
        /// of labelled containers (and at least the minimum) trip within the hold of the first,
        /// no container of that group is ready while the guard says storm.
        #[test]
        fn storm_guard_no_action_in_a_storm(
            labelled in 4usize..40,
            gaps in proptest::collection::vec(0u64..400, 1..40),
        ) {
            let cfg = HealConfig { storm_hold_secs: 1.0, storm_window_secs: 10.0, ..HealConfig::default() };
            let mut g = StormGuard::new(&cfg);
            let t0 = Instant::now();
            let mut now = t0;
            let mut tripped: Vec<String> = Vec::new();
            for (i, gap) in gaps.iter().enumerate().take(labelled) {
                now += Duration::from_millis(*gap);
                let id = format!("c{i}");
                tripped.push(id.clone());
                let v = g.observe(&cfg, now, &[id.as_str()], &[], labelled);
                let within_hold = now.saturating_duration_since(t0) < Duration::from_secs(1);
                if within_hold {
                    // Everything tripped so far is still held.
                    prop_assert!(tripped.iter().all(|c| !g.ready(now, c)));
                }
                if v.storm {
                    prop_assert!(storm(&cfg, v.tripped, labelled));
                }
            }
        }

        /// Random schedules of triggers, outcomes and time over a few containers: no action is
        /// ever allowed inside a rule's cooldown, and the global cap holds in every window.
        #[test]
        fn cooldown_and_global_cap_hold(
            steps in proptest::collection::vec((0u8..4, 0u64..8_000, 0u8..4), 1..300),
            cooldown_s in 0u64..20,
        ) {
            let cfg = test_cfg();
            let mut g = Gate::new(&cfg);
            let t0 = Instant::now();
            let mut now = t0;
            let ids = ["a", "b", "c", "d"];
            let cooldown = Duration::from_secs(cooldown_s);
            let mut last: HashMap<&str, Instant> = HashMap::new();
            let mut taken: Vec<Instant> = Vec::new();
            for (who, dt, how) in steps {
                now += Duration::from_millis(dt);
                g.tick(now);
                let id = ids[who as usize];
                g.on_trigger(now, id);
                if let Verdict::Allow(grant) = g.decide(now, &req(id, cooldown)) {
                    if let Some(&l) = last.get(id) {
                        prop_assert!(now >= l + cooldown, "acted inside cooldown");
                    }
                    last.insert(id, now);
                    taken.push(now);
                    let how = [Finished::Done, Finished::ContainerFailure, Finished::DockerFailure, Finished::Neutral][how as usize];
                    g.finish(now, id, grant, how);
                }
            }
            let window = Duration::from_secs_f64(cfg.global_cap.window_secs);
            for (i, &t) in taken.iter().enumerate() {
                let n = taken[i..].iter().take_while(|&&u| u - t < window).count();
                prop_assert!(n as u32 <= cfg.global_cap.max_actions);
            }
        }

        /// Permit-wait time-outs and cancels (Finished::Neutral) never change any breaker.
        #[test]
        fn neutral_finish_never_changes_breakers(pre in proptest::collection::vec((0u64..20_000, any::<bool>()), 0..30)) {
            let mut cfg = test_cfg();
            cfg.backoff.initial_secs = 0.0;
            cfg.grace_secs = 0.0;
            let mut g = Gate::new(&cfg);
            let mut now = Instant::now();
            for (dt, fail) in pre {
                now += Duration::from_millis(dt);
                g.tick(now);
                if let Verdict::Allow(grant) = g.decide(now, &req("a", Duration::ZERO)) {
                    g.finish(now, "a", grant, if fail { Finished::ContainerFailure } else { Finished::Neutral });
                }
            }
            g.tick(now);
            let before = (g.breaker_state("a").unwrap_or(BreakerState::Closed), g.global_state(), g.view(now).1.first().map_or(0, |v| v.1.failures_in_window));
            if let Verdict::Allow(grant) = g.decide(now, &req("a", Duration::ZERO)) {
                g.finish(now, "a", grant, Finished::Neutral);
            }
            let after = (g.breaker_state("a").unwrap_or(BreakerState::Closed), g.global_state(), g.view(now).1.first().map_or(0, |v| v.1.failures_in_window));
            prop_assert_eq!(before, after);
        }
    }
}
