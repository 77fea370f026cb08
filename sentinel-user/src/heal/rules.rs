//! Rules: selector matching, opt-in consent, trigger evaluation (pure functions over
//! `ContainerInfo` and streak counters) and the bounded HTTP probe.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::{HealConfig, ProbeTarget, RuleConfig, Selector, Trigger};
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
            (info.running && n >= *intervals)
                .then(|| format!("anomaly: {signal} for {n} intervals"))
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

/// One HTTP/1.0 GET with a hard time-out. Ok(latency) for a 2xx/3xx answer.
pub async fn http_probe(target: &ProbeTarget, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", target.addr))?;
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: sentinel-probe\r\nConnection: close\r\n\r\n",
            target.path, target.host_header
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        // Only the status line matters; read a bounded prefix.
        let mut buf = vec![0u8; 256];
        let mut n = 0;
        while n < 12 {
            let r = s
                .read(&mut buf[n..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let head = String::from_utf8_lossy(&buf[..n]);
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| "no HTTP status line".to_string())?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("status {code}"))
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => Ok(start.elapsed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heal::config::parse_probe_url;

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
        for v in [
            "TRUE",
            "yes",
            "true ",
            "true\n",
            "tгue",
            "1",
            "",
            huge.as_str(),
        ] {
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
                signal: "cpu".into(),
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

    #[tokio::test]
    async fn probe_ok_bad_and_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut i = 0;
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                i += 1;
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await;
                match i {
                    1 => s.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await.unwrap(),
                    2 => s.write_all(b"HTTP/1.0 503 No\r\n\r\n").await.unwrap(),
                    _ => tokio::time::sleep(Duration::from_secs(5)).await,
                }
            }
        });
        let t = parse_probe_url(&format!("http://127.0.0.1:{port}/health")).unwrap();
        assert!(http_probe(&t, Duration::from_secs(2)).await.is_ok());
        assert_eq!(
            http_probe(&t, Duration::from_secs(2)).await.unwrap_err(),
            "status 503"
        );
        let start = Instant::now();
        assert!(
            http_probe(&t, Duration::from_millis(200))
                .await
                .unwrap_err()
                .contains("no answer")
        );
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
