//! Runs one allowed action: wait (bounded) for a concurrency permit, run under the action
//! time-out, report. The permit is an `OwnedSemaphorePermit` held by the task, so it is returned
//! on every exit path: completion, time-out, panic (unwind drops it) and abort at shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::config::ActionConfig;
use super::docker::{DockerApi, DockerError};

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
        api: Arc<dyn DockerApi>,
        id: String,
        action: ActionConfig,
    ) -> impl Future<Output = ExecOutcome> + Send + 'static {
        let sem = self.sem.clone();
        let permit_wait = self.permit_wait;
        let timeout = self.timeout;
        async move {
            let waited_from = tokio::time::Instant::now();
            // A closed semaphore only happens at shutdown; it is treated like a wait time-out.
            let Ok(Ok(permit)) = tokio::time::timeout(permit_wait, sem.acquire_owned()).await
            else {
                return ExecOutcome::PermitWaitTimeout {
                    waited: waited_from.elapsed(),
                };
            };
            let start = tokio::time::Instant::now();
            match tokio::time::timeout(timeout, api.act(id, action)).await {
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
                    drop(permit);
                    let docker_alive = api.ping().await.is_ok();
                    ExecOutcome::TimedOut {
                        duration,
                        docker_alive,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heal::fake::FakeDocker;

    fn restart() -> ActionConfig {
        ActionConfig::Restart {
            stop_timeout_secs: 1,
        }
    }

    /// D9: an action that does not return is cut at the time-out; the permit comes back.
    #[tokio::test(start_paused = true)]
    async fn a_hung_action_times_out_and_returns_its_permit() {
        let d = FakeDocker::default();
        let id = d.add("web", &[], "none");
        d.action_delay(Duration::from_secs(600));
        let e = Executor::new(1, Duration::from_secs(1), Duration::from_secs(2));
        let out = e.run(Arc::new(d.clone()), id, restart()).await;
        match out {
            ExecOutcome::TimedOut {
                duration,
                docker_alive,
            } => {
                assert!(duration >= Duration::from_secs(2) && duration < Duration::from_secs(3));
                assert!(
                    docker_alive,
                    "Docker answers its ping: the container is slow"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.available(), e.size());
    }

    /// D10: waiting for a permit is bounded and is its own outcome.
    #[tokio::test(start_paused = true)]
    async fn a_permit_wait_is_bounded() {
        let d = FakeDocker::default();
        let a = d.add("a", &[], "none");
        let b = d.add("b", &[], "none");
        d.action_delay(Duration::from_secs(10));
        let e = Executor::new(1, Duration::from_secs(1), Duration::from_secs(60));
        let first = tokio::spawn(e.run(Arc::new(d.clone()), a, restart()));
        tokio::task::yield_now().await;
        let second = e.run(Arc::new(d.clone()), b, restart()).await;
        assert!(
            matches!(second, ExecOutcome::PermitWaitTimeout { waited } if waited >= Duration::from_secs(1)),
            "{second:?}"
        );
        assert!(matches!(first.await.unwrap(), ExecOutcome::Done { .. }));
        assert_eq!(e.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exec_reports_its_exit_code_and_an_error_its_kind() {
        let d = FakeDocker::default();
        let id = d.add("cache", &[], "none");
        d.exec_exit(2);
        let e = Executor::new(2, Duration::from_secs(1), Duration::from_secs(5));
        let exec = ActionConfig::Exec {
            cmd: vec!["true".into()],
        };
        assert!(matches!(
            e.run(Arc::new(d.clone()), id.clone(), exec).await,
            ExecOutcome::Done {
                exit_code: Some(2),
                ..
            }
        ));
        let out = e.run(Arc::new(d.clone()), "nope".into(), restart()).await;
        assert!(
            matches!(&out, ExecOutcome::Failed { error, .. } if error.kind() == "container_gone"),
            "{out:?}"
        );
    }
}
