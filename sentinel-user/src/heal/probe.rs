//! HTTP probes, off the drain loop: each probe rule runs at most one GET at a time in its own
//! task, bounded by the rule's `timeout_ms`; the engine starts them at an interval and collects
//! what finished on its ticks. A slow or silent endpoint therefore costs the drain loop
//! nothing, and never more than one connection per rule.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::config::{ProbeTarget, RuleConfig, Trigger, parse_probe_url};
use super::triggers::probe_failure;

/// Probes in flight, by rule index.
#[derive(Default)]
pub struct Prober {
    running: HashMap<usize, JoinHandle<Option<String>>>,
}

impl Prober {
    /// Start a probe for every probe rule that has none running.
    pub fn launch(&mut self, rules: &[RuleConfig]) {
        for (idx, rule) in rules.iter().enumerate() {
            let Trigger::HttpProbe {
                url,
                timeout_ms,
                max_latency_ms,
                ..
            } = &rule.trigger
            else {
                continue;
            };
            if self.running.contains_key(&idx) {
                continue; // the previous one is still within its time-out
            }
            let Ok(target) = parse_probe_url(url) else {
                continue; // refused at validation; unreachable in practice
            };
            let timeout = Duration::from_millis(*timeout_ms);
            let max_latency_ms = *max_latency_ms;
            let task = tokio::spawn(async move {
                probe_failure(http_probe(&target, timeout).await, max_latency_ms)
            });
            self.running.insert(idx, task);
        }
    }

    /// The probes that finished since the last call: (rule index, failure or `None`).
    pub fn collect(&mut self) -> Vec<(usize, Option<String>)> {
        let done: Vec<usize> = self
            .running
            .iter()
            .filter(|(_, t)| t.is_finished())
            .map(|(i, _)| *i)
            .collect();
        let mut out = Vec::with_capacity(done.len());
        for idx in done {
            if let Some(task) = self.running.remove(&idx)
                && let Some(res) = task.now_or_never()
            {
                out.push((
                    idx,
                    res.unwrap_or_else(|e| Some(format!("probe task failed: {e}"))),
                ));
            }
        }
        out.sort();
        out
    }

    /// Probes running now.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.running.len()
    }

    pub fn abort(&mut self) {
        for (_, t) in self.running.drain() {
            t.abort();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.abort();
    }
}

/// One HTTP/1.0 GET with a hard time-out. Ok(latency) for a 2xx/3xx answer.
pub async fn http_probe(target: &ProbeTarget, timeout: Duration) -> Result<Duration, String> {
    let start = tokio::time::Instant::now();
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
    use crate::heal::config::{ActionConfig, Selector};

    /// A local HTTP server answering connection `i` (from 1) with `answer(i)`; `None` never
    /// answers.
    async fn server(answer: fn(u32) -> Option<&'static [u8]>) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut i = 0;
            while let Ok((mut s, _)) = l.accept().await {
                i += 1;
                let reply = answer(i);
                tokio::spawn(async move {
                    let mut b = [0u8; 512];
                    let _ = s.read(&mut b).await;
                    match reply {
                        Some(r) => {
                            let _ = s.write_all(r).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        port
    }

    fn rule(port: u16, timeout_ms: u64, max_latency_ms: Option<u64>) -> RuleConfig {
        RuleConfig {
            name: "p".into(),
            selector: Selector::default(),
            trigger: Trigger::HttpProbe {
                url: format!("http://127.0.0.1:{port}/health"),
                timeout_ms,
                max_latency_ms,
                intervals: 2,
            },
            action: ActionConfig::Start,
            cooldown_secs: 0.0,
            max_actions: 0,
            limit_window_secs: 600.0,
        }
    }

    #[tokio::test]
    async fn probe_ok_bad_and_timeout() {
        let port = server(|i| match i {
            1 => Some(b"HTTP/1.0 200 OK\r\n\r\n"),
            2 => Some(b"HTTP/1.0 503 No\r\n\r\n"),
            _ => None,
        })
        .await;
        let t = parse_probe_url(&format!("http://127.0.0.1:{port}/health")).unwrap();
        assert!(http_probe(&t, Duration::from_secs(2)).await.is_ok());
        assert_eq!(
            http_probe(&t, Duration::from_secs(2)).await.unwrap_err(),
            "status 503"
        );
        let start = std::time::Instant::now();
        assert!(
            http_probe(&t, Duration::from_millis(200))
                .await
                .unwrap_err()
                .contains("no answer")
        );
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    /// A silent endpoint never holds the caller: `launch` and `collect` return at once, at
    /// most one probe per rule runs, and the failure arrives after the rule's own time-out.
    #[tokio::test]
    async fn probes_run_off_the_caller_with_their_own_bound() {
        let port = server(|_| None).await;
        let rules = [rule(port, 300, None)];
        let mut p = Prober::default();
        let start = std::time::Instant::now();
        p.launch(&rules);
        p.launch(&rules);
        assert_eq!(p.in_flight(), 1, "one probe per rule");
        assert!(p.collect().is_empty(), "nothing finished yet");
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "never awaited"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let done = p.collect();
        assert_eq!(done.len(), 1);
        assert!(
            done[0]
                .1
                .as_deref()
                .unwrap()
                .contains("no answer within 300 ms")
        );
        assert_eq!(p.in_flight(), 0);
    }

    /// Slower than `max_latency_ms` is a failure even with a 200.
    #[tokio::test]
    async fn a_slow_success_is_a_failure_past_max_latency() {
        assert_eq!(
            probe_failure(Ok(Duration::from_millis(10)), Some(500)),
            None
        );
        assert_eq!(
            probe_failure(Ok(Duration::from_millis(600)), Some(500)).as_deref(),
            Some("latency 600 ms > 500 ms")
        );
        assert_eq!(probe_failure(Ok(Duration::from_secs(9)), None), None);
        let port = server(|_| Some(b"HTTP/1.0 200 OK\r\n\r\n")).await;
        let mut p = Prober::default();
        p.launch(&[rule(port, 1000, Some(1000))]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(p.collect(), vec![(0, None)]);
    }
}
