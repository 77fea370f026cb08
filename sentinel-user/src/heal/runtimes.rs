//! Healing stays Docker-only: a container of another runtime (podman, containerd, CRI-O) is
//! never acted on. When an anomaly rule would have fired on one, the audit says so once per
//! container (decision `skipped`, reason `not_docker`), and nothing else happens.

use std::collections::HashSet;

use super::{HealEngine, config::Trigger};
use crate::model::{AuditRecord, Decision};

/// Remembered containers (bounded: forgotten all at once past this, then each may be audited
/// once more).
const MAX_REMEMBERED: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct NotDocker(HashSet<String>);

impl HealEngine {
    /// An open anomaly of container `id` (named `name`, of `runtime`) that healing will not
    /// act on: audited once if some anomaly rule watches `signal`.
    pub fn not_docker(&mut self, id: &str, name: &str, runtime: &str, signal: &str) {
        let watched = self.cfg.rules.iter().find(
            |r| matches!(&r.trigger, Trigger::Anomaly { signal: s, .. } if s.as_str() == signal),
        );
        let Some(rule) = watched else {
            return;
        };
        if self.not_docker.0.len() >= MAX_REMEMBERED {
            self.not_docker.0.clear();
        }
        if !self.not_docker.0.insert(id.to_string()) {
            return;
        }
        let mut rec = AuditRecord::new(id, name, Decision::Skipped, "not_docker");
        rec.rule = Some(rule.name.clone());
        rec.action = Some(rule.action.kind());
        rec.outcome = Some(format!(
            "{} container: healing acts on Docker containers only",
            crate::sanitize::truncate(runtime, 32)
        ));
        self.counters.skipped += 1;
        self.write_audit(rec);
    }
}

#[cfg(test)]
mod tests {
    use crate::heal::config::{ActionConfig, RuleConfig, Trigger};
    use crate::heal::fake::{Harness, test_cfg};
    use crate::model::Decision;

    /// Issue 19.3: a podman container's anomaly is audited once as `not_docker` and nothing
    /// is asked of Docker, however long the anomaly stays open.
    #[tokio::test(start_paused = true)]
    async fn another_runtimes_container_is_audited_once_and_never_acted_on() {
        let mut cfg = test_cfg();
        cfg.rules = vec![RuleConfig {
            name: "cpu".into(),
            trigger: Trigger::Anomaly {
                signal: "cpu".parse().unwrap(),
                intervals: 1,
            },
            action: ActionConfig::Restart {
                stop_timeout_secs: 1,
            },
            ..RuleConfig::autoheal()
        }];
        let mut h = Harness::new(cfg);
        for _ in 0..5 {
            h.engine.not_docker("p0d", "web", "podman", "cpu");
            // A signal no rule watches is not even audited.
            h.engine.not_docker("p0d", "web", "podman", "oom_kills");
            h.interval_with(&[]).await;
        }
        assert!(h.docker.actions_on("p0d").is_empty());
        assert_eq!(h.count("p0d", Decision::Skipped, Some("not_docker")), 1);
        let rec = h
            .audit()
            .into_iter()
            .find(|r| r.reason == "not_docker")
            .unwrap();
        assert_eq!(rec.container_name, "web");
        assert!(
            rec.outcome.as_deref().is_some_and(|o| o.contains("podman")),
            "{rec:?}"
        );
    }
}
