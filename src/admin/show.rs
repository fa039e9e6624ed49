//! The SHOW commands, as PgBouncer answers them: its column names in its
//! order with its types (int4 counts, numeric statistics, text), so that
//! exporters and scripts written for PgBouncer read pgmux. pgmux's own
//! columns, where it has more to say, come after PgBouncer's.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::Table;
use crate::context::{ClientState, Context};
use crate::pool::Pool;
use crate::stats::Totals;

/// A column's type on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// text
    Text,
    /// int4
    Int,
    /// numeric (PgBouncer's statistics)
    Numeric,
}

impl Kind {
    /// The type's OID.
    pub fn oid(self) -> u32 {
        match self {
            Self::Text => 25,
            Self::Int => 23,
            Self::Numeric => 1700,
        }
    }
}

use Kind::{Int, Numeric as Num, Text};

/// Which SHOW.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Per (database, user) pool: clients and servers by state.
    Pools,
    /// Per database: totals and averages.
    Stats,
    /// Per database: totals.
    StatsTotals,
    /// Per database: averages over the last period.
    StatsAverages,
    /// The process's totals and averages, one per row.
    Totals,
    /// Logged-in clients.
    Clients,
    /// Open server connections.
    Servers,
    /// Configured databases.
    Databases,
    /// Configured users.
    Users,
    /// Counts of internal lists.
    Lists,
    /// Memory caches (none in pgmux: no rows).
    Mem,
    /// Settings.
    Config,
    /// The version.
    Version,
    /// The SHOW commands there are.
    Help,
}

impl Show {
    /// The SHOW for a word (case-insensitive).
    pub fn parse(word: &str) -> Option<Self> {
        Some(match word.to_ascii_uppercase().as_str() {
            "POOLS" => Self::Pools,
            "STATS" => Self::Stats,
            "STATS_TOTALS" => Self::StatsTotals,
            "STATS_AVERAGES" => Self::StatsAverages,
            "TOTALS" => Self::Totals,
            "CLIENTS" => Self::Clients,
            "SERVERS" => Self::Servers,
            "DATABASES" => Self::Databases,
            "USERS" => Self::Users,
            "LISTS" => Self::Lists,
            "MEM" => Self::Mem,
            "CONFIG" => Self::Config,
            "VERSION" => Self::Version,
            "HELP" => Self::Help,
            _ => return None,
        })
    }
}

/// Answers a SHOW.
pub fn table(what: Show, ctx: &Context) -> Table {
    match what {
        Show::Pools => pools(ctx),
        Show::Stats => stats(ctx),
        Show::StatsTotals => stats_part(ctx, false),
        Show::StatsAverages => stats_part(ctx, true),
        Show::Totals => totals(ctx),
        Show::Clients => clients(ctx),
        Show::Servers => servers(ctx),
        Show::Databases => databases(ctx),
        Show::Users => users(ctx),
        Show::Lists => lists(ctx),
        Show::Mem => Table::new(
            &[
                ("name", Text),
                ("size", Int),
                ("used", Int),
                ("free", Int),
                ("memtotal", Int),
            ],
            Vec::new(),
        ),
        Show::Config => config(ctx),
        Show::Version => Table::new(
            &[("version", Text)],
            vec![vec![text(format!("pgmux {}", env!("CARGO_PKG_VERSION")))]],
        ),
        Show::Help => Table::new(
            &[("command", Text)],
            [
                "SHOW POOLS|STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS|CLIENTS|SERVERS|DATABASES|USERS|LISTS|MEM|CONFIG|VERSION",
                "PAUSE [db]", "RESUME [db]", "WAIT_CLOSE [db]", "ENABLE db", "DISABLE db",
                "RECONNECT [db]", "KILL db", "RELOAD", "SHUTDOWN",
            ]
            .iter()
            .map(|l| vec![text(l)])
            .collect(),
        ),
    }
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

fn mode_name(pool: &Pool) -> String {
    format!("{:?}", pool.settings().mode).to_lowercase()
}

fn pools(ctx: &Context) -> Table {
    let columns = [
        ("database", Text),
        ("user", Text),
        ("cl_active", Int),
        ("cl_waiting", Int),
        ("cl_active_cancel_req", Int),
        ("cl_waiting_cancel_req", Int),
        ("sv_active", Int),
        ("sv_active_cancel", Int),
        ("sv_being_canceled", Int),
        ("sv_idle", Int),
        ("sv_used", Int),
        ("sv_tested", Int),
        ("sv_login", Int),
        ("maxwait", Int),
        ("maxwait_us", Int),
        ("pool_mode", Text),
        // pgmux's own.
        ("cl_idle", Int),
        ("paused", Int),
    ];
    let rows = ctx
        .pools
        .all()
        .into_iter()
        .map(|(key, pool)| {
            let s = pool.snapshot();
            let wait = pool.max_wait();
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
                text(mode_name(&pool)),
                text(s.clients_idle),
                text(u8::from(pool.is_paused())),
            ]
        })
        .collect();
    Table::new(&columns, rows)
}

/// Totals per database (pools of all users added up, retired ones too).
pub fn totals_by_database(ctx: &Context) -> BTreeMap<String, Totals> {
    let mut by_db: BTreeMap<String, Totals> = BTreeMap::new();
    for (key, pool) in ctx.pools.all() {
        by_db
            .entry(key.database)
            .or_default()
            .add(&pool.metrics().counters);
    }
    by_db
}

/// The figures of one database's row: totals, then averages.
fn figures(t: &Totals, avg: &Totals) -> [u64; 14] {
    [
        t.xact_count,
        t.query_count,
        t.bytes_received,
        t.bytes_sent,
        t.xact_time,
        t.query_time,
        t.wait_time,
        avg.xact_count,
        avg.query_count,
        avg.bytes_received,
        avg.bytes_sent,
        avg.xact_time,
        avg.query_time,
        avg.wait_time,
    ]
}

fn stats(ctx: &Context) -> Table {
    let mut columns = vec![("database", Text)];
    for name in [
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "avg_xact_count",
        "avg_query_count",
        "avg_recv",
        "avg_sent",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
    ] {
        columns.push((name, Num));
    }
    let averages = ctx.stats_period.averages();
    let rows = totals_by_database(ctx)
        .into_iter()
        .map(|(db, t)| {
            let avg = averages.get(&db).copied().unwrap_or_default();
            let mut row = vec![text(&db)];
            row.extend(figures(&t, &avg).iter().map(text));
            row
        })
        .collect();
    Table::new(&columns, rows)
}

/// SHOW STATS_TOTALS or SHOW STATS_AVERAGES.
fn stats_part(ctx: &Context, averages: bool) -> Table {
    let mut columns = vec![("database", Text)];
    for name in [
        "xact_count",
        "query_count",
        "bytes_received",
        "bytes_sent",
        "xact_time",
        "query_time",
        "wait_time",
    ] {
        columns.push((name, Num));
    }
    let avg = ctx.stats_period.averages();
    let rows = totals_by_database(ctx)
        .into_iter()
        .map(|(db, t)| {
            let a = avg.get(&db).copied().unwrap_or_default();
            let f = figures(&t, &a);
            let part = if averages { &f[7..] } else { &f[..7] };
            let mut row = vec![text(&db)];
            row.extend(part.iter().map(text));
            row
        })
        .collect();
    Table::new(&columns, rows)
}

fn totals(ctx: &Context) -> Table {
    let (mut t, mut a) = (Totals::default(), Totals::default());
    let averages = ctx.stats_period.averages();
    for (db, total) in totals_by_database(ctx) {
        t.sum(&total);
        if let Some(x) = averages.get(&db) {
            a.sum(x);
        }
    }
    let names = [
        "total_xact_count",
        "total_query_count",
        "total_client_bytes",
        "total_server_bytes",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "avg_xact_count",
        "avg_query_count",
        "avg_client_bytes",
        "avg_server_bytes",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
    ];
    let rows = names
        .iter()
        .zip(figures(&t, &a))
        .map(|(n, v)| vec![text(n), text(v)])
        .collect();
    Table::new(&[("name", Text), ("value", Num)], rows)
}

/// PgBouncer's columns of SHOW CLIENTS and SHOW SERVERS.
const SOCKET_COLUMNS: [(&str, Kind); 18] = [
    ("type", Text),
    ("user", Text),
    ("database", Text),
    ("state", Text),
    ("addr", Text),
    ("port", Int),
    ("local_addr", Text),
    ("local_port", Int),
    ("connect_time", Text),
    ("request_time", Text),
    ("wait", Int),
    ("wait_us", Int),
    ("close_needed", Int),
    ("ptr", Text),
    ("link", Text),
    ("remote_pid", Int),
    ("tls", Text),
    ("application_name", Text),
];

/// One SHOW CLIENTS/SERVERS row in PgBouncer's columns.
struct SocketRow<'a> {
    kind: &'a str,
    user: &'a str,
    database: &'a str,
    state: &'a str,
    addr: String,
    port: u16,
    since: SystemTime,
    id: u64,
    remote_pid: i32,
}

impl SocketRow<'_> {
    fn cells(&self, local: std::net::SocketAddr) -> Vec<Option<String>> {
        vec![
            text(self.kind),
            text(self.user),
            text(self.database),
            text(self.state),
            text(&self.addr),
            text(self.port),
            text(local.ip()),
            text(local.port()),
            unix(self.since),
            unix(self.since),
            text(0),
            text(0),
            text(0),
            text(format!("{:x}", self.id)),
            text(""),
            text(self.remote_pid),
            text(""),
            text(""),
        ]
    }
}

fn clients(ctx: &Context) -> Table {
    let mut columns = SOCKET_COLUMNS.to_vec();
    columns.extend([("id", Int), ("pinned", Text)]);
    let local = ctx.config().listen_addr().ok();
    let local = local.unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
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
            let (addr, port) = (c.addr.ip().to_string(), c.addr.port());
            let mut row = SocketRow {
                kind: "C",
                user: &c.user,
                database: &c.database,
                state,
                addr,
                port,
                since: c.since,
                id: c.id,
                remote_pid: 0,
            }
            .cells(local);
            row.extend([text(c.id), text(c.pin().unwrap_or(""))]);
            row
        })
        .collect();
    Table::new(&columns, rows)
}

fn servers(ctx: &Context) -> Table {
    let unspecified: std::net::SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut rows = Vec::new();
    for (key, pool) in ctx.pools.all() {
        let user = pool.target().user.clone();
        for (s, active) in pool.servers() {
            rows.push(
                SocketRow {
                    kind: "S",
                    user: &user,
                    database: &key.database,
                    state: if active { "active" } else { "idle" },
                    addr: s.addr.ip().to_string(),
                    port: s.addr.port(),
                    since: s.since,
                    id: s.pid as u64,
                    remote_pid: s.pid,
                }
                .cells(unspecified),
            );
        }
    }
    Table::new(&SOCKET_COLUMNS, rows)
}

fn databases(ctx: &Context) -> Table {
    let cfg = ctx.config();
    let columns = [
        ("name", Text),
        ("host", Text),
        ("port", Int),
        ("database", Text),
        ("force_user", Text),
        ("pool_size", Int),
        ("min_pool_size", Int),
        ("reserve_pool", Int),
        ("pool_mode", Text),
        ("max_connections", Int),
        ("current_connections", Int),
        ("paused", Int),
        ("disabled", Int),
    ];
    let rows = cfg
        .databases
        .iter()
        .map(|(name, db)| {
            let pools = ctx.pools.matching(Some(name));
            let paused = pools.iter().any(Pool::is_paused);
            let current = ctx.pools.database_usage(name).0;
            let pool = cfg.pool(db, None);
            // Several hosts show as libpq writes them: comma-separated
            // (the port column then holds the first host's).
            let hosts = cfg.hosts(db).unwrap_or_default();
            let names: Vec<&str> = hosts.iter().map(|h| h.host.as_str()).collect();
            let port = hosts.first().map_or(db.port, |h| h.port);
            vec![
                text(name),
                text(names.join(",")),
                text(port),
                text(db.dbname.as_deref().unwrap_or(name)),
                db.server_user.clone(),
                text(pool.size),
                text(cfg.pgmux.min_pool_size),
                text(pool.reserve_size),
                text(format!("{:?}", pool.mode).to_lowercase()),
                text(cfg.db_limit(db)),
                text(current),
                text(u8::from(paused)),
                text(u8::from(ctx.pools.is_disabled(name))),
            ]
        })
        .collect();
    Table::new(&columns, rows)
}

fn users(ctx: &Context) -> Table {
    let cfg = ctx.config();
    let rows = cfg
        .users
        .iter()
        .map(|(name, u)| {
            let mode = u.pool_mode.map(|m| format!("{m:?}").to_lowercase());
            vec![text(name), mode]
        })
        .collect();
    Table::new(&[("name", Text), ("pool_mode", Text)], rows)
}

fn lists(ctx: &Context) -> Table {
    let cfg = ctx.config();
    let pools = ctx.pools.all();
    let clients = ctx.clients.all();
    let servers: usize = pools.iter().map(|(_, p)| p.counts().0).sum();
    let items: [(&str, usize); 12] = [
        ("databases", cfg.databases.len()),
        ("users", cfg.users.len()),
        ("pools", pools.len()),
        ("free_clients", 0),
        ("used_clients", clients.len()),
        ("login_clients", 0),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    let rows = items.iter().map(|(n, v)| vec![text(n), text(v)]).collect();
    Table::new(&[("list", Text), ("items", Int)], rows)
}

fn config(ctx: &Context) -> Table {
    let cfg = ctx.config();
    let now = toml::Value::try_from(&cfg.pgmux).ok();
    let defaults = toml::Value::try_from(crate::config::General::default()).ok();
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
    Table::new(
        &[
            ("key", Text),
            ("value", Text),
            ("default", Text),
            ("changeable", Text),
        ],
        rows,
    )
}
