//! Cancel requests. Each client gets a key of pgmux's making; a cancel with
//! that key is forwarded, with the real server's key, to the server the
//! client holds at that moment, and to nothing when it holds none.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use rand::{Rng, RngExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::auth::constant_time_eq;
use crate::protocol::encode;
use crate::server::BackendKey;

/// One client's cancel key and the server it holds now.
pub struct CancelSlot {
    /// pgmux-issued process id.
    pub pid: i32,
    /// pgmux-issued secret.
    pub secret: i32,
    target: Mutex<Option<BackendKey>>,
}

impl CancelSlot {
    /// Records which server (if any) the client holds now.
    pub fn set_target(&self, key: Option<BackendKey>) {
        *self.target.lock() = key;
    }
}

/// All live clients' cancel keys.
#[derive(Default, Clone)]
pub struct CancelRegistry {
    slots: Arc<Mutex<HashMap<i32, Arc<CancelSlot>>>>,
}

/// Removes a client's key from the registry when its session ends.
pub struct CancelHandle {
    registry: CancelRegistry,
    /// The client's slot.
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.slots.lock().remove(&self.slot.pid);
    }
}

impl CancelRegistry {
    /// Issues a fresh, unique key for a new client.
    pub fn register(&self) -> CancelHandle {
        let mut rng = rand::rng();
        let mut slots = self.slots.lock();
        let pid = loop {
            let pid = (rng.next_u32() & 0x3fff_ffff) as i32 + 1;
            if !slots.contains_key(&pid) {
                break pid;
            }
        };
        let slot = Arc::new(CancelSlot {
            pid,
            secret: rng.random(),
            target: Mutex::new(None),
        });
        slots.insert(pid, slot.clone());
        CancelHandle {
            registry: self.clone(),
            slot,
        }
    }

    /// Handles a CancelRequest: forwards it when the key matches a client
    /// that holds a server; otherwise does nothing, as PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = {
            let Some(slot) = self.slots.lock().get(&pid).cloned() else {
                return;
            };
            if !constant_time_eq(&slot.secret.to_be_bytes(), &secret.to_be_bytes()) {
                return;
            }
            let target = *slot.target.lock();
            target
        };
        if let Some(key) = target {
            cancel_server(key).await;
        }
    }
}

/// Sends a CancelRequest for whatever the server connection `key` runs.
pub async fn cancel_server(key: BackendKey) {
    let mut out = BytesMut::new();
    encode::cancel_request(&mut out, key.pid, key.secret);
    match TcpStream::connect(key.addr).await {
        Ok(mut s) => {
            let _ = s.write_all(&out).await;
            // The server closes the socket when it has read the request.
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut [0u8; 1]).await;
        }
        Err(e) => tracing::warn!(error = %e, "could not send cancel request"),
    }
}
