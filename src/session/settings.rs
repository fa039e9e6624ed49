//! A client's own settings (`SET`, `RESET`, `set_config(..., false)`)
//! follow the client in transaction mode and never reach another client.
//!
//! When something the client ran may have changed a setting
//! ([`crate::sql::effects`]), pgmux reads back, before the server goes back
//! to the pool, every setting the session holds at session level
//! ([`ClientParams::settle`]). Those become the client's own values, applied
//! on whichever server it takes next, and the server records them as set,
//! so the next client's parameter sync resets what it does not share.
//!
//! [`ClientParams::settle`]: super::params::ClientParams::settle

use super::{End, Session};

impl Session {
    /// Reads back the settings the client left on its server. A server
    /// that can't answer is closed; the client keeps what pgmux knew.
    pub(super) async fn settle_settings(&mut self) -> Result<(), End> {
        self.touched.settings = false;
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        if let Err(e) = self.params.settle(server, self.max_msg).await {
            tracing::warn!(pool = %self.pool.name(), error = %e, "closing a server whose settings could not be read");
            self.close_server();
        }
        Ok(())
    }
}
