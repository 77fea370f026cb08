//! Triggers: which rule fires for which container, as pure functions over `ContainerInfo` and
//! the streak counters of the k-interval triggers (anomalies, HTTP probes); selector matching
//! and opt-in consent.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::config::{HealConfig, RuleConfig, Selector, Signal, Trigger};
use super::docker::ContainerInfo;
use super::gate::Consent;

/// Only the exact value `true` on the container opts in (FAULT-MATRIX L3: `TRUE`, `yes`,
/// `true `, `true\n`, look-alike Unicode all do not). The effective labels Docker reports merge
/// the image's; when the image carries the same `key=true`, the opt-in may have come from the
/// image author, not from whoever ran the container, so it is `LabelFromImage` unless the config
/// allows image labels. (A container run with `--label key=true` on such an image looks the
/// same; that case is refused too, on the safe side.)
pub fn consent(cfg: &HealConfig, info: &ContainerInfo) -> Consent {
    let key = cfg.label.as_str();
    if info.labels.get(key).map(String::as_str) != Some("true") {
        return Consent::NotLabelled;
    }
    if info.image_labels.get(key).map(String::as_str) == Some("true") && !cfg.allow_image_label {
        return Consent::LabelFromImage;
    }
    Consent::Labelled
}

pub fn selects(sel: &Selector, info: &ContainerInfo) -> bool {
    let labels_ok = sel
        .labels
        .iter()
        .all(|(k, v)| info.labels.get(k) == Some(v));
    let names_ok = sel.names.is_empty() || sel.names.iter().any(|n| n == &info.name);
    labels_ok && names_ok
}

/// Per (container, rule) and per rule counters that triggers needing k intervals read.
#[derive(Default, Debug)]
pub struct Streaks {
    /// (container id, rule index) -> consecutive intervals with the anomaly.
    pub anomaly: HashMap<(String, usize), u32>,
    /// rule index -> consecutive failed probes, and the last failure text.
    pub probe: HashMap<usize, (u32, String)>,
    /// (container id, signal) -> whom the container waited behind in the latest interval, for
    /// the trigger text of a `runq_latency` anomaly (issue 20).
    pub slowed_by: HashMap<(String, Signal), String>,
    /// (container id, signal) -> that top contender and its weight (`cap_contender`).
    pub contender: HashMap<(String, Signal), super::Contender>,
}

impl Streaks {
    /// One interval's container anomalies (resolved container id, signal): every anomaly rule
    /// on that signal counts one more interval for the container, and starts over for the
    /// containers without it.
    pub fn advance_anomalies(&mut self, rules: &[RuleConfig], hits: &[(String, Signal)]) {
        for (idx, rule) in rules.iter().enumerate() {
            let Trigger::Anomaly { signal, .. } = &rule.trigger else {
                continue;
            };
            let hit: HashSet<&str> = hits
                .iter()
                .filter(|(_, s)| s == signal)
                .map(|(c, _)| c.as_str())
                .collect();
            self.anomaly
                .retain(|(c, r), _| *r != idx || hit.contains(c.as_str()));
            for c in hit {
                *self.anomaly.entry((c.to_string(), idx)).or_insert(0) += 1;
            }
        }
    }

    /// Finished probes, per rule: a failure (error, or slower than `max_latency_ms`) counts one
    /// more, a success starts over.
    pub fn apply_probes(&mut self, results: Vec<(usize, Option<String>)>) {
        for (idx, failure) in results {
            match failure {
                Some(why) => {
                    let e = self.probe.entry(idx).or_default();
                    e.0 += 1;
                    e.1 = why;
                }
                None => {
                    self.probe.remove(&idx);
                }
            }
        }
    }

    /// Every (container, rule, trigger text) whose k-interval trigger fires now; a probe rule
    /// names its selector's containers. Sorted.
    pub fn due(&self, rules: &[RuleConfig]) -> Vec<(String, usize, String)> {
        let mut due = Vec::new();
        for (idx, rule) in rules.iter().enumerate() {
            match &rule.trigger {
                Trigger::Anomaly { intervals, signal } => {
                    for ((c, r), n) in &self.anomaly {
                        if *r == idx && *n >= *intervals {
                            due.push((c.clone(), idx, self.anomaly_text(c, *signal, *n)));
                        }
                    }
                }
                Trigger::HttpProbe { intervals, .. } => {
                    if let Some((n, why)) = self.probe.get(&idx)
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
        due
    }

    /// Any streak state for this container (so a full pass inspects it).
    pub fn concerns(&self, id: &str, rules: &[RuleConfig]) -> bool {
        self.anomaly.keys().any(|(c, _)| c == id)
            || rules.iter().enumerate().any(|(i, r)| {
                matches!(r.trigger, Trigger::HttpProbe { .. }) && self.probe.contains_key(&i)
            })
    }

    pub fn forget(&mut self, id: &str) {
        self.anomaly.retain(|(c, _), _| c != id);
        self.slowed_by.retain(|(c, _), _| c != id);
        self.contender.retain(|(c, _), _| c != id);
    }

    /// `anomaly: runq_latency for 3 intervals, slowed by noisy (62%)`: the contender where the
    /// anomaly named one.
    fn anomaly_text(&self, id: &str, signal: Signal, n: u32) -> String {
        match self.slowed_by.get(&(id.to_string(), signal)) {
            Some(by) => format!("anomaly: {signal} for {n} intervals, slowed by {by}"),
            None => format!("anomaly: {signal} for {n} intervals"),
        }
    }
}

/// A probe's result as a trigger sees it: `None` healthy, else why it failed.
pub fn probe_failure(res: Result<Duration, String>, max_latency_ms: Option<u64>) -> Option<String> {
    match res {
        Err(e) => Some(e),
        Ok(lat) => max_latency_ms
            .filter(|max| lat > Duration::from_millis(*max))
            .map(|max| format!("latency {} ms > {max} ms", lat.as_millis())),
    }
}

/// Why a rule fires for a container, or `None`. `stopped_by_operator` lets an `unhealthy` rule
/// still see a stopped container so the audit can say why it is left alone (D5).
pub fn fires(
    idx: usize,
    rule: &RuleConfig,
    info: &ContainerInfo,
    streaks: &Streaks,
    stopped_by_operator: bool,
) -> Option<String> {
    match &rule.trigger {
        Trigger::Unhealthy => (info.health == "unhealthy" && (info.running || stopped_by_operator))
            .then(|| "health_status: unhealthy".to_string()),
        Trigger::Died { oom_only } => {
            // A container Docker is restarting died too: it fires, and the gate then leaves it
            // to Docker (`docker_restart_policy_active`), which is what the audit should say.
            let dead = info.restarting
                || (!info.running && matches!(info.status.as_str(), "exited" | "dead"));
            let bad = if *oom_only {
                info.oom_killed
            } else {
                info.oom_killed || info.exit_code != 0
            };
            (dead && bad).then(|| {
                if info.oom_killed {
                    "died: oom_killed".to_string()
                } else {
                    format!("died: exit_code {}", info.exit_code)
                }
            })
        }
        Trigger::Anomaly { signal, intervals } => {
            let n = streaks
                .anomaly
                .get(&(info.id.clone(), idx))
                .copied()
                .unwrap_or(0);
            (info.running && n >= *intervals).then(|| streaks.anomaly_text(&info.id, *signal, n))
        }
        Trigger::HttpProbe { intervals, .. } => {
            let (n, why) = streaks.probe.get(&idx).cloned().unwrap_or_default();
            (info.running && n >= *intervals)
                .then(|| format!("http_probe: {why} for {n} intervals"))
        }
    }
}

/// A docker `stop`/`kill` would look like this exit: 143 (SIGTERM) or 137 (SIGKILL, not OOM).
/// Used only for containers that stopped before sentinel saw their events.
pub fn looks_stopped_on_purpose(info: &ContainerInfo) -> bool {
    !info.running && !info.oom_killed && matches!(info.exit_code, 143 | 137)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(labels: &[(&str, &str)], image: &[(&str, &str)]) -> ContainerInfo {
        ContainerInfo {
            id: "c1".into(),
            name: "web".into(),
            labels: labels
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            image_labels: image
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            running: true,
            health: "unhealthy".into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_exact_true_on_the_container_opts_in() {
        let cfg = HealConfig::default();
        let k = "sentinel.heal";
        assert_eq!(consent(&cfg, &info(&[(k, "true")], &[])), Consent::Labelled);
        let huge = "true".repeat(1 << 18);
        for v in crate::heal::fake::HOSTILE_VALUES
            .into_iter()
            .chain([huge.as_str()])
        {
            assert_eq!(
                consent(&cfg, &info(&[(k, v)], &[])),
                Consent::NotLabelled,
                "{v:?}"
            );
        }
        assert_eq!(consent(&cfg, &info(&[], &[])), Consent::NotLabelled);
        let inherited = info(&[(k, "true")], &[(k, "true")]);
        assert_eq!(consent(&cfg, &inherited), Consent::LabelFromImage);
        let allow = HealConfig {
            allow_image_label: true,
            ..HealConfig::default()
        };
        assert_eq!(consent(&allow, &inherited), Consent::Labelled);
        // Image says true, container overrides to false: not labelled.
        assert_eq!(
            consent(&cfg, &info(&[(k, "false")], &[(k, "true")])),
            Consent::NotLabelled
        );
    }

    #[test]
    fn triggers() {
        let rule = RuleConfig::autoheal();
        let s = Streaks::default();
        let mut i = info(&[], &[]);
        assert!(fires(0, &rule, &i, &s, false).is_some());
        i.running = false;
        assert!(fires(0, &rule, &i, &s, false).is_none());
        assert!(fires(0, &rule, &i, &s, true).is_some());
        let died = RuleConfig {
            trigger: Trigger::Died { oom_only: false },
            ..RuleConfig::autoheal()
        };
        i.status = "exited".into();
        i.exit_code = 0;
        assert!(fires(0, &died, &i, &s, false).is_none(), "clean exit");
        i.exit_code = 3;
        assert_eq!(
            fires(0, &died, &i, &s, false).as_deref(),
            Some("died: exit_code 3")
        );
        let anomaly = RuleConfig {
            trigger: Trigger::Anomaly {
                signal: "cpu".parse().unwrap(),
                intervals: 2,
            },
            ..RuleConfig::autoheal()
        };
        let mut s = Streaks::default();
        i.running = true;
        s.anomaly.insert(("c1".into(), 0), 1);
        assert!(fires(0, &anomaly, &i, &s, false).is_none());
        s.anomaly.insert(("c1".into(), 0), 2);
        assert!(fires(0, &anomaly, &i, &s, false).is_some());
    }

    fn rules() -> Vec<RuleConfig> {
        vec![
            RuleConfig::autoheal(),
            RuleConfig {
                name: "cpu".into(),
                trigger: Trigger::Anomaly {
                    signal: "cpu".parse().unwrap(),
                    intervals: 2,
                },
                ..RuleConfig::autoheal()
            },
            RuleConfig {
                name: "probe".into(),
                selector: Selector {
                    names: vec!["api".into(), "api2".into()],
                    ..Selector::default()
                },
                trigger: Trigger::HttpProbe {
                    url: "http://127.0.0.1:1/".into(),
                    timeout_ms: 100,
                    max_latency_ms: None,
                    intervals: 2,
                    ca_file: None,
                },
                ..RuleConfig::autoheal()
            },
        ]
    }

    #[test]
    fn anomaly_streaks_count_consecutive_intervals_and_start_over() {
        let r = rules();
        let cpu: Signal = "cpu".parse().unwrap();
        let oom: Signal = "oom_kills".parse().unwrap();
        let mut s = Streaks::default();
        s.advance_anomalies(&r, &[("a".into(), cpu), ("b".into(), oom)]);
        s.advance_anomalies(&r, &[("a".into(), cpu)]);
        assert_eq!(s.anomaly.get(&("a".into(), 1)), Some(&2));
        assert!(!s.anomaly.contains_key(&("b".into(), 1)), "other signal");
        s.advance_anomalies(&r, &[]);
        assert!(s.anomaly.is_empty(), "a quiet interval starts over");
    }

    #[test]
    fn due_lists_what_fires_and_a_probe_names_its_containers() {
        let r = rules();
        let cpu: Signal = "cpu".parse().unwrap();
        let mut s = Streaks::default();
        s.advance_anomalies(&r, &[("a".into(), cpu)]);
        assert!(s.due(&r).is_empty(), "1 of 2 intervals");
        s.advance_anomalies(&r, &[("a".into(), cpu)]);
        s.apply_probes(vec![(2, Some("status 503".into()))]);
        s.apply_probes(vec![(2, Some("status 502".into()))]);
        assert_eq!(
            s.due(&r),
            vec![
                (
                    "a".to_string(),
                    1,
                    "anomaly: cpu for 2 intervals".to_string()
                ),
                (
                    "api,api2".to_string(),
                    2,
                    "http_probe: status 502".to_string()
                ),
            ]
        );
        s.apply_probes(vec![(2, None)]);
        assert_eq!(s.due(&r).len(), 1, "a good probe starts over");
    }

    #[test]
    fn concerns_and_forget() {
        let r = rules();
        let mut s = Streaks::default();
        s.advance_anomalies(&r, &[("a".into(), "cpu".parse().unwrap())]);
        assert!(s.concerns("a", &r) && !s.concerns("b", &r));
        s.apply_probes(vec![(2, Some("x".into()))]);
        assert!(
            s.concerns("b", &r),
            "a failing probe makes every container worth a look"
        );
        s.forget("a");
        assert!(s.anomaly.is_empty());
    }

    #[test]
    fn selectors_need_every_label_and_a_listed_name() {
        let i = info(&[("app", "web"), ("tier", "front")], &[]);
        let sel = |labels: &[(&str, &str)], names: &[&str]| Selector {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            names: names.iter().map(ToString::to_string).collect(),
        };
        assert!(selects(&sel(&[], &[]), &i), "empty: every container");
        assert!(selects(&sel(&[("app", "web")], &["web"]), &i));
        assert!(!selects(&sel(&[("app", "web"), ("tier", "back")], &[]), &i));
        assert!(!selects(&sel(&[], &["api"]), &i), "names is an allow-list");
    }

    #[test]
    fn oom_only_fires_on_an_oom_kill_only() {
        let rule = RuleConfig {
            trigger: Trigger::Died { oom_only: true },
            ..RuleConfig::autoheal()
        };
        let mut i = info(&[], &[]);
        i.running = false;
        i.status = "exited".into();
        i.exit_code = 1;
        let s = Streaks::default();
        assert!(fires(0, &rule, &i, &s, false).is_none());
        i.oom_killed = true;
        assert_eq!(
            fires(0, &rule, &i, &s, false).as_deref(),
            Some("died: oom_killed")
        );
        assert!(
            !looks_stopped_on_purpose(&i),
            "an OOM kill is no operator stop"
        );
    }
}
