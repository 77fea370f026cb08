//! Reading Docker and asking the gate: the full pass (list every container, drop the gone,
//! inspect what can fire) and the evaluation of a set of containers (inspect, find the rules
//! that fire, count the storm, ask `Gate::decide` for each, start what it allows). Every pass
//! is cut off at half an interval, so a hung Docker cannot stall the caller (D3).

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use super::docker::{ContainerInfo, DockerApi, DockerError};
use super::gate::{Consent, Facts, SkipReason, Verdict};
use super::{Contender, HealEngine, triggers};
use crate::heal::config::{ActionConfig, RuleConfig, Signal, Trigger};

/// A (container, rule) the pass found due, as the gate and the life cycle see it.
pub(super) struct Due {
    pub info: ContainerInfo,
    pub rule: usize,
    pub trigger: String,
    pub facts: Facts,
    /// `cap_contender`: the protected container and its signal (`info` is the contender).
    pub victim: Option<(String, Signal)>,
}

impl HealEngine {
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
    pub(super) async fn bounded_pass(&mut self, now: Instant, ids: Option<Vec<String>>) {
        let budget = self.pass_budget();
        let done = match ids {
            None => tokio::time::timeout(budget, self.full_pass(now)).await,
            Some(ids) => tokio::time::timeout(budget, self.evaluate(now, ids)).await,
        };
        if done.is_err() {
            self.counters.passes_cut_short += 1;
            self.slow_until = Some(now + self.interval_est.unwrap_or(budget));
            tracing::debug!(
                budget_ms = budget.as_millis() as u64,
                "Docker pass cut short"
            );
        } else {
            self.slow_until = None;
        }
    }

    async fn full_pass(&mut self, now: Instant) {
        let Some(api) = self.api.clone() else {
            return;
        };
        let list = match api.list().await {
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
        // Inspect only what can fire or has state: saves two API calls per quiet container.
        let ids: Vec<String> = list
            .iter()
            .filter(|s| {
                s.status.contains("unhealthy")
                    || s.state == "exited"
                    || s.state == "dead"
                    || s.state == "restarting"
                    || self.containers.contains_key(&s.id)
                    || self.streaks.concerns(&s.id, &self.cfg.rules)
            })
            .map(|s| s.id.clone())
            .collect();
        self.dirty.clear();
        self.evaluate(now, ids).await;
    }

    /// Inspect `ids`, find fired rules, apply the storm guard, ask the gate, start allowed
    /// actions.
    async fn evaluate(&mut self, now: Instant, ids: Vec<String>) {
        let Some(api) = self.api.clone() else {
            return;
        };
        let mut cands: Vec<Due> = Vec::new();
        let mut skips = Vec::new();
        let mut quiet: Vec<(String, usize)> = Vec::new();
        let mut quiet_ids: Vec<String> = Vec::new();
        for id in ids {
            let info = match api.inspect(&id).await {
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
            } else if triggers::looks_stopped_on_purpose(&info) && !self.gate.in_flight(&info.id) {
                // Stopped before we could see its events: a 143/137 exit is what
                // `docker stop`/`docker kill` leaves; leave it alone.
                t.stopped_by_operator = true;
            }
            let stopped = t.stopped_by_operator;
            let consent = triggers::consent(&self.cfg, &info);
            let mut fired_any = false;
            for (idx, rule) in self.cfg.rules.iter().enumerate() {
                if !triggers::selects(&rule.selector, &info) {
                    continue;
                }
                match triggers::fires(idx, rule, &info, &self.streaks, stopped) {
                    None => quiet.push((info.id.clone(), idx)),
                    Some(trigger) if matches!(rule.action, ActionConfig::CapContender { .. }) => {
                        // Not `fired_any`: the action is on another container, so this firing
                        // says nothing about an action on this one (a capped contender that
                        // waits too must not fail its own cap's verification).
                        // The action is on the contender: the gate judges it (its consent, its
                        // breaker, its back-off), the waiting container only says why.
                        let name = match &rule.trigger {
                            Trigger::Anomaly { signal, .. } => {
                                let key = (info.id.clone(), *signal);
                                self.streaks.contender.get(&key).cloned()
                            }
                            _ => None,
                        };
                        match Self::cap_target(&*api, &info, rule, name).await {
                            Err(reason) => skips.push((
                                info.id.clone(),
                                info.name.clone(),
                                idx,
                                reason,
                                trigger,
                            )),
                            // Already capped: its lift is pending.
                            Ok((target, _)) if self.caps.contains_key(&target.id) => {}
                            Ok((target, signal)) => cands.push(Due {
                                facts: Facts {
                                    consent: triggers::consent(&self.cfg, &target),
                                    stopped_by_operator: false,
                                    restart_policy_active: target.restarting,
                                },
                                trigger: format!("{trigger}; protects {}", info.name),
                                info: target,
                                rule: idx,
                                victim: Some((info.id.clone(), signal)),
                            }),
                        }
                    }
                    Some(trigger) => {
                        fired_any = true;
                        let restart_policy_active = match rule.trigger {
                            Trigger::Died { .. } => info.policy_will_restart(),
                            _ => info.restarting,
                        };
                        cands.push(Due {
                            info: info.clone(),
                            rule: idx,
                            trigger,
                            facts: Facts {
                                consent,
                                stopped_by_operator: stopped,
                                restart_policy_active,
                            },
                            victim: None,
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
        for (id, name, rule, reason, trigger) in skips {
            self.skip(&id, &name, rule, reason, &trigger);
        }
        // A rule that no longer fires: the next skip for it is news again.
        for k in quiet {
            self.last_skip.remove(&k);
        }
        // Storm guard (D8), on every evaluation, event-driven or full: the gate counts the
        // containers it could act on, then decides each with that count in mind.
        let actionable = |c: &Due| {
            c.facts.consent == Consent::Labelled
                && !c.facts.stopped_by_operator
                && !c.facts.restart_policy_active
        };
        let due: BTreeSet<&str> = cands
            .iter()
            .filter(|c| actionable(c))
            .map(|c| c.info.id.as_str())
            .collect();
        let due: Vec<&str> = due.into_iter().collect();
        let quiet_refs: Vec<&str> = quiet_ids.iter().map(String::as_str).collect();
        let v = self
            .gate
            .observe_storm(now, &due, &quiet_refs, self.labelled);
        if let Some(started) = v.changed {
            self.audit_storm(started, v.tripped);
        }
        let mut acted: HashSet<String> = HashSet::new();
        for c in cands {
            if acted.contains(&c.info.id) {
                continue; // one action per container per evaluation
            }
            let req = self.request(&c.info.id, c.rule, Some(c.facts));
            match self.gate.decide(now, &req) {
                Verdict::Skip(reason) => {
                    self.skip(&c.info.id, &c.info.name, c.rule, reason, &c.trigger);
                }
                Verdict::Hold(at) => {
                    // Tripped too recently for the storm count to be complete: judged
                    // again when the hold ends.
                    if !self.settle.iter().any(|(t, i)| *i == c.info.id && *t == at) {
                        self.settle.push((at, c.info.id.clone()));
                    }
                }
                Verdict::Allow(grant) => {
                    acted.insert(c.info.id.clone());
                    self.start_action(now, &api, c, grant);
                }
            }
        }
    }

    /// Whom a `cap_contender` rule that fired for `victim` would cap: its top contender (from
    /// the anomaly), when the victim carries the protect label, the contender caused at least
    /// the rule's share of the wait, and it is a running Docker container here. No `self`: the
    /// engine is not `Sync`, and this awaits.
    async fn cap_target(
        api: &dyn DockerApi,
        victim: &ContainerInfo,
        rule: &RuleConfig,
        contender: Option<Contender>,
    ) -> Result<(ContainerInfo, Signal), SkipReason> {
        let (
            ActionConfig::CapContender {
                protect_label,
                min_share,
                min_wait_percent,
                ..
            },
            Trigger::Anomaly { signal, .. },
        ) = (&rule.action, &rule.trigger)
        else {
            return Err(SkipReason::NoContender);
        };
        if victim.labels.get(protect_label).map(String::as_str) != Some("true") {
            return Err(SkipReason::NotProtected);
        }
        let by = contender
            .filter(|c| !c.name.is_empty() && c.name != "host")
            .ok_or(SkipReason::NoContender)?;
        if by.share < *min_share || by.wait_fraction * 100.0 < *min_wait_percent {
            return Err(SkipReason::MinorContender);
        }
        let name = by.name;
        // Docker resolves a name (or an id prefix): only an exact name match is the contender.
        let target = api
            .inspect(&name)
            .await
            .ok()
            .filter(|c| c.name == name && c.id != victim.id && c.running)
            .ok_or(SkipReason::NoContender)?;
        Ok((target, *signal))
    }
}
