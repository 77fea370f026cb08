//! Cheap procfs/statvfs gauges, read once per interval: CPU busy %, memory used %, disk used %
//! of the root filesystem, load1, and the kernel's own context-switch count.

use std::fs;

use crate::model::SystemGauges;

#[derive(Default)]
pub struct HostSampler {
    prev_cpu: Option<(u64, u64)>,
    prev_ctxt: Option<u64>,
}

impl HostSampler {
    /// Unreadable sources give 0 and are not fatal: these gauges are context, not the core.
    pub fn sample(&mut self) -> SystemGauges {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        let (cpu, ctxt) = parse_stat(&stat);
        let cpu_percent = match (self.prev_cpu, cpu) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                100.0 * busy1.saturating_sub(busy0) as f64 / (total1 - total0) as f64
            }
            _ => 0.0,
        };
        if cpu.is_some() {
            self.prev_cpu = cpu;
        }
        let context_switches = match (self.prev_ctxt, ctxt) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        if ctxt.is_some() {
            self.prev_ctxt = ctxt;
        }
        SystemGauges {
            cpu_percent,
            mem_used_percent: parse_meminfo(
                &fs::read_to_string("/proc/meminfo").unwrap_or_default(),
            ),
            disk_used_percent: disk_used_percent("/"),
            load1: parse_loadavg(&fs::read_to_string("/proc/loadavg").unwrap_or_default()),
            context_switches,
        }
    }

    /// Baseline for the first interval's context-switch delta.
    pub fn prime(&mut self) {
        self.sample();
    }
}

/// (busy jiffies, total jiffies) of the aggregate `cpu` line, and the `ctxt` count.
pub fn parse_stat(text: &str) -> (Option<(u64, u64)>, Option<u64>) {
    let mut cpu = None;
    let mut ctxt = None;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        match fields.next() {
            Some("cpu") => {
                let v: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
                if v.len() >= 4 {
                    // user nice system idle iowait irq softirq steal (guest is inside user).
                    let idle = v[3] + v.get(4).copied().unwrap_or(0);
                    let total: u64 = v.iter().take(8).sum();
                    cpu = Some((total.saturating_sub(idle), total));
                }
            }
            Some("ctxt") => ctxt = fields.next().and_then(|f| f.parse().ok()),
            _ => {}
        }
    }
    (cpu, ctxt)
}

pub fn parse_meminfo(text: &str) -> f64 {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_ascii_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(avail)) if total > 0.0 => 100.0 * (total - avail) / total,
        _ => 0.0,
    }
}

pub fn parse_loadavg(text: &str) -> f64 {
    text.split_ascii_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn disk_used_percent(path: &str) -> f64 {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let total = s.blocks() as f64;
            let free = s.blocks_free() as f64;
            let avail = s.blocks_available() as f64;
            // As df computes it: used / (used + available to unprivileged users).
            let used = total - free;
            if used + avail > 0.0 {
                100.0 * used / (used + avail)
            } else {
                0.0
            }
        }
        Err(_) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 1 2 3 4\nctxt 123456\nbtime 1\n";
        let (cpu, ctxt) = parse_stat(text);
        assert_eq!(cpu, Some((161, 981)));
        assert_eq!(ctxt, Some(123456));
        assert_eq!(parse_stat("garbage"), (None, None));
    }

    #[test]
    fn parses_meminfo_and_loadavg() {
        let mem = "MemTotal:       1000 kB\nMemFree:  100 kB\nMemAvailable:    250 kB\n";
        assert!((parse_meminfo(mem) - 75.0).abs() < 1e-9);
        assert_eq!(parse_meminfo(""), 0.0);
        assert_eq!(parse_loadavg("0.42 0.30 0.10 1/100 999\n"), 0.42);
    }

    #[test]
    fn samples_this_host() {
        let mut s = HostSampler::default();
        s.prime();
        let g = s.sample();
        assert!((0.0..=100.0).contains(&g.mem_used_percent) && g.mem_used_percent > 0.0);
        assert!((0.0..=100.0).contains(&g.disk_used_percent));
    }
}
