//! The rare signals from outside a connection (a new shutdown phase, the
//! admin console's KILL, the idle sweep), waited for at no cost on the hot
//! path.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::context::ClientInfo;
use crate::shutdown::Phase;

/// A signal from outside the connection.
pub(super) enum Outside {
    /// The process moved to a new shutdown phase (the receiver watches on).
    Phase(Phase, watch::Receiver<Phase>),
    /// The admin console killed this client, or the idle sweep woke it
    /// (the receiver watches on).
    Kill(watch::Receiver<Phase>),
}

type Signals = Pin<Box<dyn Future<Output = Outside> + Send>>;

/// Waits for the next shutdown phase or a KILL of this client. Boxed: it
/// lives as long as the session, and idle sessions should stay small.
fn signals(mut watch: watch::Receiver<Phase>, info: Arc<ClientInfo>) -> Signals {
    Box::pin(async move {
        tokio::select! {
            biased;
            _ = info.kill.notified() => Outside::Kill(watch),
            Ok(()) = watch.changed() => {
                let now = *watch.borrow_and_update();
                Outside::Phase(now, watch)
            }
        }
    })
}

/// The signals' future, polled only when one of them woke it.
///
/// The session loop's `select!` polls every branch each time round; polled
/// directly, the signals would re-register with the kill `Notify` (a lock)
/// and the shutdown watch on every round trip of every client. Their
/// registrations carry this gate's own waker instead, which sets a flag
/// before waking the session's task, so an unwoken round costs one atomic.
pub(super) struct Outsider {
    signals: Signals,
    gate: Arc<Gate>,
    /// The gate as a waker, made once.
    waker: Waker,
    /// The task waker last handed to the gate.
    task: Option<Waker>,
}

struct Gate {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(w) = self.task.lock().as_ref() {
            w.wake_by_ref();
        }
    }
}

impl Outsider {
    /// Starts waiting for the signals of `info`'s client.
    pub(super) fn new(watch: watch::Receiver<Phase>, info: Arc<ClientInfo>) -> Self {
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Self {
            signals: signals(watch, info),
            waker: Waker::from(gate.clone()),
            gate,
            task: None,
        }
    }

    /// Waits for the next signal once one has been handled.
    pub(super) fn rearm(&mut self, watch: watch::Receiver<Phase>, info: Arc<ClientInfo>) {
        self.signals = signals(watch, info);
        self.gate.woken.store(true, Ordering::Release);
    }
}

impl Future for Outsider {
    type Output = Outside;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outside> {
        let this = self.get_mut();
        if !this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *this.gate.task.lock() = Some(cx.waker().clone());
            this.task = Some(cx.waker().clone());
        }
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.signals
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}
