//! Interval lines on stdout, written by their own thread through a bounded queue, so that a
//! reader that stops reading (a stalled pipe, a paused terminal) never stalls the drain. When the
//! queue is full the interval's line is dropped and counted (`collector.output_dropped`), with
//! one warning per episode; the drain keeps its cadence and the counts stay exact in every line
//! that is written.

use std::{
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use tracing::warn;

use super::{OutputFormat, write_interval};
use crate::model::Interval;

/// Lines waiting for a slow reader; beyond this they are dropped and counted.
pub const OUTPUT_QUEUE: usize = 256;

pub struct Output {
    format: OutputFormat,
    tx: Option<SyncSender<Vec<u8>>>,
    /// Set by the writer when stdout is closed (`sentinel run | head`) or fails.
    closed: Arc<AtomicBool>,
    error: Option<Receiver<io::Error>>,
    done: Option<Receiver<()>>,
    dropped: u64,
    dropping: bool,
}

impl Output {
    /// Starts the writer thread for `format` (none for `OutputFormat::None`).
    pub fn stdout(format: OutputFormat) -> Result<Self> {
        Self::spawn(format, io::stdout())
    }

    pub fn spawn(format: OutputFormat, mut sink: impl Write + Send + 'static) -> Result<Self> {
        let closed = Arc::new(AtomicBool::new(false));
        if format == OutputFormat::None {
            return Ok(Self {
                format,
                tx: None,
                closed,
                error: None,
                done: None,
                dropped: 0,
                dropping: false,
            });
        }
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(OUTPUT_QUEUE);
        let (err_tx, err_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let flag = closed.clone();
        thread::Builder::new()
            .name("sentinel-output".into())
            .spawn(move || {
                for line in rx {
                    if let Err(e) = sink.write_all(&line).and_then(|()| sink.flush()) {
                        flag.store(true, Ordering::Relaxed);
                        let _ = err_tx.send(e);
                        break;
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| anyhow!("cannot start the output thread: {e}"))?;
        Ok(Self {
            format,
            tx: Some(tx),
            closed,
            error: Some(err_rx),
            done: Some(done_rx),
            dropped: 0,
            dropping: false,
        })
    }

    /// Lines dropped so far because the reader was too slow.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Queues one interval. `Ok(false)`: stdout is closed (the run should end cleanly);
    /// `Err`: stdout failed otherwise.
    pub fn offer(&mut self, iv: &Interval) -> Result<bool> {
        if self.closed_state()? {
            return Ok(false);
        }
        let Some(tx) = &self.tx else { return Ok(true) };
        let mut line = Vec::with_capacity(1024);
        write_interval(&mut line, self.format, iv)?;
        match tx.try_send(line) {
            Ok(()) => {
                if self.dropping {
                    self.dropping = false;
                    warn!(
                        dropped_total = self.dropped,
                        "output reader caught up; interval lines flow again"
                    );
                }
            }
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                if !self.dropping {
                    self.dropping = true;
                    warn!(
                        queue = OUTPUT_QUEUE,
                        "stdout reader is not keeping up: interval lines are dropped and counted \
                         (collector.output_dropped); the drain goes on"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => return Ok(!self.closed_state()?),
        }
        Ok(true)
    }

    /// Queues the final interval and waits up to `wait` for everything queued to be written.
    pub fn finish(mut self, iv: &Interval, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        if let Some(tx) = self.tx.take() {
            let mut line = Vec::new();
            write_interval(&mut line, self.format, iv)?;
            let mut pending = Some(line);
            while let Some(line) = pending.take() {
                match tx.try_send(line) {
                    Ok(()) => {}
                    Err(TrySendError::Full(line)) if Instant::now() < deadline => {
                        pending = Some(line);
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => {
                        warn!("final interval not written: stdout reader did not take it");
                    }
                }
            }
        }
        if let Some(done) = self.done.take() {
            let left = deadline.saturating_duration_since(Instant::now());
            if done.recv_timeout(left).is_err() {
                warn!("stdout reader did not take the last lines in time; exiting anyway");
            }
        }
        self.closed_state().map(|_| ())
    }

    /// True if stdout was closed by the reader; an error for any other write failure.
    fn closed_state(&self) -> Result<bool> {
        if !self.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match self.error.as_ref().and_then(|rx| rx.try_recv().ok()) {
            Some(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                Err(anyhow!("cannot write output: {e}"))
            }
            _ => Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// A sink that blocks until released: a reader that stopped reading.
    #[derive(Clone, Default)]
    struct Stalled(Arc<(Mutex<bool>, Condvar, Mutex<Vec<u8>>)>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cv, data) = &*self.0;
            let mut released = lock.lock().unwrap();
            while !*released {
                released = cv.wait(released).unwrap();
            }
            data.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_never_blocks_and_drops_are_counted() {
        let sink = Stalled::default();
        let mut out = Output::spawn(OutputFormat::Json, sink.clone()).unwrap();
        let n = OUTPUT_QUEUE as u64 + 100;
        let started = Instant::now();
        for seq in 0..n {
            let iv = Interval {
                seq,
                ..Default::default()
            };
            assert!(out.offer(&iv).unwrap());
        }
        assert!(started.elapsed() < Duration::from_secs(2), "never blocked");
        // One line is in the writer's hands (blocked), the queue holds OUTPUT_QUEUE more.
        let dropped = out.dropped();
        assert!(
            (99..=100).contains(&dropped),
            "dropped {dropped} of {n} with a queue of {OUTPUT_QUEUE}"
        );
        {
            let (lock, cv, _) = &*sink.0;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        let last = Interval {
            seq: n,
            ..Default::default()
        };
        out.finish(&last, Duration::from_secs(5)).unwrap();
        let written = String::from_utf8(sink.0.2.lock().unwrap().clone()).unwrap();
        let lines: Vec<Interval> = written
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len() as u64, n - dropped + 1);
        assert_eq!(
            lines.last().unwrap().seq,
            n,
            "the final interval is written"
        );
    }

    #[test]
    fn a_closed_reader_ends_the_run_cleanly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Output::spawn(OutputFormat::Text, Closed).unwrap();
        let iv = Interval::default();
        let mut open = true;
        for _ in 0..100 {
            open = out.offer(&iv).unwrap();
            if !open {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        assert!(!open, "closed stdout ends the run");
    }
}
