//! The status socket: `sentinel status` and `sentinel top` ask the running daemon for its
//! latest state. Protocol: the client connects, the daemon writes one JSON document (a
//! [`StatusSnapshot`]) and closes. The daemon publishes snapshots through a
//! `tokio::sync::watch` channel, so serving a client never waits for the drain loop.
//!
//! One daemon per host is enforced by the collector's lock (`collect::instance`, K15), taken
//! before this socket is bound.

use std::{
    fs::DirBuilder,
    io::Read,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt, net::UnixListener};
use tracing::{debug, info, warn};

use crate::model::{
    AuditRecord, HealState, HealStatus, Interval, Published, PublishedRx, SeriesStatus,
};
pub use crate::sanitize::printable as sanitize;

pub const DEFAULT_SOCKET: &str = "/run/sentinel/sentinel.sock";
/// A client that does not read its snapshot within this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The daemon's identity, fixed at start.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerInfo {
    pub version: String,
    pub pid: u32,
    /// RFC 3339 start time of the daemon.
    pub started: String,
    /// Configured drain interval, milliseconds (clients poll at this pace).
    pub interval_ms: u64,
    /// Where `/metrics` is served, if it is.
    pub metrics_addr: Option<String>,
}

/// What the daemon tells `status` and `top` (the client side of the document).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusSnapshot {
    #[serde(flatten)]
    pub info: ServerInfo,
    /// The latest drained interval (none before the first one).
    pub latest: Option<Interval>,
    /// Every series the detection engine tracks.
    #[serde(default)]
    pub series: Vec<SeriesView>,
    /// Healing engine state (breakers, counters, recent decisions); `null` when disabled.
    #[serde(default)]
    pub heal: Option<HealStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SeriesView {
    pub name: String,
    /// `warming_up`, `ready` or `fallback`.
    pub state: String,
    pub score: f64,
}

/// The server side of the same document, serialised from the published interval in place.
#[derive(Serialize)]
struct StatusOut<'a> {
    #[serde(flatten)]
    info: &'a ServerInfo,
    latest: Option<&'a Interval>,
    /// By name.
    series: Vec<&'a SeriesStatus>,
    heal: Option<HealOut<'a>>,
}

/// `HealStatus`, borrowed from the interval: its `healing` state and its `actions`.
#[derive(Serialize)]
struct HealOut<'a> {
    #[serde(flatten)]
    state: &'a HealState,
    recent: &'a [AuditRecord],
}

/// The JSON document a client receives.
pub fn document(info: &ServerInfo, published: Option<&Published>) -> serde_json::Result<Vec<u8>> {
    let out = StatusOut {
        info,
        latest: published.map(|p| &p.interval),
        series: published.map_or_else(Vec::new, |p| {
            let mut by_name: Vec<&SeriesStatus> = p.series.iter().collect();
            by_name.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            by_name
        }),
        heal: published.and_then(|p| {
            p.interval.healing.as_ref().map(|state| HealOut {
                state,
                recent: &p.interval.actions,
            })
        }),
    };
    let mut body = serde_json::to_vec(&out)?;
    body.push(b'\n');
    Ok(body)
}

/// Creates `dir` with mode 0700. An existing directory is left as it is (it may be shared,
/// e.g. /tmp), with a warning when others can enter it; the socket itself is 0600 anyway.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) => {
            return Err(anyhow!(e))
                .with_context(|| format!("cannot create the runtime directory {}", dir.display()));
        }
    }
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot stat the runtime directory {}", dir.display()))?;
    if meta.mode() & 0o077 != 0 {
        if meta.uid() == nix::unistd::geteuid().as_raw() && dir.starts_with("/run/sentinel") {
            // Ours (e.g. left by an older version): tighten it.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot chmod 0700 {}", dir.display()))?;
        } else {
            warn!(
                "runtime directory {} is accessible by other users (mode {:o})",
                dir.display(),
                meta.mode() & 0o777
            );
        }
    }
    Ok(())
}

/// Binds the status socket (mode 0600). The daemon holds the collector's single-instance lock
/// (`collect::instance`) by then, so a socket file left behind is stale by construction; it is
/// probed first anyway, so that a daemon with another runtime directory is never cut off.
pub fn bind(socket: &Path) -> Result<UnixListener> {
    if socket.exists() {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(_) => bail!(
                "another sentinel answers on {}: stop it first or use another --socket",
                socket.display()
            ),
            Err(_) => {
                debug!("removing stale socket {}", socket.display());
                std::fs::remove_file(socket)
                    .with_context(|| format!("cannot remove stale socket {}", socket.display()))?;
            }
        }
    }
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("cannot bind the status socket {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod 0600 {}", socket.display()))?;
    info!("status socket at {}", socket.display());
    Ok(listener)
}

/// Clients served at once; more wait in the listen backlog (a stuck client is dropped after
/// [`WRITE_TIMEOUT`], so the wait is bounded).
const MAX_CLIENTS: usize = 16;

/// Answers every connection with the latest snapshot until the task is aborted.
pub async fn serve(listener: UnixListener, info: Arc<ServerInfo>, published: PublishedRx) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("status: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let latest = published.borrow().clone();
        let info = info.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Serialised here, not in the drain loop: only clients pay for it.
            let body = match document(&info, latest.as_deref()) {
                Ok(body) => body,
                Err(e) => {
                    warn!("status: cannot serialise the snapshot: {e}");
                    return;
                }
            };
            let write = async {
                stream.write_all(&body).await?;
                stream.shutdown().await
            };
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("status: client went away: {e}"),
                Err(_) => debug!("status: client too slow, dropped"),
            }
        });
    }
}

/// Removes the socket file on a clean exit.
pub fn remove_socket(socket: &Path) {
    if let Err(e) = std::fs::remove_file(socket)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!("cannot remove {}: {e}", socket.display());
    }
}

/// Client side: connects, reads the one document, parses it.
pub fn fetch(socket: &Path, timeout: Duration) -> Result<StatusSnapshot> {
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                " — is `sentinel run` running?"
            }
            std::io::ErrorKind::PermissionDenied => " — the socket is root-only: use sudo",
            _ => "",
        };
        anyhow!(
            "cannot reach the sentinel daemon at {}: {e}{hint}",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    let mut body = Vec::new();
    // Bounded: a snapshot is a few hundred KiB at most (bounded interface list).
    stream
        .take(64 << 20)
        .read_to_end(&mut body)
        .with_context(|| format!("reading the status from {}", socket.display()))?;
    serde_json::from_slice(&body)
        .with_context(|| format!("the daemon at {} sent an invalid status", socket.display()))
}

/// One circuit breaker as `status` and `top` show it.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerLine {
    pub container: String,
    pub state: String,
    pub failures: u64,
}

/// The per-container breakers of a healing snapshot, the global one first (as `*`).
pub fn breakers(heal: &HealState) -> Vec<BreakerLine> {
    let global = BreakerLine {
        container: "* (global)".into(),
        state: heal.global_breaker.state.as_str().to_string(),
        failures: heal.global_breaker.failures_in_window as u64,
    };
    let per = heal.breakers.iter().map(|b| BreakerLine {
        container: if b.container_name.is_empty() {
            sanitize(&b.container_id, 12)
        } else {
            sanitize(&b.container_name, 120)
        },
        state: b.view.state.as_str().to_string(),
        failures: b.view.failures_in_window as u64,
    });
    std::iter::once(global).chain(per).collect()
}

/// The last healing decisions, newest last, one line each (already sanitised).
pub fn recent_actions(recent: &[AuditRecord]) -> Vec<String> {
    recent
        .iter()
        .map(|r| {
            let mut line = format!(
                "{} {} {}",
                r.ts.get(11..19).unwrap_or_default(),
                r.container_name,
                r.decision.as_str()
            );
            for v in [
                r.action.map(super::super::model::ActionKind::as_str),
                r.outcome.as_deref(),
                Some(r.reason.as_str()),
            ]
            .into_iter()
            .flatten()
            {
                if !v.is_empty() {
                    line.push(' ');
                    line.push_str(v);
                }
            }
            sanitize(&line, 160)
        })
        .collect()
}

/// `sentinel status`: a readable summary (every string from containers is sanitised).
pub fn render_text(s: &StatusSnapshot) -> String {
    use std::fmt::Write as _;
    let i = &s.info;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sentinel {} pid {} since {} interval {}ms metrics {}",
        sanitize(&i.version, 40),
        i.pid,
        sanitize(&i.started, 40),
        i.interval_ms,
        sanitize(i.metrics_addr.as_deref().unwrap_or("off"), 80)
    );
    let Some(iv) = &s.latest else {
        out.push_str("latest     (no interval drained yet)\n");
        return out;
    };
    // The text line may span lines (one per container): sanitise each, keep the breaks.
    for (i, line) in super::text::line(iv).lines().enumerate() {
        let title = if i == 0 { "latest" } else { "" };
        let _ = writeln!(out, "{title:<10} {}", sanitize(line, 2000));
    }
    let c = &iv.collector;
    let _ = writeln!(
        out,
        "collector  seq {} drain {}us iface map {}/{} container map {}/{} overflow {} disabled [{}] docker {}",
        iv.seq,
        c.drain_us,
        c.iface_entries,
        c.iface_capacity,
        c.container_entries,
        c.container_capacity,
        c.overflow.values().sum::<u64>(),
        sanitize(&c.disabled.join(","), 400),
        iv.docker
    );
    if !iv.runtimes.is_empty() {
        let states: Vec<String> = iv
            .runtimes
            .iter()
            .map(|(rt, st)| format!("{} {st}", sanitize(rt, 20)))
            .collect();
        let _ = writeln!(out, "runtimes   {}", states.join(", "));
    }
    for ct in iv.containers.iter().take(5) {
        let runtime = if ct.runtime.is_empty() {
            String::new()
        } else {
            format!(" [{}]", sanitize(&ct.runtime, 16))
        };
        let _ = writeln!(
            out,
            "container  {} ({}){runtime} cpu {:.1}% runq p99 {:.0}us {}",
            sanitize(&ct.name, 64),
            sanitize(&ct.image, 64),
            ct.cpu_percent,
            ct.runqueue_latency_us.p99,
            super::text::network(ct),
        );
    }
    let d = &iv.detection;
    if d.enabled || !s.series.is_empty() {
        let _ = writeln!(
            out,
            "detection  series {} warming_up {} ready {} fallback {}{} open [{}]",
            d.series,
            d.warming_up,
            d.ready,
            d.fallback,
            // Shown once there are some (every learned-model seat taken).
            match d.statistical_only {
                0 => String::new(),
                n => format!(" statistical_only {n}"),
            },
            sanitize(&d.open.join(", "), 1000)
        );
    } else {
        out.push_str("detection  (not running)\n");
    }
    match &s.heal {
        Some(h) => {
            let _ = writeln!(
                out,
                "healing    docker {} dry_run {} in_flight {}",
                h.state.docker.heal_str(),
                h.state.dry_run,
                h.state.in_flight
            );
            for b in breakers(&h.state) {
                let _ = writeln!(
                    out,
                    "breaker    {} {} failures {}",
                    b.container, b.state, b.failures
                );
            }
            for a in recent_actions(&h.recent).iter().rev().take(10).rev() {
                let _ = writeln!(out, "action     {a}");
            }
        }
        None => out.push_str("healing    (not running)\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_directory_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let rt = dir.path().join("rt");
        ensure_private_dir(&rt).unwrap();
        let mode = std::fs::metadata(&rt).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn snapshot_round_trips_and_renders() {
        let mut iv = Interval {
            seq: 7,
            ts: "2026-11-23T15:00:01Z".into(),
            ..Default::default()
        };
        iv.containers.push(crate::model::ContainerDelta {
            name: "evil\u{1b}[2J\nname".into(),
            image: "img".into(),
            ..Default::default()
        });
        let info = ServerInfo {
            version: "0.1.0".into(),
            pid: 42,
            ..Default::default()
        };
        let published = Published {
            interval: iv.clone(),
            series: Vec::new(),
            runq_hist: Vec::new(),
        };
        let body = document(&info, Some(&published)).unwrap();
        let back: StatusSnapshot = serde_json::from_slice(&body).unwrap();
        assert_eq!(back.info, info);
        assert_eq!(back.latest, Some(iv));
        let text = render_text(&back);
        assert!(text.contains("seq 7"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("container")).count(),
            1
        );
        assert!(text.contains("healing    (not running)"));
    }

    #[test]
    fn heal_breakers_and_actions_are_read_and_sanitised() {
        let heal: HealStatus = serde_json::from_value(serde_json::json!({
            "docker": "up",
            "dry_run": false,
            "global_breaker": {"state": "CLOSED", "failures_in_window": 0, "wait_secs": 1.0},
            "breakers": [{"container_id": "abc", "container_name": "web\u{1b}]0;x\u{7}",
                          "state": "OPEN", "failures_in_window": 3, "wait_secs": 30.0}],
            "actions_in_global_window": 0, "in_flight": 0, "permits_available": 2,
            "permits_total": 2, "counters": crate::model::HealCounters::default(),
            "recent": [{"ts": "2026-11-23T15:00:01Z", "container_id": "abc",
                        "container_name": "web", "decision": "taken", "reason": "anomaly",
                        "action": "restart", "outcome": "ok"}]
        }))
        .unwrap();
        let b = breakers(&heal.state);
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].state, "OPEN");
        assert_eq!(b[1].failures, 3);
        assert!(!b[1].container.chars().any(char::is_control));
        assert_eq!(
            recent_actions(&heal.recent),
            vec!["15:00:01 web taken restart ok anomaly"]
        );
        // The JSON says `monitor_only` where the interval says `unreachable`: one state.
        let mut state = heal.state.clone();
        state.docker = crate::model::DockerState::Unreachable;
        let v = serde_json::to_value(&state).unwrap();
        assert_eq!(v["docker"], "monitor_only");
        let back: HealState = serde_json::from_value(v).unwrap();
        assert_eq!(back, state);
    }
}
