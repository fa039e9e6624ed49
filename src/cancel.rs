//! Cancel requests. Each client gets a key of pgmux's making (in session
//! mode, with its server's process id and pgmux's secret); a cancel with
//! that key is forwarded, with the real server's key, to the server the
//! client holds at that moment, and to nothing when it holds none. A
//! server with a cancel on its way serves no other client until the
//! cancel arrived (the server closed the cancel socket, after it signalled
//! the backend): otherwise the cancel could stop the next client's query. With
//! peering (`peer_id`, `[peers]`), a key's process id carries the issuing
//! instance's id in its upper bits, so an instance that receives a cancel
//! for another's client (a load balancer's choice) passes it there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use rand::{Rng, RngExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::auth::constant_time_eq;
use crate::protocol::encode;
use crate::server::BackendKey;

/// How long a cancel may take to reach a server; one that takes longer
/// may still arrive, so its server is closed rather than lent again.
const CANCEL_DELIVERY: Duration = Duration::from_secs(5);

/// Cancels sent to one held server and not yet delivered.
#[derive(Default)]
pub struct InFlight {
    sending: AtomicUsize,
    /// A cancel failed or took too long: it may still arrive.
    uncertain: AtomicBool,
    done: tokio::sync::Notify,
}

impl InFlight {
    /// Waits until every cancel sent to the server was delivered; `true`
    /// when the server may serve another client, `false` when a cancel may
    /// still reach it (close it).
    /// Bounded: a cancel not accounted for a second past its own limit
    /// counts as one that may still arrive.
    pub async fn settled(&self) -> bool {
        let deadline = tokio::time::Instant::now() + CANCEL_DELIVERY + Duration::from_secs(1);
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.sending.load(Ordering::Acquire) == 0 {
                return !self.uncertain.load(Ordering::Acquire);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }
}

/// One cancel being sent: accounted for when dropped, delivered or not
/// (the task sending it may be dropped with a login that timed out).
struct Sending {
    flight: Arc<InFlight>,
    delivered: bool,
}

impl Drop for Sending {
    fn drop(&mut self) {
        if !self.delivered {
            self.flight.uncertain.store(true, Ordering::Release);
        }
        self.flight.sending.fetch_sub(1, Ordering::AcqRel);
        self.flight.done.notify_waiters();
    }
}

/// The server a client holds, and the cancels sent to it (made on the
/// first: most holds see none).
struct Held {
    key: BackendKey,
    flight: Option<Arc<InFlight>>,
}

/// One client's cancel key and the server it holds now.
pub struct CancelSlot {
    /// The key's process id: pgmux's, or a session-mode client's server's.
    pub pid: i32,
    /// pgmux-issued secret.
    pub secret: i32,
    target: Mutex<Option<Held>>,
}

impl CancelSlot {
    /// Records which server (if any) the client holds now. Returns the
    /// cancels sent to the server it held before: that server must wait
    /// for them ([`InFlight::settled`]) before it serves anyone else.
    pub fn set_target(&self, key: Option<BackendKey>) -> Option<Arc<InFlight>> {
        let held = key.map(|key| Held { key, flight: None });
        std::mem::replace(&mut *self.target.lock(), held).and_then(|h| h.flight)
    }
}

/// What became of a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Delivered to the server the client held.
    Forwarded,
    /// The key's client held no server (or there is no such key): nothing
    /// to cancel, as PostgreSQL does with a cancel for an idle session.
    Dropped,
    /// Sent, but not known to have arrived: its server is closed.
    Uncertain,
}

impl CancelOutcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Dropped => "dropped",
            Self::Uncertain => "uncertain",
        }
    }
}

/// All live clients' cancel keys, by process id. A process id pgmux
/// issues is unique; a server's (a session-mode client carries its
/// server's, [`CancelHandle::adopt_pid`]) may repeat across servers, and
/// the secret tells them apart.
#[derive(Default, Clone)]
pub struct CancelRegistry {
    slots: Arc<Mutex<HashMap<i32, Vec<Arc<CancelSlot>>>>>,
    /// This instance's peer id (0: no peering).
    peer_id: u16,
}

/// The bits of a process id below the peer id.
const PEER_SHIFT: u32 = 16;

/// Removes a client's key from the registry when its session ends.
pub struct CancelHandle {
    registry: CancelRegistry,
    /// The client's slot.
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.remove(&self.slot);
    }
}

impl CancelHandle {
    /// Makes the client's key carry `pid` (its server's process id, in
    /// session mode), keeping its secret and what it holds now.
    pub fn adopt_pid(&mut self, pid: i32) {
        let slot = Arc::new(CancelSlot {
            pid,
            secret: self.slot.secret,
            target: Mutex::new(self.slot.target.lock().take()),
        });
        self.registry.remove(&self.slot);
        self.registry
            .slots
            .lock()
            .entry(pid)
            .or_default()
            .push(slot.clone());
        self.slot = slot;
    }
}

impl CancelRegistry {
    /// The registry of an instance with this peer id (0: no peering).
    pub fn new(peer_id: u16) -> Self {
        Self {
            slots: Default::default(),
            peer_id,
        }
    }

    /// Which instance issued a key: `None` for this one (or without
    /// peering), else the peer id in its process id.
    pub fn owner(&self, pid: i32) -> Option<u16> {
        if self.peer_id == 0 {
            return None;
        }
        let owner = (pid as u32 >> PEER_SHIFT) as u16;
        (owner != self.peer_id).then_some(owner)
    }

    /// Issues a fresh, unique key for a new client: 30 random bits of
    /// process id, or the peer id above 16 random ones; always a random
    /// 32-bit secret.
    pub fn register(&self) -> CancelHandle {
        let mut rng = rand::rng();
        let mut slots = self.slots.lock();
        let pid = loop {
            let pid = match self.peer_id {
                0 => (rng.next_u32() & 0x3fff_ffff) as i32 + 1,
                id => ((u32::from(id) << PEER_SHIFT) | (rng.next_u32() & 0xffff)) as i32,
            };
            if !slots.contains_key(&pid) {
                break pid;
            }
        };
        let slot = Arc::new(CancelSlot {
            pid,
            secret: rng.random(),
            target: Mutex::new(None),
        });
        slots.insert(pid, vec![slot.clone()]);
        CancelHandle {
            registry: self.clone(),
            slot,
        }
    }

    fn remove(&self, slot: &Arc<CancelSlot>) {
        let mut slots = self.slots.lock();
        if let Some(same_pid) = slots.get_mut(&slot.pid) {
            same_pid.retain(|s| !Arc::ptr_eq(s, slot));
            if same_pid.is_empty() {
                slots.remove(&slot.pid);
            }
        }
    }

    /// Handles a CancelRequest: forwards it when the key matches a client
    /// that holds a server; otherwise does nothing, as PostgreSQL does.
    /// The server stays the client's until the cancel arrived.
    pub async fn cancel(&self, pid: i32, secret: i32) -> CancelOutcome {
        let target = {
            let slots = self.slots.lock();
            let slot = slots.get(&pid).and_then(|same_pid| {
                same_pid
                    .iter()
                    .find(|s| constant_time_eq(&s.secret.to_be_bytes(), &secret.to_be_bytes()))
            });
            // Counted under the lock that `set_target` takes: a server let
            // go after this point waits for this cancel.
            slot.and_then(|s| {
                s.target.lock().as_mut().map(|held| {
                    let flight = held.flight.get_or_insert_with(Default::default).clone();
                    flight.sending.fetch_add(1, Ordering::AcqRel);
                    (held.key, flight)
                })
            })
        };
        let Some((key, flight)) = target else {
            return CancelOutcome::Dropped;
        };
        let mut sending = Sending {
            flight,
            delivered: false,
        };
        let delivered = tokio::time::timeout(CANCEL_DELIVERY, cancel_server(key))
            .await
            .unwrap_or(false);
        sending.delivered = delivered;
        drop(sending);
        if delivered {
            CancelOutcome::Forwarded
        } else {
            CancelOutcome::Uncertain
        }
    }
}

/// Sends a CancelRequest for whatever the server connection `key` runs;
/// `true` once the server has taken it.
pub async fn cancel_server(key: BackendKey) -> bool {
    send_cancel(key.addr, key.pid, key.secret).await
}

/// Sends a CancelRequest with this key to an address (a server, or a
/// peer instance that issued the key); `true` once the other end closed
/// the socket, which PostgreSQL does after it has signalled the backend.
pub async fn send_cancel(addr: impl tokio::net::ToSocketAddrs, pid: i32, secret: i32) -> bool {
    let mut out = BytesMut::new();
    encode::cancel_request(&mut out, pid, secret);
    match TcpStream::connect(addr).await {
        Ok(mut s) => {
            if s.write_all(&out).await.is_err() {
                return false;
            }
            // The server closes the socket when it has read the request.
            matches!(
                tokio::io::AsyncReadExt::read(&mut s, &mut [0u8; 1]).await,
                Ok(0)
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not send cancel request");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cancel whose sending task is dropped (a login timed out around
    /// it) leaves its server to be closed, never waiting for ever.
    #[tokio::test]
    async fn a_dropped_cancel_settles_as_uncertain() {
        let registry = CancelRegistry::new(0);
        let handle = registry.register();
        // A server that accepts the cancel's connection and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        handle.slot.set_target(Some(BackendKey {
            addr,
            pid: 1,
            secret: 2,
        }));
        let (pid, secret) = (handle.slot.pid, handle.slot.secret);
        let sending = registry.cancel(pid, secret);
        let _ = tokio::time::timeout(Duration::from_millis(100), sending).await;
        let flight = handle
            .slot
            .set_target(None)
            .expect("a cancel was on its way");
        assert!(!flight.settled().await, "the server must be closed");
    }
}
