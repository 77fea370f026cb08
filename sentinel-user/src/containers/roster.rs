//! The roster: every container that has a process right now, by kernel key, from one /proc
//! scan on a thread of its own, so that the drain lists idle containers and checks the
//! identities it caches without reading /proc itself.
//!
//! A scan reads every process and its key from the kernel's task iterator (one pass, see
//! `collect::tasks`), or from /proc where the iterator is unavailable (Linux before 5.8,
//! sentinel in a PID namespace of its own, a kernel that refuses it): there it costs a
//! readlink or a cgroup read per process.
//!
//! The scan runs every [`REFRESH`] and at once when a runtime reports a container event
//! (start, die, destroy: [`Poke`]). Each scan is published whole with a generation number and
//! the time it started; the drain compares its cached identities with the newest scan (see
//! `Attribution::verify`): a key the kernel recycled (a mount namespace inode handed to the
//! next container, a reused cgroup id) shows up there under another container, or under none.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use sentinel_common::ContainerKey;

use super::procfs::{self, Identity, Seen};
use crate::collect::{loader::KeyMode, tasks::TaskIterator};

/// Time between two scans without any runtime event, on a host whose scan is cheap.
pub const REFRESH: Duration = Duration::from_secs(2);

/// A scan costs about 1.3 us per process with the task iterator (1.3 ms for 1070 processes in
/// 1000 mount namespaces) and 8 us reading /proc, so the timed scans wait at least this many
/// times as long as the last one took: the roster stays near 0.025% of one CPU on any host (up
/// to [`LONGEST_REFRESH`]): at 1000 containers a scan every 5 s, where one every 2 s was a
/// tenth of the daemon's CPU. A runtime's event still scans at once.
const WAIT_PER_SCAN_TIME: u32 = 4000;

/// Never longer than this between two timed scans, whatever one costs.
const LONGEST_REFRESH: Duration = Duration::from_secs(10);

/// How long to wait for the next timed scan after one that took `took`.
fn refresh_after(took: Duration) -> Duration {
    took.saturating_mul(WAIT_PER_SCAN_TIME)
        .clamp(REFRESH, LONGEST_REFRESH)
}

/// One scan: the keys of live containers and who they are.
#[derive(Debug)]
pub struct Roster {
    /// 0 before the first scan.
    pub generation: u64,
    /// When the scan began: an identity resolved after this is newer than the scan.
    pub started: Instant,
    /// Keys of live processes that belong to a container (a recognised cgroup layout, see
    /// `layout.rs`), each with the identity of one of its processes.
    pub containers: HashMap<ContainerKey, Identity>,
    /// Keys of every live process, containers or not (the drain retires a kernel entry whose
    /// key is not here without scanning /proc itself), each with the process it was found by
    /// and the age of its verdict.
    pub live: HashMap<ContainerKey, Seen>,
    /// How long the scan took.
    pub took: Duration,
}

impl Roster {
    pub(super) fn empty() -> Self {
        Self {
            generation: 0,
            started: Instant::now(),
            containers: HashMap::new(),
            live: HashMap::new(),
            took: Duration::ZERO,
        }
    }
}

/// Asks the roster for a scan now (a runtime saw a container start, die or go). Never blocks:
/// a scan already asked for covers this one too.
#[derive(Clone, Debug)]
pub struct Poke(Option<SyncSender<()>>);

impl Poke {
    /// A poke that goes nowhere (tests, `sentinel check`).
    pub fn none() -> Self {
        Self(None)
    }

    pub fn poke(&self) {
        if let Some(tx) = &self.0 {
            // Full: a scan is already asked for; disconnected: the roster stopped.
            let _ = tx.try_send(());
        }
    }
}

/// The scanning thread and the latest scan (the thread stops when this is dropped).
pub struct RosterHandle {
    current: Arc<ArcSwap<Roster>>,
    poke: SyncSender<()>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Scans are published (the thread started, or a unit test publishes them).
    scans: bool,
}

impl RosterHandle {
    /// Starts the scanning thread, reading `tasks` if given, else /proc. Threads inherit the
    /// capabilities of their creator: start it after the daemon dropped its own.
    pub fn spawn(mode: KeyMode, tasks: Option<TaskIterator>) -> Self {
        // Once: `Auto` would ask the filesystem (a statfs) for every process of every scan.
        let mode = mode.resolve();
        let current = Arc::new(ArcSwap::from_pointee(Roster::empty()));
        let (poke, rx) = sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (current, stop) = (current.clone(), stop.clone());
            std::thread::Builder::new()
                .name("sentinel-roster".into())
                .spawn(move || scan_loop(mode, tasks, &current, &rx, &stop))
                .map_err(|e| tracing::warn!("cannot start the container roster thread: {e}"))
                .ok()
        };
        Self {
            current,
            poke,
            stop,
            scans: thread.is_some(),
            thread,
        }
    }

    /// A roster whose scans the caller publishes (no thread), starting empty: unit tests and
    /// the interval bench.
    pub fn fixed() -> Self {
        let (poke, _rx) = sync_channel(1);
        Self {
            current: Arc::new(ArcSwap::from_pointee(Roster::empty())),
            poke,
            stop: Arc::new(AtomicBool::new(true)),
            thread: None,
            scans: true,
        }
    }

    /// Replaces the published scan (unit tests and the interval bench play the scanner):
    /// `containers` are the live keys.
    pub fn publish(&self, containers: HashMap<ContainerKey, Identity>) {
        let generation = self.current.load().generation + 1;
        let now = Instant::now();
        let seen = Seen {
            pid: 0,
            since: now,
            read: now,
        };
        self.current.store(Arc::new(Roster {
            generation,
            started: now,
            live: containers.keys().map(|k| (*k, seen)).collect(),
            containers,
            took: Duration::ZERO,
        }));
    }

    /// Whether scans are published at all (false: the thread could not start, and whoever
    /// needs live keys must scan /proc itself).
    pub fn scans(&self) -> bool {
        self.scans
    }

    pub fn poker(&self) -> Poke {
        Poke(Some(self.poke.clone()))
    }

    /// The newest scan.
    pub fn load(&self) -> Arc<Roster> {
        self.current.load_full()
    }
}

impl Drop for RosterHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.poke.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn scan_loop(
    mode: KeyMode,
    mut tasks: Option<TaskIterator>,
    current: &ArcSwap<Roster>,
    rx: &Receiver<()>,
    stop: &AtomicBool,
) {
    if tasks.is_some()
        && let Some(why) = TaskIterator::unusable_here()
    {
        tracing::info!("the container roster reads /proc, not the task iterator: {why}");
        tasks = None;
    }
    let mut generation = 0;
    let (mut buf, mut processes) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let last = current.load_full();
        let from_kernel = match &tasks {
            Some(it) => match it.snapshot(&mut buf, &mut processes) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(
                        "the task iterator failed ({e}); the container roster reads /proc from \
                         now on"
                    );
                    tasks = None;
                    false
                }
            },
            None => false,
        };
        let (source, (live, containers)) = if from_kernel {
            (
                "task iterator",
                procfs::containers(mode, processes.iter().copied(), Some(&last)),
            )
        } else {
            (
                "/proc",
                procfs::containers(mode, procfs::proc_processes(mode), Some(&last)),
            )
        };
        drop(last);
        generation += 1;
        let took = started.elapsed();
        tracing::debug!(
            keys = live.len(),
            took_us = took.as_micros() as u64,
            source,
            "container roster scan"
        );
        current.store(Arc::new(Roster {
            generation,
            started,
            containers,
            live,
            took,
        }));
        match rx.recv_timeout(refresh_after(took)) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_scans_wait_in_proportion_to_their_cost() {
        assert_eq!(refresh_after(Duration::ZERO), REFRESH);
        assert_eq!(refresh_after(Duration::from_micros(500)), REFRESH);
        assert_eq!(
            refresh_after(Duration::from_millis(1)),
            Duration::from_secs(4)
        );
        assert_eq!(refresh_after(Duration::from_secs(1)), LONGEST_REFRESH);
    }

    #[test]
    fn scans_at_once_when_poked_and_stops_when_dropped() {
        let roster = RosterHandle::spawn(KeyMode::Mntns, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while roster.load().generation == 0 {
            assert!(Instant::now() < deadline, "no first scan");
            std::thread::sleep(Duration::from_millis(5));
        }
        let first = roster.load().generation;
        let poked = Instant::now();
        roster.poker().poke();
        while roster.load().generation == first {
            // Well before REFRESH: the poke, not the timer.
            assert!(poked.elapsed() < REFRESH * 3 / 4, "poke ignored");
            std::thread::sleep(Duration::from_millis(5));
        }
        Poke::none().poke();
        drop(roster);
    }
}
