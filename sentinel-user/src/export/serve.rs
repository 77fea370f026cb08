//! The daemon's operations surface: `/metrics` and the status socket, as tokio tasks on the
//! daemon's runtime. Both read the latest [`Published`] interval from the watch channel, so a
//! slow client never holds up the drain. Listeners are bound before the programs load (a second
//! instance or a taken port fails at once) and served after the first subscription.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::{net::TcpListener, task::JoinHandle};

use super::{
    prometheus::{self, Metrics, MetricsConfig},
    status::{self, ServerInfo},
};
use crate::model::PublishedRx;

#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Where `/metrics` listens; `None`: no exposition.
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: MetricsConfig,
    /// The status socket; its directory (created 0700) also holds the single-instance lock.
    pub status_socket: PathBuf,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            metrics_addr: Some(prometheus::DEFAULT_ADDR.parse().expect("valid default")),
            metrics: MetricsConfig::default(),
            status_socket: PathBuf::from(status::DEFAULT_SOCKET),
        }
    }
}

/// Bound listeners, then running tasks. Dropping it stops the tasks and removes the socket.
pub struct Exporters {
    socket: PathBuf,
    status: Option<tokio::net::UnixListener>,
    metrics: Option<(TcpListener, MetricsConfig)>,
    info: ServerInfo,
    tasks: Vec<JoinHandle<()>>,
}

impl Exporters {
    pub async fn bind(opts: &ExportOptions, interval: Duration) -> Result<Self> {
        let runtime_dir = opts
            .status_socket
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf();
        status::ensure_private_dir(&runtime_dir)?;
        let status_listener = status::bind(&opts.status_socket)?;
        let metrics = match opts.metrics_addr {
            Some(addr) => Some((prometheus::bind(addr).await?, opts.metrics)),
            None => None,
        };
        let metrics_addr = metrics
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| a.to_string());
        Ok(Self {
            socket: opts.status_socket.clone(),
            status: Some(status_listener),
            metrics,
            info: ServerInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                started: OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .unwrap_or_default(),
                interval_ms: interval.as_millis() as u64,
                metrics_addr,
            },
            tasks: Vec::new(),
        })
    }

    /// Spawns the servers on the current runtime.
    pub fn start(&mut self, rx: PublishedRx) {
        if let Some((listener, config)) = self.metrics.take() {
            let metrics = Metrics::new(config);
            self.tasks.push(tokio::spawn(prometheus::follow(
                metrics.clone(),
                rx.clone(),
            )));
            self.tasks
                .push(tokio::spawn(prometheus::serve(listener, metrics)));
        }
        if let Some(listener) = self.status.take() {
            self.tasks.push(tokio::spawn(status::serve(
                listener,
                Arc::new(self.info.clone()),
                rx,
            )));
        }
    }

    /// Stops serving (connections in progress are dropped) and removes the socket file.
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        status::remove_socket(&self.socket);
    }
}

impl Drop for Exporters {
    fn drop(&mut self) {
        self.stop();
    }
}
