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
//! Custom settings (`app.tenant_id`) are not in `pg_settings` when no
//! module defines them: their names are taken from the client's statements
//! and Binds ([`crate::sql::setting_names`]) and read back one by one. When
//! a statement may have set one whose name pgmux cannot read (code it
//! cannot see, a computed name), the server's settings are reset after the
//! reading, so no value can reach the next client.
//!
//! [`ClientParams::settle`]: super::params::ClientParams::settle

use bytes::BytesMut;

use super::{End, Session};
use crate::protocol::frame::split_frame;
use crate::protocol::TxStatus;

impl Session {
    /// Reads back the settings the client left on its server. A server
    /// that can't answer is closed; the client keeps what pgmux knew.
    pub(super) async fn settle_settings(&mut self) -> Result<(), End> {
        let wipe = self.core.settings_checked();
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        self.ctx.metrics.session_check("settings");
        if let Err(e) = self
            .core
            .params
            .settle(server, self.core.max_msg, wipe)
            .await
        {
            tracing::warn!(pool = %self.pool.name(), error = %e, "closing a server whose settings could not be read");
            self.close_server();
        }
        Ok(())
    }

    /// After a `RESET`, `RESET ALL` or `DISCARD ALL`: the client's startup
    /// parameters that went back to the server's default get the client's
    /// startup values again, as on a direct connection (where the reset
    /// value is what the client sent at startup). Runs once the replies are
    /// in, inside the client's transaction if one is open (so a rollback
    /// undoes both), not in a failed one. The client hears the resulting
    /// ParameterStatus messages.
    pub(super) async fn reapply_startup(&mut self) -> Result<(), End> {
        self.core.touched.resets = false;
        if self.core.tx == TxStatus::Failed {
            return Ok(());
        }
        let sql = self.core.params.startup_reapply_sql();
        let (Some(sql), Some(server)) = (sql, self.server.as_deref_mut()) else {
            return Ok(());
        };
        let mut reports = BytesMut::new();
        if let Err(e) = server
            .run_internal_reporting(&sql, self.core.max_msg, &mut reports)
            .await
        {
            return self.on_server_lost(e).await;
        }
        // The client's values follow the reports, as for its own SETs.
        let mut frames = reports.clone();
        while let Ok(Some(f)) = split_frame(&mut frames, self.core.max_msg) {
            self.core.on_parameter_status(&f, server);
        }
        self.core.cout.extend_from_slice(&reports);
        self.flush_client().await
    }
}
