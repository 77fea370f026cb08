//! One human-readable line per interval.

use std::fmt::Write;

use crate::model::{ContainerDelta, Decision, Interval, Network};
use crate::sanitize::printable as safe;

pub fn line(iv: &Interval) -> String {
    let c = |name: &str| match iv.counters.get(name) {
        Some(Some(v)) => human(*v),
        _ => "-".to_string(),
    };
    let mut s = String::with_capacity(256);
    let time = iv.ts.get(11..19).unwrap_or(&iv.ts);
    let _ = write!(
        s,
        "{time} {:>5.0}ms | sched sw {} wake {} runq p50 {:.0}us p99 {:.0}us max {:.0}us | proc fork {} exec {} exit {} oom {} \
         | net tx {}p/{}B rx {}p/{}B retx {} tcp +{} -{} !{} drop {} | cpu {:.1}% mem {:.1}% disk {:.1}% load {:.2}",
        iv.interval_ms,
        c("sched_switch"),
        c("sched_wakeup"),
        iv.runqueue_latency_us.p50,
        iv.runqueue_latency_us.p99,
        iv.runqueue_latency_us.max,
        c("process_fork"),
        c("process_exec"),
        c("process_exit"),
        c("oom_kills"),
        c("net_tx_packets"),
        c("net_tx_bytes"),
        c("net_rx_packets"),
        c("net_rx_bytes"),
        c("tcp_retransmits"),
        c("tcp_conn_opened"),
        c("tcp_conn_closed"),
        c("tcp_conn_failed"),
        c("skb_drops"),
        iv.system.cpu_percent,
        iv.system.mem_used_percent,
        iv.system.disk_used_percent,
        iv.system.load1,
    );
    if !iv.collector.disabled.is_empty() {
        let _ = write!(s, " | disabled: {}", iv.collector.disabled.join(","));
    }
    if iv.collector.iface_overflow_packets > 0 {
        let _ = write!(
            s,
            " | iface map overflow {}",
            iv.collector.iface_overflow_packets
        );
    }
    if iv.collector.reset {
        s.push_str(" | counters reset");
    }
    // Indented block under the host line: busiest containers, anomaly events, healing.
    for c in iv.containers.iter().take(TEXT_CONTAINERS) {
        let network = network(c);
        let _ = write!(
            s,
            "\n  ctr {:<24} cpu {:>5.1}% sw {} runq p99 {:.0}us | fork {} exec {} exit {} abn {} oom {} \
             | {network}",
            safe(&c.name, 24),
            c.cpu_percent,
            human(c.stats.switches),
            c.runqueue_latency_us.p99,
            c.stats.forks,
            c.stats.execs,
            c.stats.exits,
            c.stats.abnormal_exits,
            c.stats.oom_kills,
        );
    }
    if iv.containers.len() > TEXT_CONTAINERS {
        let _ = write!(
            s,
            "\n  ... {} more containers",
            iv.containers.len() - TEXT_CONTAINERS
        );
    }
    for a in &iv.anomalies {
        let _ = write!(
            s,
            "\n  anomaly {} {} {} value {:.3} baseline {:.3} score {:.2}",
            a.kind,
            a.severity,
            safe(&a.series, 80),
            a.value,
            a.baseline,
            a.score
        );
    }
    for a in &iv.actions {
        // Only this interval's decisions would be news; the list is the recent ones, so show
        // the decisions that acted or failed, compactly.
        if matches!(a.decision, Decision::Taken | Decision::Failed) && a.ts >= iv.ts {
            let _ = write!(
                s,
                "\n  heal {} {} {} ({})",
                a.decision.as_str(),
                a.action.map_or("", |k| k.as_str()),
                safe(&a.container_name, 40),
                safe(&a.reason, 60)
            );
        }
    }
    s
}

/// Containers listed under the host line in text output.
const TEXT_CONTAINERS: usize = 5;

/// 1234567 -> "1.2M": the line has to stay readable at a glance.
fn human(v: u64) -> String {
    match v {
        0..=9_999 => v.to_string(),
        10_000..=9_999_999 => format!("{:.1}k", v as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1}M", v as f64 / 1e6),
        _ => format!("{:.1}G", v as f64 / 1e9),
    }
}

/// A container's traffic, or why it has none of its own (never a 0 that was not measured).
pub fn network(c: &ContainerDelta) -> String {
    match c.network {
        Network::Own => format!(
            "rx {}p tx {}p retx {} rst {}",
            human(c.rx_packets),
            human(c.tx_packets),
            c.tcp_retransmits,
            c.tcp_resets,
        ),
        Network::Host => "net: host's namespace".to_string(),
        Network::Unknown => "net: unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_container_names_cannot_reach_the_terminal_raw() {
        let mut iv = Interval::default();
        iv.containers.push(crate::model::ContainerDelta {
            name: "evil\u{1b}[2J\nname".into(),
            ..Default::default()
        });
        let text = line(&iv);
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert_eq!(text.lines().count(), 2, "one line per container: {text:?}");
        assert!(text.contains("evil\\u{1b}[2J\\nname"), "{text:?}");
        assert_eq!(safe(&"x".repeat(300), 24).chars().count(), 25);
    }

    #[test]
    fn renders_disabled_signals_as_dash() {
        let mut iv = Interval {
            ts: "2026-11-23T15:00:01Z".into(),
            interval_ms: 1000.0,
            ..Default::default()
        };
        iv.counters.insert("sched_switch".into(), Some(12_345));
        iv.counters.insert("tcp_retransmits".into(), None);
        iv.collector.disabled.push("snt_tcp_retransmit_skb".into());
        let l = line(&iv);
        assert!(l.starts_with("15:00:01"));
        assert!(l.contains("sched sw 12.3k"));
        assert!(l.contains("retx -"));
        assert!(l.contains("disabled: snt_tcp_retransmit_skb"));
        assert!(!l.contains('\n'));
    }
}
