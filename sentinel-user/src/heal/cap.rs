//! The other half of the `cap_contender` action (issue 20): a CPU cap must never outlive its
//! reason. The engine keeps every cap it set (from the moment the action starts, with the quota
//! it replaced) and lifts it, restoring that quota, when the protected container's anomaly has
//! stayed away for `lift_after_intervals` intervals, on shutdown, and at start-up for a cap the
//! audit log shows set and never lifted (a crash). Lifting is not asked of the gate: it undoes
//! sentinel's own change, so no breaker, back-off or dry run may keep a cap in place.

use super::audit::{AuditRecord, MAX_TEXT, truncate};
use super::config::Signal;
use super::docker::DockerError;
use super::{Decision, DockerState, HealEngine};
use crate::model::{ActionKind, CpuCap};

/// A CPU cap sentinel set (or started setting) on a container.
#[derive(Clone, Debug)]
pub(super) struct Cap {
    pub name: String,
    /// The protected container it was set for, and the signal whose anomaly keeps it; `None`
    /// for a cap found in the audit log at start-up (lifted at once).
    pub reason: Option<(String, Signal)>,
    pub lift_after: u32,
    /// Intervals in a row without the protected container's anomaly.
    pub calm: u32,
    pub cpu: CpuCap,
    /// A failed lift is audited once, then retried every interval.
    pub lift_failed: bool,
}

impl HealEngine {
    /// Once per interval, with the interval's anomalies: count calm intervals and lift the
    /// caps whose reason is gone.
    pub(super) async fn advance_caps(&mut self, hits: &[(String, Signal)]) {
        for cap in self.caps.values_mut() {
            let hot = cap
                .reason
                .as_ref()
                .is_some_and(|(victim, s)| hits.iter().any(|(c, x)| c == victim && x == s));
            cap.calm = if hot { 0 } else { cap.calm.saturating_add(1) };
        }
        if self.docker != DockerState::Up {
            return;
        }
        let due: Vec<String> = self
            .caps
            .iter()
            .filter(|(id, c)| c.calm >= c.lift_after && !self.gate.in_flight(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let why = match self.caps.get(&id).map(|c| c.reason.is_some()) {
                Some(true) => "calm",
                _ => "start_up",
            };
            self.lift(&id, why).await;
        }
    }

    /// Lift every cap (shutdown). A cap that cannot be lifted now (Docker away) stays in the
    /// audit log as not lifted, and the next start-up lifts it.
    pub(super) async fn lift_all(&mut self, why: &str) {
        let ids: Vec<String> = self.caps.keys().cloned().collect();
        for id in ids {
            self.lift(&id, why).await;
        }
    }

    /// Restore the quota a cap replaced; audited `lifted`, or `failed` (`lift_failed`, once).
    async fn lift(&mut self, id: &str, why: &str) {
        let (Some(api), Some(cap)) = (self.api.clone(), self.caps.get(id).cloned()) else {
            return;
        };
        let restore = api.set_cpu(id.to_string(), cap.cpu.prev_quota, cap.cpu.prev_period);
        let res = match tokio::time::timeout(self.cfg.api_timeout(), restore).await {
            Ok(r) => r,
            Err(_) => Err(DockerError::Timeout(self.cfg.api_timeout())),
        };
        let cpu = CpuCap {
            quota: cap.cpu.prev_quota,
            period: cap.cpu.prev_period,
            prev_quota: cap.cpu.quota,
            prev_period: cap.cpu.period,
        };
        let mut rec = AuditRecord::new(id, &cap.name, Decision::Lifted, why);
        rec.action = Some(ActionKind::CapContender);
        rec.cpu = Some(cpu);
        match res {
            Ok(()) => {}
            Err(DockerError::ContainerGone { .. }) => rec.reason = "container_gone".into(),
            Err(e) => {
                if let Some(c) = self.caps.get_mut(id) {
                    if c.lift_failed {
                        return;
                    }
                    c.lift_failed = true;
                }
                tracing::warn!(container = %super::audit::for_log(&cap.name), error = %e, "could not lift a CPU cap; retrying every interval");
                rec.decision = Decision::Failed;
                rec.reason = "lift_failed".into();
                rec.error = Some(truncate(&e.to_string(), MAX_TEXT));
                self.write_audit(rec);
                return;
            }
        }
        self.caps.remove(id);
        self.write_audit(rec);
    }
}
