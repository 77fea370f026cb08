//! `sentinel top`: a live terminal view of the running daemon, read from the status socket at
//! the refresh pace. Host counters with sparklines, run-queue latency, the busiest containers,
//! open anomalies, breakers and the last healing actions. Every string that comes from a
//! container, the kernel or Docker passes through [`sanitize`]: a container named with escape
//! sequences must not reach the terminal as control codes.

use std::{
    collections::VecDeque,
    io::IsTerminal,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use ratatui::{
    Frame, Terminal,
    crossterm::{
        event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
        execute,
        terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
    },
    layout::{Constraint, Layout, Rect},
    prelude::CrosstermBackend,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Sparkline, Table},
};

use super::status::{self, StatusSnapshot, sanitize};
use crate::model::{Interval, RuntimeState};

/// Points kept per sparkline (the widest terminal shows the most recent ones).
const HISTORY: usize = 240;

/// Host rows: label, counter name (per-second rate of the interval delta).
const HOST_ROWS: [(&str, &str); 8] = [
    ("sched switch/s", "sched_switch"),
    ("wakeups/s", "sched_wakeup"),
    ("forks/s", "process_fork"),
    ("execs/s", "process_exec"),
    ("net rx pkt/s", "net_rx_packets"),
    ("net tx pkt/s", "net_tx_packets"),
    ("tcp retrans/s", "tcp_retransmits"),
    ("skb drops/s", "skb_drops"),
];

/// What `top` shows: the latest snapshot and the history behind the sparklines.
#[derive(Default)]
pub struct View {
    pub latest: Option<StatusSnapshot>,
    /// Per host row, then CPU percent and run-queue p99 (us): one value per interval.
    history: Vec<VecDeque<u64>>,
    last_seq: Option<u64>,
    pub error: Option<String>,
}

impl View {
    pub fn new() -> Self {
        Self {
            history: vec![VecDeque::with_capacity(HISTORY); HOST_ROWS.len() + 2],
            ..Self::default()
        }
    }

    /// Takes a fetched snapshot; history grows only when the daemon drained a new interval.
    pub fn update(&mut self, snap: StatusSnapshot) {
        if let Some(iv) = &snap.latest
            && self.last_seq != Some(iv.seq)
        {
            self.last_seq = Some(iv.seq);
            let secs = (iv.interval_ms / 1000.0).max(1e-3);
            let mut values: Vec<u64> = HOST_ROWS
                .iter()
                .map(|(_, name)| (counter(iv, name).unwrap_or(0) as f64 / secs).round() as u64)
                .collect();
            values.push((iv.system.cpu_percent * 10.0).round() as u64);
            values.push(iv.runqueue_latency_us.p99.round() as u64);
            for (h, v) in self.history.iter_mut().zip(values) {
                if h.len() == HISTORY {
                    h.pop_front();
                }
                h.push_back(v);
            }
        }
        self.latest = Some(snap);
        self.error = None;
    }

    fn series(&self, idx: usize, width: u16) -> Vec<u64> {
        let h = &self.history[idx];
        let skip = h.len().saturating_sub(usize::from(width));
        h.iter().skip(skip).copied().collect()
    }
}

fn counter(iv: &Interval, name: &str) -> Option<u64> {
    iv.counters.get(name).copied().flatten()
}

/// 1234567 -> "1.2M".
fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Latency in microseconds, shortest readable form: 90us, 11.5ms, 1.2s.
fn micros(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.1}s", us / 1e6)
    } else if us >= 1e4 {
        format!("{:.1}ms", us / 1e3)
    } else {
        format!("{us:.0}us")
    }
}

fn block(title: &str) -> Block<'_> {
    Block::bordered().title(Span::styled(
        title,
        Style::default().add_modifier(Modifier::BOLD),
    ))
}

/// Draws one frame.
pub fn draw(f: &mut Frame, view: &View) {
    let area = f.area();
    let [header, host, containers, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(HOST_ROWS.len() as u16 + 4),
        Constraint::Min(5),
        Constraint::Length(10),
    ])
    .areas(area);
    draw_header(f, header, view);
    let Some(snap) = &view.latest else {
        f.render_widget(
            Paragraph::new("waiting for the daemon...").block(block("Host")),
            host,
        );
        return;
    };
    let Some(iv) = &snap.latest else {
        f.render_widget(
            Paragraph::new("no interval drained yet").block(block("Host")),
            host,
        );
        return;
    };
    draw_host(f, host, view, iv);
    draw_containers(f, containers, iv);
    let [anomalies, breakers, actions] = Layout::horizontal([
        Constraint::Percentage(34),
        Constraint::Percentage(28),
        Constraint::Percentage(38),
    ])
    .areas(bottom);
    draw_anomalies(f, anomalies, snap, iv);
    draw_heal(f, breakers, actions, snap);
}

fn draw_header(f: &mut Frame, area: Rect, view: &View) {
    let mut spans = vec![Span::styled(
        " sentinel top ",
        Style::default().add_modifier(Modifier::REVERSED),
    )];
    if let Some(s) = &view.latest {
        let i = &s.info;
        let docker = s
            .latest
            .as_ref()
            .map(|iv| {
                // The other runtimes only where they are not absent.
                let mut st = iv.docker.as_str().to_string();
                for (rt, state) in iv
                    .runtimes
                    .iter()
                    .filter(|(_, s)| **s != RuntimeState::Absent)
                {
                    st.push_str(&format!(" {} {state}", sanitize(rt, 20)));
                }
                st
            })
            .unwrap_or_default();
        let ts = s
            .latest
            .as_ref()
            .map(|iv| sanitize(&iv.ts, 40))
            .unwrap_or_default();
        spans.push(Span::raw(format!(
            " v{} pid {} interval {}ms docker {docker} {ts}",
            sanitize(&i.version, 20),
            i.pid,
            i.interval_ms
        )));
    }
    if let Some(e) = &view.error {
        spans.push(Span::styled(
            format!("  {}", sanitize(e, 200)),
            Style::default().fg(Color::Red),
        ));
    }
    spans.push(Span::raw("  (q quits)"));
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_host(f: &mut Frame, area: Rect, view: &View, iv: &Interval) {
    let outer = block("Host");
    let inner = outer.inner(area);
    f.render_widget(outer, area);
    let mut rows = vec![Constraint::Length(1); HOST_ROWS.len() + 2];
    rows.push(Constraint::Min(0));
    let lines = Layout::vertical(rows).split(inner);
    let secs = (iv.interval_ms / 1000.0).max(1e-3);
    let label_w = 46;
    let mut draw_row = |i: usize, label: String, idx: usize| {
        let [text, spark] =
            Layout::horizontal([Constraint::Length(label_w), Constraint::Min(1)]).areas(lines[i]);
        f.render_widget(Paragraph::new(label), text);
        let data = view.series(idx, spark.width);
        f.render_widget(
            Sparkline::default()
                .data(&data)
                .style(Style::default().fg(Color::Cyan)),
            spark,
        );
    };
    for (i, (label, name)) in HOST_ROWS.iter().enumerate() {
        let value = match counter(iv, name) {
            Some(v) => human(v as f64 / secs),
            None => "off".to_string(),
        };
        draw_row(i, format!("{label:<16}{value:>10}"), i);
    }
    let s = &iv.system;
    draw_row(
        HOST_ROWS.len(),
        format!(
            "{:<16}{:>9.1}% mem {:.0}% load {:.2}",
            "cpu", s.cpu_percent, s.mem_used_percent, s.load1
        ),
        HOST_ROWS.len(),
    );
    let r = &iv.runqueue_latency_us;
    draw_row(
        HOST_ROWS.len() + 1,
        format!(
            "{:<10}p50 {} p99 {} max {}",
            "runq lat",
            micros(r.p50),
            micros(r.p99),
            micros(r.max)
        ),
        HOST_ROWS.len() + 1,
    );
}

/// The top contender of the container's run-queue wait and its share (`noisy 62%`), `-` when
/// it waited behind nobody else.
fn slowed_by_cell(c: &crate::model::ContainerDelta) -> String {
    match crate::analysis::slowed_by(c) {
        Some(by) => format!("{} {:.0}%", sanitize(&by.container, 24), by.share * 100.0),
        None => "-".to_string(),
    }
}

fn draw_containers(f: &mut Frame, area: Rect, iv: &Interval) {
    let header = Row::new(
        [
            "CONTAINER",
            "IMAGE",
            "RUNTIME",
            "CPU%",
            "RUNQ p99",
            "SLOWED BY",
            "CTXSW",
            "FORK",
            "RX pkt",
            "TX pkt",
            "RETX",
            "OOM",
        ]
        .map(|h| Cell::from(h).style(Style::default().add_modifier(Modifier::BOLD))),
    );
    let rows = iv.containers.iter().map(|c| {
        Row::new([
            sanitize(&c.name, 40),
            sanitize(&c.image, 30),
            sanitize(&c.runtime, 10),
            format!("{:.1}", c.cpu_percent),
            micros(c.runqueue_latency_us.p99),
            slowed_by_cell(c),
            human(c.stats.switches as f64),
            c.stats.forks.to_string(),
            // Not measured (the host's namespace, or none known): `-`, not 0.
            measured(c, || human(c.rx_packets as f64)),
            measured(c, || human(c.tx_packets as f64)),
            measured(c, || c.tcp_retransmits.to_string()),
            c.stats.oom_kills.to_string(),
        ])
    });
    let widths = [
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Fill(2),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(4),
    ];
    let title = format!("Busiest containers ({})", iv.containers.len());
    f.render_widget(
        Table::new(rows, widths).header(header).block(block(&title)),
        area,
    );
}

fn draw_anomalies(f: &mut Frame, area: Rect, snap: &StatusSnapshot, iv: &Interval) {
    let d = &iv.detection;
    let mut lines: Vec<Line> = Vec::new();
    if !d.enabled && snap.series.is_empty() {
        lines.push(Line::from("detection not running"));
    } else {
        let mut counts = format!(
            "series {} warming {} ready {} fallback {}",
            d.series, d.warming_up, d.ready, d.fallback
        );
        if d.statistical_only > 0 {
            counts.push_str(&format!(" statistical-only {}", d.statistical_only));
        }
        lines.push(Line::from(counts));
        if d.open.is_empty() {
            lines.push(Line::from("no open anomaly"));
        }
        for name in &d.open {
            let score = snap
                .series
                .iter()
                .find(|s| &s.name == name)
                .map(|s| format!(" score {:.2}", s.score))
                .unwrap_or_default();
            lines.push(Line::styled(
                format!("{}{score}", sanitize(name, 60)),
                Style::default().fg(Color::Red),
            ));
        }
    }
    f.render_widget(Paragraph::new(lines).block(block("Open anomalies")), area);
}

fn draw_heal(f: &mut Frame, breakers: Rect, actions: Rect, snap: &StatusSnapshot) {
    let Some(h) = &snap.heal else {
        f.render_widget(
            Paragraph::new("healing not running").block(block("Breakers")),
            breakers,
        );
        f.render_widget(
            Paragraph::new("healing not running").block(block("Last actions")),
            actions,
        );
        return;
    };
    let lines: Vec<Line> = status::breakers(&h.state)
        .into_iter()
        .map(|b| {
            let color = match b.state.as_str() {
                "OPEN" => Color::Red,
                "HALF_OPEN" => Color::Yellow,
                _ => Color::Green,
            };
            Line::from(vec![
                Span::styled(format!("{:<10}", b.state), Style::default().fg(color)),
                Span::raw(format!(" {} ({} fail)", b.container, b.failures)),
            ])
        })
        .collect();
    f.render_widget(Paragraph::new(lines).block(block("Breakers")), breakers);
    let recent = status::recent_actions(&h.recent);
    let height = usize::from(actions.height.saturating_sub(2));
    let lines: Vec<Line> = recent
        .iter()
        .skip(recent.len().saturating_sub(height))
        .map(|a| Line::from(a.as_str()))
        .collect();
    f.render_widget(Paragraph::new(lines).block(block("Last actions")), actions);
}

/// Restores the terminal however `run` ends.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen);
    }
}

pub fn run(socket: &Path, refresh: Duration) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!("sentinel top needs a terminal; use `sentinel status --json` in scripts");
    }
    // Fails before touching the terminal when the daemon is not there.
    let first = status::fetch(socket, Duration::from_secs(2))?;
    let mut view = View::new();
    view.update(first);
    enable_raw_mode()?;
    let _guard = TerminalGuard;
    execute!(std::io::stdout(), EnterAlternateScreen)?;
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    terminal.clear()?;
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            match status::fetch(socket, Duration::from_secs(2)) {
                Ok(snap) => view.update(snap),
                Err(e) => view.error = Some(format!("{e:#}")),
            }
            next = Instant::now() + refresh;
            terminal.draw(|f| draw(f, &view))?;
        }
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            match event::read()? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    let quit = matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL));
                    if quit {
                        return Ok(());
                    }
                }
                Event::Resize(..) => {
                    terminal.draw(|f| draw(f, &view))?;
                }
                _ => {}
            }
        }
    }
}

/// A network cell of `c`, or `-` where its record does not measure the network.
fn measured(c: &crate::model::ContainerDelta, cell: impl FnOnce() -> String) -> String {
    if c.network.measured() {
        cell()
    } else {
        "-".to_string()
    }
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::model::ContainerDelta;

    fn snapshot(seq: u64, name: &str) -> StatusSnapshot {
        let mut iv = Interval {
            seq,
            interval_ms: 1000.0,
            ts: "2026-11-23T15:00:01Z".into(),
            docker: crate::model::DockerState::Up,
            ..Default::default()
        };
        iv.counters.insert("sched_switch".into(), Some(1500 + seq));
        iv.counters.insert("tcp_retransmits".into(), None);
        iv.containers.push(ContainerDelta {
            name: name.into(),
            image: "busybox".into(),
            cpu_percent: 12.5,
            ..Default::default()
        });
        StatusSnapshot {
            latest: Some(iv),
            heal: Some(
                serde_json::from_value(serde_json::json!({
                    "docker": "up", "dry_run": false,
                    "global_breaker": {"state": "CLOSED", "failures_in_window": 0, "wait_secs": 60.0},
                    "breakers": [{"container_id": "ab", "container_name": "web", "state": "OPEN",
                                  "failures_in_window": 3, "wait_secs": 60.0}],
                    "actions_in_global_window": 0, "in_flight": 0, "permits_available": 2,
                    "permits_total": 2, "counters": crate::model::HealCounters::default(),
                    "recent": []
                }))
                .unwrap(),
            ),
            ..Default::default()
        }
    }

    /// The "slowed by" column: the top contender and its share of the container's wait; `-`
    /// for a container that waited behind nobody else.
    #[test]
    fn slowed_by_column_names_the_top_contender_and_its_share() {
        let mut snap = snapshot(1, "victim");
        let iv = snap.latest.as_mut().unwrap();
        let c = &mut iv.containers[0];
        c.runqueue_latency_us.sum = 2_000_000.0;
        c.contention = vec![
            crate::model::ContendedBy {
                container: "noisy".into(),
                seconds: 1.5,
            },
            crate::model::ContendedBy {
                container: "host".into(),
                seconds: 0.3,
            },
        ];
        c.contention_self_seconds = 0.2;
        iv.containers.push(ContainerDelta {
            name: "idle".into(),
            image: "busybox".into(),
            ..Default::default()
        });
        assert_eq!(slowed_by_cell(&iv.containers[0]), "noisy 75%");
        assert_eq!(slowed_by_cell(&iv.containers[1]), "-");
        let mut view = View::new();
        view.update(snap);
        let mut terminal = Terminal::new(TestBackend::new(200, 50)).unwrap();
        terminal.draw(|f| draw(f, &view)).unwrap();
        let rows: Vec<String> = {
            let buffer = terminal.backend().buffer();
            let w = buffer.area.width as usize;
            let cells: Vec<&str> = buffer
                .content()
                .iter()
                .map(ratatui::buffer::Cell::symbol)
                .collect();
            cells.chunks(w).map(<[&str]>::concat).collect()
        };
        assert!(rows.iter().any(|r| r.contains("SLOWED BY")), "{rows:#?}");
        let victim = rows.iter().find(|r| r.contains("victim")).unwrap();
        assert!(victim.contains("noisy 75%"), "{victim}");
        // Less in the kernel's sum than attributed (it may lag by a drain): the attributed
        // seconds are the whole, the share stays within 100%.
        let mut c = view.latest.unwrap().latest.unwrap().containers[0].clone();
        c.runqueue_latency_us.sum = 1_000_000.0;
        assert_eq!(slowed_by_cell(&c), "noisy 75%");
        c.contention_self_seconds = 0.0;
        c.contention.truncate(1);
        assert_eq!(slowed_by_cell(&c), "noisy 100%");
    }

    #[test]
    fn renders_sections_and_neutralises_hostile_names() {
        let mut view = View::new();
        for seq in 0..5 {
            view.update(snapshot(seq, "evil\u{1b}]0;pwned\u{7}\u{1b}[2J"));
        }
        view.update(snapshot(4, "evil\u{1b}]0;pwned\u{7}\u{1b}[2J"));
        assert_eq!(view.history[0].len(), 5, "a repeated seq adds no point");
        let mut terminal = Terminal::new(TestBackend::new(160, 50)).unwrap();
        terminal.draw(|f| draw(f, &view)).unwrap();
        let buffer = terminal.backend().buffer();
        let text: String = buffer
            .content()
            .iter()
            .map(ratatui::buffer::Cell::symbol)
            .collect();
        for expected in [
            "Host",
            "sched switch/s",
            "1504",
            "Busiest containers",
            "busybox",
            "OPEN",
        ] {
            assert!(text.contains(expected), "{expected} missing");
        }
        assert!(text.contains("evil"));
        assert!(
            !text.chars().any(char::is_control),
            "control characters reached the screen buffer"
        );
        assert!(
            text.contains("off"),
            "a disabled counter shows as off, not 0"
        );
    }
}
