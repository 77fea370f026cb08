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
    heal::{ContainerAnomaly, Contender, HealEngine, config::HealConfig},
    model::{AnomalyRecord, ContainerDelta, Interval, SeriesStatus, SlowedBy},
};

/// The container signal whose anomaly names a top contender.
const RUNQ_SIGNAL: &str = "runq_latency";

/// The container's top contender in the interval and its share of the container's wait:
/// seconds behind it over the whole wait (the kernel's run-queue sum, or the attributed
/// seconds when those are larger, so the share never exceeds 1). `None` when it waited behind
/// nobody else.
pub fn slowed_by(c: &ContainerDelta) -> Option<SlowedBy> {
    let top = c.contention.first().filter(|t| t.seconds > 0.0)?;
    let attributed: f64 =
        c.contention.iter().map(|t| t.seconds).sum::<f64>() + c.contention_self_seconds;
    let whole = (c.runqueue_latency_us.sum / 1e6).max(attributed);
    Some(SlowedBy {
        container: top.container.to_string(),
        seconds: top.seconds,
        share: top.seconds / whole,
    })
}

/// The interval's record of the container an anomaly is about: by id, else by the name in
/// its series (`container.<name>.<signal>`).
fn container_of<'a>(
    iv: &'a Interval,
    id: Option<&str>,
    series: &str,
    signal: &str,
) -> Option<&'a ContainerDelta> {
    if let Some(id) = id.filter(|id| !id.is_empty())
        && let Some(c) = iv
            .containers
            .iter()
            .find(|c| !c.id.is_empty() && (c.id.starts_with(id) || id.starts_with(&c.id)))
    {
        return Some(c);
    }
    let name = series
        .strip_prefix("container.")?
        .strip_suffix(signal)?
        .strip_suffix('.')?;
    // The series carries the label, not the name: a cgroup path loses its leading `/`.
    iv.containers
        .iter()
        .find(|c| crate::detect::engine::container_label(c) == Some(name))
}

/// Fills `slowed_by` of the interval's `runq_latency` anomaly records.
fn name_contenders(iv: &mut Interval) {
    let found: Vec<Option<SlowedBy>> = iv
        .anomalies
        .iter()
        .map(|a: &AnomalyRecord| {
            if a.signal != RUNQ_SIGNAL {
                return None;
            }
            container_of(iv, a.container_id.as_deref(), &a.series, &a.signal).and_then(slowed_by)
        })
        .collect();
    for (a, by) in iv.anomalies.iter_mut().zip(found) {
        a.slowed_by = by;
    }
}

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
            self.open.retain(|series, _| engine.tracks(series));
            iv.anomalies = events.iter().map(AnomalyEvent::to_record).collect();
            name_contenders(iv);
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
                    let by = (event.signal == RUNQ_SIGNAL)
                        .then(|| {
                            container_of(
                                iv,
                                event.container_id.as_deref(),
                                &event.series,
                                &event.signal,
                            )
                        })
                        .flatten()
                        .and_then(slowed_by);
                    Some(ContainerAnomaly {
                        container_id: event.container_id.clone()?,
                        // Container events carry a container signal; host series have no
                        // container id and are filtered out above.
                        signal: event.signal.parse().ok()?,
                        score: event.score,
                        slowed_by: by
                            .as_ref()
                            .map(|by| format!("{} ({:.0}%)", by.container, by.share * 100.0)),
                        contender: by.map(|by| Contender {
                            wait_fraction: by.seconds / (iv.interval_ms / 1e3).max(1e-3),
                            share: by.share,
                            name: by.container,
                        }),
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
            .flat_map(super::detect::engine::DetectionEngine::series_unordered)
            .map(|(name, state, score)| SeriesStatus {
                name: name.clone(),
                state,
                score,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn victim(id: &str, name: &str) -> ContainerDelta {
        let mut c = ContainerDelta {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        };
        c.runqueue_latency_us.sum = 400_000.0;
        c.contention = vec![
            crate::model::ContendedBy {
                container: "noisy".into(),
                seconds: 0.3,
            },
            crate::model::ContendedBy {
                container: "host".into(),
                seconds: 0.1,
            },
        ];
        c
    }

    fn record(signal: &str, series: &str, id: Option<&str>) -> AnomalyRecord {
        AnomalyRecord {
            kind: "raised".into(),
            series: series.into(),
            signal: signal.into(),
            container_id: id.map(str::to_string),
            severity: "warning".into(),
            ..Default::default()
        }
    }

    /// Issue 20: a `runq_latency` anomaly names the container's top contender and its share;
    /// other signals and containers that waited behind nobody carry none.
    #[test]
    fn a_runq_latency_anomaly_names_its_top_contender() {
        let web = "ab".repeat(32);
        let mut quiet = victim(&"cd".repeat(32), "quiet");
        quiet.contention.clear();
        let containers = vec![
            victim(&web, "web"),
            victim("", "cg"),
            quiet,
            victim("", "/user.slice#42"),
        ];
        let anomalies = vec![
            record("runq_latency", "container.web.runq_latency", Some(&web)),
            record("cpu", "container.web.cpu", Some(&web)),
            // No id (a cgroup): found by the name in the series.
            record("runq_latency", "container.cg.runq_latency", None),
            record(
                "runq_latency",
                "container.quiet.runq_latency",
                Some(&"cd".repeat(32)),
            ),
            record("runq_latency", "runq_latency", None),
            // A cgroup path: the series label has no leading `/`.
            record("runq_latency", "container.user.slice#42.runq_latency", None),
        ];
        let mut iv = Interval {
            containers,
            anomalies,
            ..Default::default()
        };
        name_contenders(&mut iv);
        let by = iv.anomalies[0].slowed_by.as_ref().expect("named");
        assert_eq!(by.container, "noisy");
        assert!((by.seconds - 0.3).abs() < 1e-9 && (by.share - 0.75).abs() < 1e-9);
        assert!(iv.anomalies[1].slowed_by.is_none(), "cpu names nobody");
        assert_eq!(
            iv.anomalies[2]
                .slowed_by
                .as_ref()
                .map(|b| b.container.as_str()),
            Some("noisy")
        );
        assert!(iv.anomalies[3].slowed_by.is_none(), "waited behind nobody");
        assert!(iv.anomalies[4].slowed_by.is_none(), "host series");
        assert_eq!(
            iv.anomalies[5]
                .slowed_by
                .as_ref()
                .map(|b| b.container.as_str()),
            Some("noisy"),
            "a cgroup path's series"
        );
        // The field reaches the interval's JSON only where it is set.
        let json = serde_json::to_value(&iv.anomalies).unwrap();
        assert_eq!(json[0]["slowed_by"]["container"], "noisy");
        assert!(json[1].get("slowed_by").is_none());
    }

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
