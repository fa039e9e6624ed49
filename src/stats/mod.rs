//! Statistics: per-pool counters kept as plain atomics on the hot path, and
//! their Prometheus exposition (`metrics` + `metrics-exporter-prometheus`).
//!
//! Each pgmux instance has its own recorder (not the process-global one), so
//! several instances in one process don't mix. Counters are copied from the
//! atomics and gauges computed from pool state at scrape time; histograms are
//! recorded as events happen through handles resolved once per pool.

pub mod http;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Metric names (dashboards depend on them).
pub mod names {
    /// Clients of a pool by state (active, waiting, idle).
    pub const CLIENTS: &str = "pgmux_clients";
    /// Server connections of a pool by state (active, idle, connecting).
    pub const SERVERS: &str = "pgmux_servers";
    /// Configured pool size.
    pub const POOL_SIZE: &str = "pgmux_pool_size";
    /// Time from needing a server to getting one.
    pub const CLIENT_WAIT: &str = "pgmux_client_wait_seconds";
    /// Transaction duration.
    pub const TRANSACTION_DURATION: &str = "pgmux_transaction_duration_seconds";
    /// Transactions completed.
    pub const TRANSACTIONS: &str = "pgmux_transactions_total";
    /// Queries completed (each ReadyForQuery).
    pub const QUERIES: &str = "pgmux_queries_total";
    /// Bytes forwarded, by direction.
    pub const BYTES: &str = "pgmux_bytes_total";
    /// Server connections opened.
    pub const SERVER_CONNECTIONS_OPENED: &str = "pgmux_server_connections_opened_total";
    /// Failed attempts to open a server connection.
    pub const SERVER_CONNECT_FAILURES: &str = "pgmux_server_connect_failures_total";
    /// Errors by reason.
    pub const ERRORS: &str = "pgmux_errors_total";
    /// Prepared statement outcomes.
    pub const PREPARED: &str = "pgmux_prepared_statements_total";
    /// Config reloads by result.
    pub const RELOADS: &str = "pgmux_config_reloads_total";
    /// Time of the last successful reload.
    pub const LAST_RELOAD: &str = "pgmux_config_last_reload_success_timestamp_seconds";
    /// Clients keeping their server between transactions (transaction mode).
    pub const PINNED_CLIENTS: &str = "pgmux_pinned_clients";
    /// Clients that started keeping their server, by reason.
    pub const PINS: &str = "pgmux_pins_total";
    /// Round trips after a transaction that read back or reset a server's
    /// session state, by what called for them.
    pub const SESSION_CHECKS: &str = "pgmux_session_checks_total";
    /// Cancel requests by outcome.
    pub const CANCELS: &str = "pgmux_cancel_requests_total";
    /// Clients disconnected by an idle timeout, by kind.
    pub const CLIENT_TIMEOUTS: &str = "pgmux_client_timeouts_total";
    /// Servers a client left mid-transaction, by outcome.
    pub const ABANDONED: &str = "pgmux_abandoned_transactions_total";
    /// Server connections under a shared limit (max_db_connections,
    /// max_user_connections), by scope and name.
    pub const LIMITED_CONNECTIONS: &str = "pgmux_limited_server_connections";
    /// The shared limit itself (0: none).
    pub const CONNECTION_LIMIT: &str = "pgmux_server_connection_limit";
}

/// Why a client got an error, as counted in `pgmux_errors_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    /// Waited past `query_wait_timeout`.
    WaitTimeout,
    /// Wrong password.
    AuthFailed,
    /// Unknown database or role.
    UnknownTarget,
    /// Past `max_client_conn`.
    MaxClientConn,
    /// Could not open a server connection.
    ConnectFailed,
    /// A server connection died under a client.
    ServerLost,
    /// The client sent something malformed or illegal.
    ProtocolError,
    /// Login not finished in time.
    LoginTimeout,
}

impl ErrorReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::WaitTimeout => "wait_timeout",
            Self::AuthFailed => "auth_failed",
            Self::UnknownTarget => "unknown_target",
            Self::MaxClientConn => "max_client_conn",
            Self::ConnectFailed => "connect_failed",
            Self::ServerLost => "server_lost",
            Self::ProtocolError => "protocol_error",
            Self::LoginTimeout => "login_timeout",
        }
    }
}

/// Hot-path counters of one pool.
#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Transactions completed.
    pub transactions: AtomicU64,
    /// Queries completed.
    pub queries: AtomicU64,
    /// Bytes from clients to servers.
    pub bytes_in: AtomicU64,
    /// Bytes from servers to clients.
    pub bytes_out: AtomicU64,
    /// Server connections opened.
    pub opened: AtomicU64,
    /// Failed attempts to open one (each round over the hosts counts once).
    pub connect_failures: AtomicU64,
    /// Total microseconds clients waited for a server.
    pub wait_us: AtomicU64,
    /// Total microseconds spent in transactions.
    pub transaction_us: AtomicU64,
    /// Total microseconds from a request to its ReadyForQuery.
    pub query_us: AtomicU64,
}

/// PgBouncer's statistics of one database (or their averages per second
/// over a period, times per transaction or query).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Transactions.
    pub xact_count: u64,
    /// Queries.
    pub query_count: u64,
    /// Bytes from clients.
    pub bytes_received: u64,
    /// Bytes to clients.
    pub bytes_sent: u64,
    /// Microseconds in transactions.
    pub xact_time: u64,
    /// Microseconds in queries.
    pub query_time: u64,
    /// Microseconds clients waited for a server.
    pub wait_time: u64,
}

impl Totals {
    /// Adds a pool's counters.
    pub fn add(&mut self, c: &PoolCounters) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.sum(&Totals {
            xact_count: get(&c.transactions),
            query_count: get(&c.queries),
            bytes_received: get(&c.bytes_in),
            bytes_sent: get(&c.bytes_out),
            xact_time: get(&c.transaction_us),
            query_time: get(&c.query_us),
            wait_time: get(&c.wait_us),
        });
    }

    /// Adds another set.
    pub fn sum(&mut self, o: &Totals) {
        self.xact_count += o.xact_count;
        self.query_count += o.query_count;
        self.bytes_received += o.bytes_received;
        self.bytes_sent += o.bytes_sent;
        self.xact_time += o.xact_time;
        self.query_time += o.query_time;
        self.wait_time += o.wait_time;
    }

    /// PgBouncer's averages between two readings `secs` apart: counts and
    /// bytes per second, transaction and query times per transaction and
    /// query, wait time per transaction.
    pub fn averages(&self, before: &Totals, secs: u64) -> Totals {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let per = |v: u64, n: u64| v.checked_div(n).unwrap_or(0);
        let xacts = d(self.xact_count, before.xact_count);
        let queries = d(self.query_count, before.query_count);
        let secs = secs.max(1);
        Totals {
            xact_count: xacts / secs,
            query_count: queries / secs,
            bytes_received: d(self.bytes_received, before.bytes_received) / secs,
            bytes_sent: d(self.bytes_sent, before.bytes_sent) / secs,
            xact_time: per(d(self.xact_time, before.xact_time), xacts),
            query_time: per(d(self.query_time, before.query_time), queries),
            wait_time: per(d(self.wait_time, before.wait_time), xacts),
        }
    }
}

/// The statistics period (PgBouncer's `stats_period`, 60 s): averages of
/// the last complete period, per database.
#[derive(Default)]
pub struct StatsPeriod {
    last: parking_lot::Mutex<
        Option<(
            std::time::Instant,
            std::collections::BTreeMap<String, Totals>,
        )>,
    >,
    averages: parking_lot::Mutex<std::collections::BTreeMap<String, Totals>>,
}

impl StatsPeriod {
    /// Length of a period.
    pub const PERIOD: Duration = Duration::from_secs(60);

    /// Whether a period has passed since the last reading (or none was
    /// taken yet).
    pub fn due(&self, now: std::time::Instant) -> bool {
        self.last
            .lock()
            .as_ref()
            .is_none_or(|(at, _)| now.duration_since(*at) >= Self::PERIOD)
    }

    /// Takes a reading; the averages become those since the previous one.
    pub fn record(
        &self,
        now: std::time::Instant,
        totals: std::collections::BTreeMap<String, Totals>,
    ) {
        let mut last = self.last.lock();
        if let Some((at, before)) = last.as_ref() {
            let secs = now.duration_since(*at).as_secs();
            let avg = totals
                .iter()
                .map(|(db, t)| {
                    let b = before.get(db).copied().unwrap_or_default();
                    (db.clone(), t.averages(&b, secs))
                })
                .collect();
            *self.averages.lock() = avg;
        }
        *last = Some((now, totals));
    }

    /// The averages of the last complete period.
    pub fn averages(&self) -> std::collections::BTreeMap<String, Totals> {
        self.averages.lock().clone()
    }
}

/// A Prometheus counter and the atomic it mirrors.
type Exported = (Counter, fn(&PoolCounters) -> u64);

/// Upper bounds of [`LATENCY_BUCKETS`] in nanoseconds.
const BUCKET_NS: [u64; LATENCY_BUCKETS.len()] = {
    let mut ns = [0; LATENCY_BUCKETS.len()];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// A latency histogram counted in plain atomics on the hot path and handed
/// to the Prometheus recorder at scrape time. A `metrics` histogram pays a
/// queue push and a clock read per value: with two values per
/// transaction (the wait and the transaction) that was a twentieth of
/// pgmux's own instructions per transaction. Each bucket keeps its count
/// and sum, and a scrape records each bucket's new values as their mean
/// (which lies in the same bucket) that many times, so buckets, count and
/// sum come out as if every value had been recorded.
struct Buckets {
    histogram: Histogram,
    /// Per bucket, the last one for values past every bound.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sums_ns: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// (count, sum) per bucket as of the last scrape.
    flushed: parking_lot::Mutex<[(u64, u64); LATENCY_BUCKETS.len() + 1]>,
}

impl Buckets {
    fn new(histogram: Histogram) -> Self {
        Self {
            histogram,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sums_ns: std::array::from_fn(|_| AtomicU64::new(0)),
            flushed: parking_lot::Mutex::new([(0, 0); LATENCY_BUCKETS.len() + 1]),
        }
    }

    fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Prometheus buckets hold values up to and including their bound.
        let i = BUCKET_NS.partition_point(|&bound| bound < ns);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sums_ns[i].fetch_add(ns, Ordering::Relaxed);
    }

    fn flush(&self) {
        let mut flushed = self.flushed.lock();
        for (i, last) in flushed.iter_mut().enumerate() {
            let count = self.counts[i].load(Ordering::Relaxed);
            let sum = self.sums_ns[i].load(Ordering::Relaxed);
            let new = count.wrapping_sub(last.0);
            if new > 0 {
                let mean = sum.wrapping_sub(last.1) as f64 / new as f64 / 1e9;
                self.histogram.record_many(mean, new as usize);
            }
            *last = (count, sum);
        }
    }
}

/// The Prometheus handles of one pool.
pub struct PoolMetrics {
    /// Counters updated on the hot path.
    pub counters: PoolCounters,
    wait: Buckets,
    transaction: Buckets,
    exported: Vec<Exported>,
    gauges: PoolGauges,
}

/// Gauges set from pool state at scrape time.
struct PoolGauges {
    clients: [Gauge; 3],
    servers: [Gauge; 3],
    size: Gauge,
}

/// Pool state as seen at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolSnapshot {
    /// Clients holding a server.
    pub clients_active: usize,
    /// Clients waiting for one.
    pub clients_waiting: usize,
    /// Clients logged in and holding nothing.
    pub clients_idle: usize,
    /// Servers lent to clients.
    pub servers_active: usize,
    /// Servers in the pool.
    pub servers_idle: usize,
    /// Servers being opened.
    pub servers_connecting: usize,
    /// Configured size.
    pub size: usize,
}

impl PoolMetrics {
    /// Records a client's wait for a server.
    pub fn observe_wait(&self, d: Duration) {
        self.wait.record(d);
        self.counters
            .wait_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records a finished transaction.
    pub fn observe_transaction(&self, d: Duration) {
        self.transaction.record(d);
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        self.counters
            .transaction_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Copies counters and pool state into the exported metrics.
    pub fn export(&self, s: PoolSnapshot) {
        self.wait.flush();
        self.transaction.flush();
        for (c, read) in &self.exported {
            c.absolute(read(&self.counters));
        }
        let g = &self.gauges;
        for (gauge, v) in
            g.clients
                .iter()
                .zip([s.clients_active, s.clients_waiting, s.clients_idle])
        {
            gauge.set(v as f64);
        }
        for (gauge, v) in
            g.servers
                .iter()
                .zip([s.servers_active, s.servers_idle, s.servers_connecting])
        {
            gauge.set(v as f64);
        }
        g.size.set(s.size as f64);
    }
}

/// One instance's metrics registry.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    prepared: [Counter; 4],
    reloads: [Counter; 2],
    last_reload: Gauge,
    pinned: Gauge,
}

const META: Metadata<'static> = Metadata::new("pgmux", ::metrics::Level::INFO, None);

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Builds a registry with every metric described.
    pub fn new() -> Self {
        let recorder = [names::CLIENT_WAIT, names::TRANSACTION_DURATION]
            .into_iter()
            .fold(PrometheusBuilder::new(), |b, name| {
                b.set_buckets_for_metric(Matcher::Full(name.into()), LATENCY_BUCKETS)
                    .expect("bucket list is not empty")
            })
            .build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &META)
        };
        let outcome = |o: &'static str| counter(names::PREPARED, vec![Label::new("outcome", o)]);
        let result = |r: &'static str| counter(names::RELOADS, vec![Label::new("result", r)]);
        let prepared = [
            outcome("hit"),
            outcome("miss"),
            outcome("reprepare"),
            outcome("evicted"),
        ];
        let reloads = [result("ok"), result("error")];
        let last_reload = recorder.register_gauge(&Key::from_name(names::LAST_RELOAD), &META);
        let pinned = recorder.register_gauge(&Key::from_name(names::PINNED_CLIENTS), &META);
        Self {
            pinned,
            recorder,
            handle,
            prepared,
            reloads,
            last_reload,
        }
    }

    /// Resolves the handles of one pool.
    pub fn pool(&self, database: &str, user: &str) -> PoolMetrics {
        let labels = |extra: Option<(&'static str, &'static str)>| {
            let mut v = vec![
                Label::new("database", database.to_owned()),
                Label::new("user", user.to_owned()),
            ];
            if let Some((k, val)) = extra {
                v.push(Label::new(k, val));
            }
            v
        };
        let r = &self.recorder;
        let counter = |name: &'static str, extra| {
            r.register_counter(&Key::from_parts(name, labels(extra)), &META)
        };
        let gauge = |name: &'static str, extra| {
            r.register_gauge(&Key::from_parts(name, labels(extra)), &META)
        };
        let histogram =
            |name: &'static str| r.register_histogram(&Key::from_parts(name, labels(None)), &META);
        let exported: Vec<Exported> = vec![
            (counter(names::TRANSACTIONS, None), |c| {
                c.transactions.load(Ordering::Relaxed)
            }),
            (counter(names::QUERIES, None), |c| {
                c.queries.load(Ordering::Relaxed)
            }),
            (
                counter(names::BYTES, Some(("direction", "client_to_server"))),
                |c| c.bytes_in.load(Ordering::Relaxed),
            ),
            (
                counter(names::BYTES, Some(("direction", "server_to_client"))),
                |c| c.bytes_out.load(Ordering::Relaxed),
            ),
            (counter(names::SERVER_CONNECTIONS_OPENED, None), |c| {
                c.opened.load(Ordering::Relaxed)
            }),
            (counter(names::SERVER_CONNECT_FAILURES, None), |c| {
                c.connect_failures.load(Ordering::Relaxed)
            }),
        ];
        let state = |name, s| gauge(name, Some(("state", s)));
        PoolMetrics {
            counters: PoolCounters::default(),
            wait: Buckets::new(histogram(names::CLIENT_WAIT)),
            transaction: Buckets::new(histogram(names::TRANSACTION_DURATION)),
            exported,
            gauges: PoolGauges {
                clients: [
                    state(names::CLIENTS, "active"),
                    state(names::CLIENTS, "waiting"),
                    state(names::CLIENTS, "idle"),
                ],
                servers: [
                    state(names::SERVERS, "active"),
                    state(names::SERVERS, "idle"),
                    state(names::SERVERS, "connecting"),
                ],
                size: gauge(names::POOL_SIZE, None),
            },
        }
    }

    /// Counts an error (rare: the handle is looked up each time).
    pub fn error(&self, reason: ErrorReason, database: &str, user: &str) {
        let labels = vec![
            Label::new("reason", reason.as_str()),
            Label::new("database", database.to_owned()),
            Label::new("user", user.to_owned()),
        ];
        self.recorder
            .register_counter(&Key::from_parts(names::ERRORS, labels), &META)
            .increment(1);
    }

    /// Counts a client that starts keeping its server (`reason`), or one
    /// that stops (`None`).
    pub fn pin(&self, reason: Option<&'static str>) {
        let Some(reason) = reason else {
            self.pinned.decrement(1.0);
            return;
        };
        self.pinned.increment(1.0);
        let key = Key::from_parts(names::PINS, vec![Label::new("reason", reason)]);
        self.recorder.register_counter(&key, &META).increment(1);
    }

    /// Counts a round trip that read back or reset a server's session state
    /// after a transaction: `code` (code pgmux cannot read, or
    /// `server_reset_query_always`: all of the below at once), `settings`,
    /// `identity`, `pin`.
    pub fn session_check(&self, kind: &'static str) {
        let key = Key::from_parts(names::SESSION_CHECKS, vec![Label::new("kind", kind)]);
        self.recorder.register_counter(&key, &META).increment(1);
    }

    /// Counts a cancel request by outcome.
    pub fn cancel(&self, outcome: &'static str) {
        let key = Key::from_parts(names::CANCELS, vec![Label::new("outcome", outcome)]);
        self.recorder.register_counter(&key, &META).increment(1);
    }

    /// Counts a client disconnected by a timeout (`idle_transaction`,
    /// `client_idle`).
    pub fn client_timeout(&self, kind: &'static str) {
        let key = Key::from_parts(names::CLIENT_TIMEOUTS, vec![Label::new("kind", kind)]);
        self.recorder.register_counter(&key, &META).increment(1);
    }

    /// Counts a server a client left mid-transaction: rolled back and
    /// reused, or closed.
    pub fn abandoned(&self, recovered: bool) {
        let outcome = if recovered { "recovered" } else { "closed" };
        let key = Key::from_parts(names::ABANDONED, vec![Label::new("outcome", outcome)]);
        self.recorder.register_counter(&key, &META).increment(1);
    }

    /// Sets a shared limit's gauges: connections under it, and the limit.
    pub fn budget(&self, scope: &'static str, name: &str, used: usize, limit: usize) {
        for (metric, v) in [
            (names::LIMITED_CONNECTIONS, used),
            (names::CONNECTION_LIMIT, limit),
        ] {
            let labels = vec![
                Label::new("scope", scope),
                Label::new("name", name.to_owned()),
            ];
            self.recorder
                .register_gauge(&Key::from_parts(metric, labels), &META)
                .set(v as f64);
        }
    }

    /// Counts a config reload.
    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].increment(1);
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.last_reload.set(now.as_secs_f64());
        }
    }

    /// Sets the prepared-statement counters: hits, misses, re-prepares, evictions.
    pub fn prepared(&self, values: [u64; 4]) {
        for (c, v) in self.prepared.iter().zip(values) {
            c.absolute(v);
        }
    }

    /// Folds recorded histogram samples into their buckets. Samples are
    /// buffered until this runs, so it must run periodically even when
    /// nobody scrapes (the app does it every few seconds).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

fn describe(r: &PrometheusRecorder) {
    let d = |name: &'static str, unit: Option<Unit>, text: &'static str| {
        (KeyName::from(name), unit, SharedString::from(text))
    };
    let secs = Some(Unit::Seconds);
    for (name, unit, text) in [
        d(names::CLIENTS, None, "Clients of the pool by state: active (holding a server), waiting (queued for one), idle."),
        d(names::SERVERS, None, "Server connections of the pool by state: active (lent to a client), idle, connecting."),
        d(names::POOL_SIZE, None, "Configured maximum server connections of the pool."),
        d(names::CLIENT_WAIT, secs, "Time from a client needing a server to getting one."),
        d(names::TRANSACTION_DURATION, secs, "Duration of transactions, from first request to ReadyForQuery idle."),
        d(names::LIMITED_CONNECTIONS, None, "Server connections open or opening under a shared limit: scope database (max_db_connections) or user (max_user_connections)."),
        d(names::CONNECTION_LIMIT, None, "The shared limit on server connections of a database or user (0: none)."),
        d(names::PINNED_CLIENTS, None, "Clients keeping their server between transactions because of session state pgmux cannot move."),
        d(names::LAST_RELOAD, secs, "Unix time of the last successful configuration reload."),
    ] {
        if name.as_str() == names::CLIENT_WAIT || name.as_str() == names::TRANSACTION_DURATION {
            r.describe_histogram(name, unit, text);
        } else {
            r.describe_gauge(name, unit, text);
        }
    }
    for (name, text) in [
        (names::TRANSACTIONS, "Transactions completed."),
        (names::QUERIES, "Queries completed (each ReadyForQuery)."),
        (names::BYTES, "Bytes forwarded, by direction."),
        (names::SERVER_CONNECTIONS_OPENED, "Server connections opened."),
        (names::SERVER_CONNECT_FAILURES, "Failed attempts to open a server connection (one per round over the database's hosts)."),
        (names::ERRORS, "Errors sent to clients, by reason."),
        (names::PREPARED, "Prepared statements: hit (Parse answered by pgmux), miss (Parse sent), reprepare (injected), evicted."),
        (names::RELOADS, "Configuration reloads by result."),
        (names::ABANDONED, "Servers a client left mid-transaction or with requests in flight: recovered (rolled back, reused) or closed."),
        (names::CLIENT_TIMEOUTS, "Clients disconnected by an idle timeout: idle_transaction (idle_transaction_timeout, 25P03), client_idle (client_idle_timeout, 57P05)."),
        (names::SESSION_CHECKS, "Round trips after a transaction that read back or reset a server's session state, by what called for them (code: code pgmux cannot read, such as a function of the application's own, DO, CALL, or server_reset_query_always; settings; identity; pin); statements_changed: servers closed because a client dropped or replaced a prepared statement pgmux shares."),
        (names::CANCELS, "Cancel requests (a client's, or query_timeout's): forwarded (delivered to the server the client held), dropped (the client held no server, or no such key), uncertain (not known to have arrived: the server was closed rather than lent again), peer (passed to the instance that issued the key)."),
        (names::PINS, "Clients that started keeping their server between transactions, by reason (temp_table, advisory_lock, listen, with_hold_cursor, prepare)."),
    ] {
        r.describe_counter(KeyName::from(name), None, SharedString::from(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    /// Buckets counted in atomics come out of a scrape as if each value had
    /// been recorded: same bucket counts, count and sum, across scrapes.
    #[test]
    fn buckets_render_as_recorded() {
        let m = Metrics::new();
        let p = m.pool("db", "u");
        let values_us = [0, 100, 101, 900, 2_000_000, 40_000_000];
        for us in values_us {
            p.observe_transaction(Duration::from_micros(us));
        }
        p.export(PoolSnapshot::default());
        p.observe_transaction(Duration::from_micros(100));
        p.export(PoolSnapshot::default());
        let text = m.render();
        let name = names::TRANSACTION_DURATION;
        let bucket = |le: &str| {
            let l = line(
                &text,
                &format!("{name}_bucket{{database=\"db\",user=\"u\",le=\"{le}\"}}"),
            );
            l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok())
        };
        // Cumulative: 0, 100 us and 100 us again are within 0.0001 s, 101
        // us within 0.0005, 900 us within 0.001, 2 s within 2.5, 40 s only
        // in +Inf.
        assert_eq!(bucket("0.0001"), Some(3));
        assert_eq!(bucket("0.0005"), Some(4));
        assert_eq!(bucket("0.001"), Some(5));
        assert_eq!(bucket("2.5"), Some(6));
        assert_eq!(bucket("30"), Some(6));
        assert_eq!(bucket("+Inf"), Some(7));
        let count = line(&text, &format!("{name}_count"));
        assert!(count.ends_with(" 7"), "{count}");
        let sum: f64 = line(&text, &format!("{name}_sum"))
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!((sum - 42.001201).abs() < 1e-9, "{sum}");
    }
}
