//! Reloading the configuration: SIGHUP, the admin `RELOAD` and
//! `pgmux reload` all come here.
//!
//! Order matters, so that nothing is ever half-applied:
//! 1. read and validate the new file (an invalid one changes nothing);
//! 2. note what changes, and keep settings that can't change live
//!    (`listen`, `[metrics] listen`) at their running values;
//! 3. install the new config and user table (new logins see it at once;
//!    open sessions keep the snapshot they logged in with);
//! 4. reconcile pools: resize in place, retire pools whose database or user
//!    went away or whose server moved (their servers drain, nothing is killed).

use std::sync::Arc;

use crate::config::Config;
use crate::context::Context;

/// Re-reads the instance's config file and applies it. Returns one line per
/// change, or why nothing changed.
pub fn reload(ctx: &Context) -> Result<Vec<String>, String> {
    let _one_at_a_time = ctx.reload_lock.lock();
    let result = match &ctx.config_path {
        None => Err("pgmux was started without a config file; nothing to reload".to_string()),
        Some(path) => Config::load(path)
            .map_err(|e| e.located(path))
            .and_then(|new| apply(ctx, new)),
    };
    ctx.metrics.reload(result.is_ok());
    match &result {
        Ok(changes) => tracing::info!(changes = changes.len(), "configuration reloaded"),
        Err(e) => tracing::warn!(error = %e, "configuration reload failed; the old one stays"),
    }
    result
}

/// Applies a validated configuration to the running instance; fails, with
/// nothing changed, when its TLS files can't be loaded.
pub fn apply(ctx: &Context, mut new: Config) -> Result<Vec<String>, String> {
    let old = ctx.config();
    let mut changes = Vec::new();
    if new.pgmux.listen != old.pgmux.listen {
        changes.push(format!(
            "pgmux.listen: {:?} needs a restart; still listening on {:?}",
            new.pgmux.listen, old.pgmux.listen
        ));
        new.pgmux.listen = old.pgmux.listen.clone();
    }
    let metrics_addr = |c: &Config| c.metrics.as_ref().map(|m| m.listen.clone());
    if metrics_addr(&new) != metrics_addr(&old) {
        changes.push("metrics.listen needs a restart; the endpoint stays as it was".into());
        new.metrics = old.metrics.clone();
    }
    changes.extend(general_changes(&old, &new));
    if new.hba != old.hba {
        changes.push("pgmux.auth_hba_file: rules changed".into());
    }
    for (name, db) in &new.databases {
        match old.databases.get(name) {
            None => changes.push(format!("database {name}: added")),
            Some(o)
                if toml::to_string(o).ok() != toml::to_string(db).ok()
                    || o.server_password != db.server_password =>
            {
                changes.push(format!("database {name}: changed"))
            }
            Some(_) => {}
        }
    }
    for name in old
        .databases
        .keys()
        .filter(|n| !new.databases.contains_key(*n))
    {
        changes.push(format!("database {name}: removed"));
    }
    for (name, u) in &new.users {
        match old.users.get(name) {
            None => changes.push(format!("user {name}: added")),
            Some(o) if o.password != u.password => {
                changes.push(format!("user {name}: password changed"))
            }
            Some(o) if o.pool_mode != u.pool_mode => {
                changes.push(format!("user {name}: pool_mode changed"))
            }
            Some(_) => {}
        }
    }
    for name in old.users.keys().filter(|n| !new.users.contains_key(*n)) {
        changes.push(format!("user {name}: removed (open sessions finish)"));
    }
    for (name, db) in &new.databases {
        let pool = new.pool(db, None);
        crate::tls::connector::build(pool.tls_mode, pool.tls_ca.as_deref())
            .map_err(|e| format!("databases.{name}: {e}"))?;
    }
    let new = Arc::new(new);
    ctx.install(new.clone())?;
    changes.extend(ctx.pools.reconcile(&new));
    Ok(changes)
}

/// `[pgmux]` keys whose values differ.
fn general_changes(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(toml::Value::Table(a)), Ok(toml::Value::Table(b))) = (
        toml::Value::try_from(&old.pgmux),
        toml::Value::try_from(&new.pgmux),
    ) else {
        return Vec::new();
    };
    b.iter()
        .filter(|(k, v)| a.get(*k) != Some(*v))
        .map(|(k, v)| {
            format!(
                "pgmux.{k}: {} -> {v}",
                a.get(k).map(|x| x.to_string()).unwrap_or_default()
            )
        })
        .collect()
}
