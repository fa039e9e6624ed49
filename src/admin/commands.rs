//! Admin commands: parsing and execution against the running instance.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::{Reply, Table};
use crate::context::{ClientState, Context};
use crate::pool::Pool;
use crate::shutdown::Phase;

/// A parsed admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// SHOW POOLS
    ShowPools,
    /// SHOW STATS
    ShowStats,
    /// SHOW CLIENTS
    ShowClients,
    /// SHOW SERVERS
    ShowServers,
    /// SHOW DATABASES
    ShowDatabases,
    /// SHOW CONFIG
    ShowConfig,
    /// SHOW VERSION
    ShowVersion,
    /// PAUSE [db]: new transactions wait until RESUME.
    Pause(Option<String>),
    /// RESUME [db]
    Resume(Option<String>),
    /// RELOAD: re-read the config file.
    Reload,
    /// RECONNECT [db]: replace server connections as they become free.
    Reconnect(Option<String>),
    /// KILL db: disconnect the database's clients and close its servers.
    Kill(String),
    /// SHUTDOWN: graceful shutdown, as SIGTERM.
    Shutdown,
}

impl Command {
    /// Parses one command (case-insensitive, optional trailing semicolon).
    pub fn parse(sql: &str) -> Result<Self, String> {
        let text = sql.trim().trim_end_matches(';').trim();
        let words: Vec<&str> = text.split_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
        let arg = words.get(1).map(|w| w.trim_matches('"').to_owned());
        Ok(match upper.as_slice() {
            ["SHOW", "POOLS"] => Self::ShowPools,
            ["SHOW", "STATS"] => Self::ShowStats,
            ["SHOW", "CLIENTS"] => Self::ShowClients,
            ["SHOW", "SERVERS"] => Self::ShowServers,
            ["SHOW", "DATABASES"] => Self::ShowDatabases,
            ["SHOW", "CONFIG"] => Self::ShowConfig,
            ["SHOW", "VERSION"] => Self::ShowVersion,
            ["PAUSE"] | ["PAUSE", _] => Self::Pause(arg),
            ["RESUME"] | ["RESUME", _] => Self::Resume(arg),
            ["RELOAD"] => Self::Reload,
            ["RECONNECT"] | ["RECONNECT", _] => Self::Reconnect(arg),
            ["KILL", _] => Self::Kill(arg.unwrap_or_default()),
            ["SHUTDOWN"] => Self::Shutdown,
            _ => return Err(format!("unknown admin command: {text:?}; try SHOW POOLS, SHOW STATS, SHOW CLIENTS, SHOW SERVERS, SHOW DATABASES, SHOW CONFIG, SHOW VERSION, PAUSE, RESUME, RELOAD, RECONNECT, KILL or SHUTDOWN")),
        })
    }

    /// Runs the command.
    pub fn execute(&self, ctx: &Context) -> Result<Reply, String> {
        Ok(match self {
            Self::ShowPools => Reply::Rows(show_pools(ctx)),
            Self::ShowStats => Reply::Rows(show_stats(ctx)),
            Self::ShowClients => Reply::Rows(show_clients(ctx)),
            Self::ShowServers => Reply::Rows(show_servers(ctx)),
            Self::ShowDatabases => Reply::Rows(show_databases(ctx)),
            Self::ShowConfig => Reply::Rows(show_config(ctx)),
            Self::ShowVersion => Reply::Rows(Table {
                columns: vec!["version"],
                rows: vec![vec![Some(format!("pgmux {}", env!("CARGO_PKG_VERSION")))]],
            }),
            Self::Pause(db) => {
                for p in pools(ctx, db.as_deref())? {
                    p.set_paused(true);
                }
                Reply::Done("PAUSE")
            }
            Self::Resume(db) => {
                for p in pools(ctx, db.as_deref())? {
                    p.set_paused(false);
                }
                Reply::Done("RESUME")
            }
            Self::Reload => Reply::Lines("RELOAD", crate::reload::reload(ctx)?),
            Self::Reconnect(db) => {
                for p in pools(ctx, db.as_deref())? {
                    p.reconnect();
                }
                Reply::Done("RECONNECT")
            }
            Self::Kill(db) => {
                let targets = pools(ctx, Some(db))?;
                for c in ctx.clients.all().into_iter().filter(|c| &c.database == db) {
                    c.kill.notify_one();
                }
                for p in targets {
                    p.reconnect();
                }
                Reply::Done("KILL")
            }
            Self::Shutdown => {
                ctx.shutdown.advance(Phase::Draining);
                Reply::Done("SHUTDOWN")
            }
        })
    }
}

fn pools(ctx: &Context, db: Option<&str>) -> Result<Vec<Pool>, String> {
    if let Some(d) = db {
        if !ctx.config().databases.contains_key(d) {
            return Err(format!("no such database: {d}"));
        }
    }
    Ok(ctx.pools.matching(db))
}

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn unix(t: SystemTime) -> Option<String> {
    text(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    )
}

fn show_pools(ctx: &Context) -> Table {
    let columns = vec![
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active",
        "sv_active_cancel",
        "sv_being_canceled",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        "cl_idle",
        "paused",
    ];
    let rows = ctx
        .pools
        .all()
        .into_iter()
        .map(|(key, pool)| {
            let s = pool.snapshot();
            let wait = pool.max_wait();
            let mode = format!("{:?}", pool.settings().mode).to_lowercase();
            vec![
                text(&key.database),
                text(&key.user),
                text(s.clients_active),
                text(s.clients_waiting),
                text(0),
                text(0),
                text(s.servers_active),
                text(0),
                text(0),
                text(s.servers_idle),
                text(0),
                text(0),
                text(s.servers_connecting),
                text(wait.as_secs()),
                text(wait.subsec_micros()),
                text(mode),
                text(s.clients_idle),
                text(pool.is_paused()),
            ]
        })
        .collect();
    Table { columns, rows }
}

fn show_stats(ctx: &Context) -> Table {
    let columns = vec![
        "database",
        "user",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_wait_time",
        "total_server_connections",
    ];
    let rows = ctx
        .pools
        .all()
        .into_iter()
        .map(|(key, pool)| {
            let c = &pool.metrics().counters;
            let get = |a: &std::sync::atomic::AtomicU64| text(a.load(Ordering::Relaxed));
            vec![
                text(&key.database),
                text(&key.user),
                get(&c.transactions),
                get(&c.queries),
                get(&c.bytes_in),
                get(&c.bytes_out),
                get(&c.transaction_us),
                get(&c.wait_us),
                get(&c.opened),
            ]
        })
        .collect();
    Table { columns, rows }
}

fn show_clients(ctx: &Context) -> Table {
    let columns = vec![
        "type",
        "user",
        "database",
        "state",
        "addr",
        "connect_time",
        "id",
        "pinned",
    ];
    let rows = ctx
        .clients
        .all()
        .into_iter()
        .map(|c| {
            let state = match c.state() {
                ClientState::Active => "active",
                ClientState::Waiting => "waiting",
                ClientState::Idle => "idle",
            };
            vec![
                text("C"),
                text(&c.user),
                text(&c.database),
                text(state),
                text(&c.addr),
                unix(c.since),
                text(c.id),
                text(c.pin().unwrap_or("")),
            ]
        })
        .collect();
    Table { columns, rows }
}

fn show_servers(ctx: &Context) -> Table {
    let columns = vec![
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "connect_time",
        "remote_pid",
    ];
    let mut rows = Vec::new();
    for (key, pool) in ctx.pools.all() {
        for (s, active) in pool.servers() {
            let state = if active { "active" } else { "idle" };
            rows.push(vec![
                text("S"),
                text(&pool.target().user),
                text(&key.database),
                text(state),
                text(s.addr.ip()),
                text(s.addr.port()),
                unix(s.since),
                text(s.pid),
            ]);
        }
    }
    Table { columns, rows }
}

fn show_databases(ctx: &Context) -> Table {
    let cfg = ctx.config();
    let columns = vec![
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "pool_mode",
        "paused",
    ];
    let rows = cfg
        .databases
        .iter()
        .map(|(name, db)| {
            let paused = ctx.pools.matching(Some(name)).iter().any(Pool::is_paused);
            let mode = db.pool_mode.unwrap_or(cfg.pgmux.pool_mode);
            // Several hosts show as libpq writes them: comma-separated.
            let hosts = cfg.hosts(db).unwrap_or_default();
            let list = |f: fn(&crate::config::HostPort) -> String| {
                hosts.iter().map(f).collect::<Vec<_>>().join(",")
            };
            vec![
                text(name),
                text(list(|h| h.host.clone())),
                text(list(|h| h.port.to_string())),
                text(db.dbname.as_deref().unwrap_or(name)),
                db.server_user.clone(),
                text(cfg.pool_size(db)),
                text(format!("{mode:?}").to_lowercase()),
                text(paused),
            ]
        })
        .collect();
    Table { columns, rows }
}

fn show_config(ctx: &Context) -> Table {
    let cfg = ctx.config();
    let now = toml::Value::try_from(&cfg.pgmux).ok();
    let defaults = toml::Value::try_from(crate::config::General::default()).ok();
    let columns = vec!["key", "value", "default", "changeable"];
    let mut rows = Vec::new();
    if let (Some(toml::Value::Table(now)), Some(toml::Value::Table(defaults))) = (now, defaults) {
        for (k, v) in now {
            let show = |v: &toml::Value| match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let default = defaults.get(&k).map(show);
            let changeable = if k == "listen" { "no" } else { "yes" };
            rows.push(vec![text(&k), Some(show(&v)), default, text(changeable)]);
        }
    }
    Table { columns, rows }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(Command::parse("show pools;").unwrap(), Command::ShowPools);
        assert_eq!(
            Command::parse("PAUSE blog").unwrap(),
            Command::Pause(Some("blog".into()))
        );
        assert_eq!(Command::parse("resume").unwrap(), Command::Resume(None));
        assert!(Command::parse("DROP TABLE x").is_err());
        assert!(Command::parse("KILL").is_err());
    }
}
