//! Detection and healing as the daemon runs them: each drained interval goes through the
//! detection engine; the anomalies open on container series go to the healing engine, which
//! decides (through its one safety gate) and acts. Both engines are plain values owned here;
//! the daemon only calls `on_interval`, `tick` and `shutdown`.

use std::{collections::BTreeMap, path::Path, time::Instant};

use anyhow::{Result, anyhow};
use tracing::info;

use crate::{
    containers::docker::Watcher,
    detect::{AnomalyEvent, DetectConfig, DetectionEngine, EventKind},
    heal::{ContainerAnomaly, HealEngine, config::HealConfig},
    model::{Interval, SeriesStatus},
};

pub struct Analysis {
    detect: Option<DetectionEngine>,
    heal: Option<HealEngine>,
    /// Raised and not yet cleared, by series.
    open: BTreeMap<String, AnomalyEvent>,
}

impl Analysis {
    /// `heal` is `None` when healing is off (no Docker); `docker` is the shared Docker
    /// watcher, whose events healing takes.
    pub fn new(
        detect: &DetectConfig,
        heal: Option<(&HealConfig, &Path)>,
        docker: &mut Watcher,
    ) -> Result<Self> {
        let detect = detect.enabled.then(|| DetectionEngine::new(detect.clone()));
        let events = docker.events.take();
        let heal = match (heal, events) {
            (Some((cfg, audit)), Some(events)) if cfg.enabled => {
                if let Some(dir) = audit.parent()
                    && !dir.as_os_str().is_empty()
                    && !dir.exists()
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        anyhow!(
                            "cannot create the audit log directory {}: {e}",
                            dir.display()
                        )
                    })?;
                }
                let engine = HealEngine::new(
                    cfg.clone(),
                    audit,
                    Box::new(events),
                    docker.counters.clone(),
                )
                .map_err(|errors| {
                    let first = errors
                        .first()
                        .map(|e| format!("heal.{}: {}", e.key, e.message))
                        .unwrap_or_default();
                    anyhow!("invalid healing configuration: {first}")
                })?;
                info!(
                    audit_log = %audit.display(),
                    dry_run = cfg.dry_run,
                    rules = cfg.rules.len(),
                    "healing on (acts only on containers labelled {}=true)",
                    cfg.label
                );
                Some(engine)
            }
            _ => {
                info!("healing off");
                None
            }
        };
        Ok(Self {
            detect,
            heal,
            open: BTreeMap::new(),
        })
    }

    pub fn healing(&self) -> bool {
        self.heal.is_some()
    }

    /// Frequent, cheap healing work (Docker events, finished actions, breaker clocks).
    pub async fn tick(&mut self) {
        if let Some(heal) = &mut self.heal {
            heal.tick(Instant::now()).await;
        }
    }

    /// Scores the interval, records anomaly events in it, hands container anomalies to the
    /// healer and records its state and recent decisions in the interval.
    pub async fn on_interval(&mut self, iv: &mut Interval) {
        if let Some(engine) = &mut self.detect {
            let events = engine.observe_interval(iv);
            for event in &events {
                match event.kind {
                    EventKind::Raised => {
                        self.open.insert(event.series.clone(), event.clone());
                    }
                    EventKind::Cleared => {
                        self.open.remove(&event.series);
                    }
                }
            }
            // A series the engine stopped tracking (its container is gone) has nothing open.
            if !self.open.is_empty() {
                let tracked: std::collections::HashSet<&str> =
                    engine.series_states().map(|(name, _, _)| name).collect();
                self.open
                    .retain(|series, _| tracked.contains(series.as_str()));
            }
            iv.anomalies = events.iter().map(AnomalyEvent::to_record).collect();
            iv.detection = engine.summary();
        }
        if let Some(heal) = &mut self.heal {
            // Healing stays Docker-only: another runtime's container is never handed to it
            // (the audit says so once per container).
            let other_runtime = |id: &str| {
                iv.containers
                    .iter()
                    .find(|c| c.id == id && !c.runtime.is_empty() && c.runtime != "docker")
            };
            for event in self.open.values() {
                if let Some(id) = &event.container_id
                    && let Some(c) = other_runtime(id)
                {
                    heal.not_docker(id, &c.name, &c.runtime, &event.signal);
                }
            }
            let anomalies: Vec<ContainerAnomaly> = self
                .open
                .values()
                .filter(|event| {
                    event
                        .container_id
                        .as_deref()
                        .is_none_or(|id| other_runtime(id).is_none())
                })
                .filter_map(|event| {
                    Some(ContainerAnomaly {
                        container_id: event.container_id.clone()?,
                        // Container events carry a container signal; host series have no
                        // container id and are filtered out above.
                        signal: event.signal.parse().ok()?,
                        score: event.score,
                    })
                })
                .collect();
            heal.on_interval(Instant::now(), &anomalies).await;
            let status = heal.snapshot(Instant::now());
            // One Docker state: the interval says what healing acted on.
            iv.docker = status.state.docker;
            iv.healing = Some(status.state);
            iv.actions = status.recent;
        }
    }

    /// Cancels in-flight actions (audited as cancelled, not as failures).
    pub async fn shutdown(&mut self) {
        if let Some(heal) = &mut self.heal {
            heal.shutdown(Instant::now()).await;
        }
    }

    pub fn series(&self) -> Vec<SeriesStatus> {
        self.detect
            .iter()
            .flat_map(super::detect::engine::DetectionEngine::series_states)
            .map(|(name, state, score)| SeriesStatus {
                name: name.to_string(),
                state,
                score,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn detection_only_fills_the_interval_and_never_heals() {
        let mut a =
            Analysis::new(&DetectConfig::default(), None, &mut Watcher::disabled()).unwrap();
        assert!(!a.healing());
        let mut iv = Interval::default();
        iv.counters.insert("sched_switch".into(), Some(100));
        a.on_interval(&mut iv).await;
        assert!(iv.detection.enabled);
        assert!(iv.detection.series > 0);
        assert_eq!(
            iv.detection.warming_up, iv.detection.series,
            "first interval: every series warming up"
        );
        assert!(iv.anomalies.is_empty() && iv.actions.is_empty() && iv.healing.is_none());
    }
}
