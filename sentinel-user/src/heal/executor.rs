//! Runs one allowed action: wait (bounded) for a concurrency permit, run under the action
//! time-out, report. The permit is an `OwnedSemaphorePermit` held by the task, so it is returned
//! on every exit path: completion, time-out, panic (unwind drops it) and abort at shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::config::ActionConfig;
use super::docker::{DockerClient, DockerError};

/// How an action task ended.
#[derive(Clone, Debug)]
pub enum ExecOutcome {
    /// No permit within the wait: the action never ran (not a failure of anything).
    PermitWaitTimeout { waited: Duration },
    /// Docker did it. `exit_code` for exec actions.
    Done {
        duration: Duration,
        exit_code: Option<i64>,
    },
    /// The API call failed.
    Failed {
        duration: Duration,
        error: DockerError,
    },
    /// Cut off by the action time-out. `docker_alive` tells a slow container (counts against
    /// it) from a hung Docker (does not, D3).
    TimedOut {
        duration: Duration,
        docker_alive: bool,
    },
}

pub struct Executor {
    sem: Arc<Semaphore>,
    size: usize,
    permit_wait: Duration,
    timeout: Duration,
}

impl Executor {
    pub fn new(size: usize, permit_wait: Duration, timeout: Duration) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(size)),
            size,
            permit_wait,
            timeout,
        }
    }

    /// Permits free right now (equals `size()` when nothing runs).
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The future to spawn for one action.
    pub fn run(
        &self,
        client: DockerClient,
        id: String,
        action: ActionConfig,
    ) -> impl Future<Output = ExecOutcome> + Send + 'static {
        let sem = self.sem.clone();
        let permit_wait = self.permit_wait;
        let timeout = self.timeout;
        async move {
            let waited_from = Instant::now();
            let _permit = match tokio::time::timeout(permit_wait, sem.acquire_owned()).await {
                Ok(Ok(p)) => p,
                // Closed semaphore only happens at shutdown; treat like a wait time-out.
                _ => {
                    return ExecOutcome::PermitWaitTimeout {
                        waited: waited_from.elapsed(),
                    };
                }
            };
            let start = Instant::now();
            match tokio::time::timeout(timeout, client.act(&id, &action)).await {
                Ok(Ok(done)) => ExecOutcome::Done {
                    duration: start.elapsed(),
                    exit_code: done.exit_code,
                },
                Ok(Err(error)) => ExecOutcome::Failed {
                    duration: start.elapsed(),
                    error,
                },
                Err(_) => {
                    let duration = start.elapsed();
                    // Release the permit before the (bounded) liveness probe: the action is over.
                    drop(_permit);
                    let docker_alive = client.ping().await.is_ok();
                    ExecOutcome::TimedOut {
                        duration,
                        docker_alive,
                    }
                }
            }
        }
    }
}
