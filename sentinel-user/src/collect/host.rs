//! Cheap procfs/statvfs gauges, read once per interval: CPU busy %, memory used %, disk used %
//! of the root filesystem, load1, and the kernel's own context-switch count.

use std::{
    fs,
    io::{Read, Seek, SeekFrom},
};

use crate::model::SystemGauges;

pub struct HostSampler {
    prev_cpu: Option<(u64, u64)>,
    prev_ctxt: Option<u64>,
    stat: ProcFile,
    meminfo: ProcFile,
    loadavg: ProcFile,
}

impl Default for HostSampler {
    fn default() -> Self {
        Self {
            prev_cpu: None,
            prev_ctxt: None,
            stat: ProcFile::new("/proc/stat"),
            meminfo: ProcFile::new("/proc/meminfo"),
            loadavg: ProcFile::new("/proc/loadavg"),
        }
    }
}

/// A procfs file kept open and read again from offset 0 each interval: the kernel regenerates
/// it at every read from the start, and the path walk and open of a fresh descriptor cost more
/// than the read itself once a second with cold caches.
struct ProcFile {
    path: String,
    file: Option<fs::File>,
    text: String,
}

impl ProcFile {
    fn new(path: &str) -> Self {
        Self {
            path: path.to_string(),
            file: None,
            text: String::new(),
        }
    }

    /// The file's current text; empty if it cannot be read (the descriptor is then opened
    /// afresh next time).
    fn read(&mut self) -> &str {
        self.text.clear();
        if self.file.is_none() {
            self.file = fs::File::open(&self.path).ok();
        }
        let Some(file) = &mut self.file else {
            return "";
        };
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut self.text));
        if read.is_err() {
            self.file = None;
            self.text.clear();
        }
        &self.text
    }
}

impl HostSampler {
    /// Unreadable sources give 0 and are not fatal: these gauges are context, not the core.
    pub fn sample(&mut self) -> SystemGauges {
        let (cpu, ctxt) = parse_stat(self.stat.read());
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
            mem_used_percent: parse_meminfo(self.meminfo.read()),
            disk_used_percent: disk_used_percent("/"),
            load1: parse_loadavg(self.loadavg.read()),
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
    fn a_kept_file_is_read_whole_and_afresh_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gauge");
        let path = path.to_str().unwrap();
        let long: String = (0..2500).map(|i| format!("{i}\n")).collect();
        assert!(long.len() > 2 * 4096);
        fs::write(path, &long).unwrap();
        let mut f = ProcFile::new(path);
        assert_eq!(f.read(), long);
        fs::write(path, "short\n").unwrap();
        assert_eq!(f.read(), "short\n");
        assert_eq!(ProcFile::new("/nonexistent/gauge").read(), "");
        // The real ones parse through a kept descriptor, twice.
        let mut stat = ProcFile::new("/proc/stat");
        for _ in 0..2 {
            let (cpu, ctxt) = parse_stat(stat.read());
            assert!(cpu.is_some() && ctxt.is_some());
        }
    }

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
