//! The action life cycle: the `intent` line before anything runs (no audit, no action), the
//! run under the executor's permit and time-out, the outcome judged for the breakers, audited,
//! and the gate told (`Gate::finish`); skips audited once per state change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::audit::{AuditRecord, MAX_TEXT, for_log, truncate};
use super::cap::Cap;
use super::config::ActionConfig;
use super::docker::{DockerApi, DockerError};
use super::executor::ExecOutcome;
use super::gate::{Finished, Grant, ScopedTransition, SkipReason};
use super::pass::Due;
use super::{BreakerState, Decision, HealEngine, InFlight, OWN_EVENT_WINDOW};
use crate::model::{ActionKind, CpuCap};

impl HealEngine {
    pub(super) fn start_action(
        &mut self,
        now: Instant,
        api: &Arc<dyn DockerApi>,
        due: Due,
        grant: Grant,
    ) {
        let Due {
            info,
            rule,
            trigger,
            victim,
            ..
        } = due;
        let info = &info;
        let r = self.cfg.rules[rule].clone();
        let mut rec = AuditRecord::new(&info.id, &info.name, Decision::Intent, &trigger);
        rec.rule = Some(r.name.clone());
        rec.action = Some(r.action.kind());
        rec.breaker = self.gate.breaker_state(&info.id);
        // The quota it replaces goes into the intent line, so any later process can restore it.
        let cpu = r.action.cpu_quota().map(|(quota, period)| CpuCap {
            quota,
            period,
            prev_quota: info.cpu_quota,
            prev_period: info.cpu_period,
        });
        rec.cpu = cpu;
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
        if victim.is_none() {
            // Not for a cap: its (contender, rule) key also dedups the contender's own skips as
            // a waiting container (`not_protected`), which acting on it does not change.
            self.last_skip.remove(&(info.id.clone(), rule));
        }
        if let (
            Some(cpu),
            Some(reason),
            ActionConfig::CapContender {
                lift_after_intervals,
                ..
            },
        ) = (cpu, victim, &r.action)
        {
            // Booked before it runs: a cap cancelled half-way is lifted like any other.
            let cap = Cap {
                name: info.name.clone(),
                reason: Some(reason),
                lift_after: *lift_after_intervals,
                calm: 0,
                cpu,
                lift_failed: false,
            };
            self.caps.insert(info.id.clone(), cap);
        }
        let fut = self.exec.run(api.clone(), info.id.clone(), r.action);
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

    pub(super) fn reap(&mut self, now: Instant) {
        while let Some(res) = self.tasks.try_join_next_with_id() {
            self.settle_task(now, res);
        }
    }

    pub(super) fn settle_task(
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
                rec.error = Some(truncate(&error.to_string(), MAX_TEXT));
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
        if action == ActionKind::CapContender {
            rec.cpu = self.caps.get(&f.id).map(|c| c.cpu);
            // Docker said no (not a time-out, after which the quota may be set): nothing to lift.
            let unapplied = rec.decision == Decision::NotRecorded
                || (rec.decision == Decision::Failed && rec.reason != "timeout");
            if unapplied {
                self.caps.remove(&f.id);
            }
        }
        let tr = self.gate.finish(now, &f.id, f.grant, how);
        if let Some(t) = self.containers.get_mut(&f.id) {
            t.own_until = Some(now + OWN_EVENT_WINDOW);
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

    pub(super) fn skip(
        &mut self,
        id: &str,
        name: &str,
        rule: usize,
        reason: SkipReason,
        trigger: &str,
    ) {
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
        rec.outcome = Some(truncate(trigger, MAX_TEXT));
        rec.breaker = self.gate.breaker_state(id);
        rec.dry_run = reason == SkipReason::DryRun;
        self.write_audit(rec);
    }

    pub(super) fn audit_transitions(&mut self, tr: &[ScopedTransition]) {
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

    /// One alert line when a storm starts or ends (not one per evaluation).
    pub(super) fn audit_storm(&mut self, started: bool, tripped: usize) {
        let reason = if started { "storm_guard" } else { "storm_over" };
        let mut r = AuditRecord::new("", "(host)", Decision::Alert, reason);
        let text = format!(
            "{tripped} of {} opted-in containers tripped within {} s; {}",
            self.labelled,
            self.cfg.storm_window_secs,
            if started {
                "acting on none of them"
            } else {
                "healing resumes"
            }
        );
        if started {
            tracing::error!("{text}");
        } else {
            tracing::warn!("{text}");
        }
        r.error = Some(text);
        self.write_audit(r);
    }

    /// True when the line was written.
    pub(super) fn write_audit(&mut self, r: AuditRecord) -> bool {
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
