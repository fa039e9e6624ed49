//! The rare signals from outside a connection (a new shutdown phase, the
//! admin console's KILL, the idle sweep), waited for at no cost on the hot
//! path and in no memory of their own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::context::ClientInfo;

/// Ready when something outside the session changed; the session then
/// reads what: the shutdown phase, a KILL, an idle timeout.
///
/// The session loop's `select!` polls every branch each time round. A
/// future that waited on a `Notify` and the shutdown watch re-registered
/// with both on every round trip of every client, and took a few hundred
/// bytes per idle client; here whoever changes something sets a flag in
/// the client's [`ClientInfo`] and wakes the task whose waker it holds
/// (the shutdown wakes every registered client), so a round costs one
/// atomic.
pub(super) struct Outsider {
    info: Arc<ClientInfo>,
    /// The task waker last handed to `info`.
    task: Option<Waker>,
}

impl Outsider {
    /// Watches `info`'s client.
    pub(super) fn new(info: Arc<ClientInfo>) -> Self {
        Self { info, task: None }
    }
}

impl Future for Outsider {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.info.set_waker(cx.waker().clone());
            this.task = Some(cx.waker().clone());
        }
        // After the waker is set: a wake before it left the flag.
        if this.info.take_woken() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
