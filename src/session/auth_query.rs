//! `auth_query`: users missing from the config are looked up on the server
//! (as `auth_user`, in the database the client asked for), and cached for
//! `auth_query_cache`, misses included, so a burst of logins costs one query.

use std::sync::Arc;
use std::time::Instant;

use super::startup::LoginError;
use crate::auth::Secret;
use crate::config::Config;
use crate::context::{Context, UserAuth};
use crate::pool::PoolKey;
use crate::protocol::SqlState;

fn unavailable(e: impl std::fmt::Display) -> LoginError {
    LoginError::Fatal(SqlState::CANNOT_CONNECT, format!("auth_query failed: {e}"))
}

/// The user's secret as the server stores it, or `None` when there is no
/// such role (or it has no password).
pub async fn lookup(
    ctx: &Context,
    cfg: &Config,
    database: &str,
    user: &str,
) -> Result<Option<Arc<UserAuth>>, LoginError> {
    let key = (database.to_owned(), user.to_owned());
    if let Some((auth, at)) = ctx.auth_cache.lock().get(&key).cloned() {
        if at.elapsed() < cfg.pgmux.auth_query_cache {
            return Ok(auth);
        }
    }
    let Some(auth_user) = cfg.pgmux.auth_user.clone() else {
        return Ok(None);
    };
    let pool_key = PoolKey {
        database: database.to_owned(),
        user: auth_user,
    };
    let pool = ctx
        .pools
        .get(cfg, &ctx.metrics, &pool_key)
        .map_err(unavailable)?;
    let mut conn = pool.get().await.map_err(unavailable)?;
    let row = conn
        .query_row(&cfg.pgmux.auth_query, &[user], cfg.pgmux.max_message_size)
        .await;
    let row = match row {
        Ok(r) => {
            conn.release();
            r
        }
        Err(e) => {
            conn.discard();
            return Err(unavailable(e));
        }
    };
    let auth = row
        .and_then(|cols| cols.into_iter().nth(1).flatten())
        .map(|stored| {
            let secret = Secret::parse(&stored);
            let scram = secret.scram_verifier();
            Arc::new(UserAuth { secret, scram })
        });
    ctx.auth_cache
        .lock()
        .insert(key, (auth.clone(), Instant::now()));
    Ok(auth)
}
