//! `auth_query`: users missing from the config are looked up on the server
//! (as `auth_user`, in the database the client asked for), and cached for
//! `auth_query_cache`, misses included, so a burst of logins costs one query.
//! Only configured databases are looked up, and the cache is bounded: the
//! names come from clients that have not authenticated yet.

use std::sync::Arc;

use crate::auth::{Secret, UserAuth};
use crate::config::Config;
use crate::context::Context;
use crate::pool::PoolKey;

/// The lookup could not be made (no server, or the query failed).
#[derive(Debug, thiserror::Error)]
#[error("auth_query failed: {0}")]
pub struct Unavailable(String);

fn unavailable(e: impl std::fmt::Display) -> Unavailable {
    Unavailable(e.to_string())
}

/// The user's secret as the server stores it, or `None` when there is no
/// such role (or it has no password).
pub async fn lookup(
    ctx: &Context,
    cfg: &Config,
    database: &str,
    user: &str,
) -> Result<Option<Arc<UserAuth>>, Unavailable> {
    let key = (database.to_owned(), user.to_owned());
    if let Some(auth) = ctx.auth_cache.get(&key, cfg.pgmux.auth_query_cache) {
        return Ok(auth);
    }
    let Some(auth_user) = cfg.pgmux.auth_user.clone() else {
        return Ok(None);
    };
    let pool_key = PoolKey {
        database: database.to_owned(),
        user: auth_user,
    };
    let (sql, max) = (&cfg.pgmux.auth_query, cfg.pgmux.max_message_size);
    let row = if cfg.databases.contains_key(database) {
        let pool = ctx
            .pools
            .get(cfg, &ctx.metrics, &pool_key)
            .map_err(unavailable)?;
        let mut conn = pool.get().await.map_err(unavailable)?;
        match conn.query_row(sql, &[user], max).await {
            Ok(r) => {
                conn.release();
                r
            }
            Err(e) => {
                conn.discard();
                return Err(unavailable(e));
            }
        }
    } else {
        // A name reached through `*`, from a peer that has not
        // authenticated: no pool is made for it.
        let mut conn = ctx
            .pools
            .connect_once(cfg, &pool_key)
            .await
            .map_err(unavailable)?;
        conn.query_row(sql, &[user], max)
            .await
            .map_err(unavailable)?
    };
    let auth = row
        .and_then(|cols| cols.into_iter().nth(1).flatten())
        .map(|stored| Arc::new(UserAuth::new(Secret::parse(&stored))));
    ctx.auth_cache.insert(key, auth.clone());
    Ok(auth)
}
