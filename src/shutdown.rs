//! Process shutdown: a phase every session watches, and a count of live
//! sessions the app waits on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving.
    Running,
    /// No new clients; sessions end as soon as they hold no transaction.
    Draining,
    /// Everyone is closed now.
    Terminating,
}

/// Shared shutdown state.
pub struct Shutdown {
    phase: watch::Sender<Phase>,
    live: AtomicUsize,
    idle: Notify,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Running),
            live: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }
}

impl Shutdown {
    /// Moves to a later phase (never back). Sessions learn of it from
    /// `Context::advance_shutdown`, which calls this and wakes them.
    pub(crate) fn advance(&self, to: Phase) {
        self.phase.send_if_modified(|p| {
            let later = to > *p;
            if later {
                *p = to;
            }
            later
        });
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// A receiver that wakes on every phase change.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Counts a session as live until the guard drops.
    pub fn track(self: &Arc<Self>) -> SessionGuard {
        self.live.fetch_add(1, Ordering::SeqCst);
        SessionGuard(self.clone())
    }

    /// Sessions alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Waits until no session is alive.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Keeps one session counted as live.
pub struct SessionGuard(Arc<Shutdown>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
