//! The service manager's side of `sentinel run` (systemd `Type=notify`): READY=1 once the
//! programs are attached and the exporters bound, WATCHDOG=1 from the drain loop, STOPPING=1
//! at shutdown. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    /// One warning for the first failed notification, not one per interval.
    warned: bool,
}

impl Notifier {
    pub fn from_env() -> Self {
        Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled(),
            warned: false,
        }
    }

    /// How often the drain loop pings: half the watchdog period (`WatchdogSec=`), as
    /// sd_watchdog_enabled(3) advises; `None` without a watchdog.
    pub fn ping_every(&self) -> Option<Duration> {
        self.watchdog
            .map(|w| (w / 2).max(Duration::from_millis(10)))
    }

    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn watchdog(&mut self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    pub fn stopping(&mut self, reason: &str) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status(&format!("stopping ({reason})")),
        ]);
    }

    fn send(&mut self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states)
            && !self.warned
        {
            self.warned = true;
            warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
        }
    }
}
