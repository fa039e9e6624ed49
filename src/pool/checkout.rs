//! A server connection lent to one client. Dropping it without saying how
//! it ends closes the connection: a server in an unknown state never goes
//! back to the pool.

use std::ops::{Deref, DerefMut};

use super::Pool;
use crate::server::ServerConn;

/// A server connection taken from a pool.
pub struct Checkout {
    pool: Pool,
    conn: Option<Box<ServerConn>>,
}

impl Checkout {
    pub(super) fn new(pool: Pool, conn: Box<ServerConn>) -> Self {
        Self {
            pool,
            conn: Some(conn),
        }
    }

    /// Gives a clean, idle connection back for reuse.
    pub fn release(self) {
        self.release_at(std::time::Instant::now());
    }

    /// [`Checkout::release`] with the time already read by the caller.
    pub fn release_at(mut self, now: std::time::Instant) {
        if let Some(c) = self.conn.take() {
            self.pool.checkin(c, now);
        }
    }

    /// Closes the connection: its server is no longer a writer, so every
    /// other connection to that address goes too.
    pub fn demoted(mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.host_demoted(c);
        }
    }

    /// Closes the connection instead of reusing it.
    pub fn discard(mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.discard(c);
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.discard(c);
        }
    }
}

impl Deref for Checkout {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn
            .as_ref()
            .expect("a checkout holds its connection until consumed")
    }
}

impl DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .expect("a checkout holds its connection until consumed")
    }
}
