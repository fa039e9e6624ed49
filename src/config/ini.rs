//! PgBouncer's configuration files read as PgBouncer reads them: a
//! `pgbouncer.ini` (`[databases]` connection strings, `[users]`,
//! `[pgbouncer]` settings, `%include`) and the `auth_file` in userlist.txt
//! format, turned into pgmux's own [`Config`]. Keys pgmux has no use for are
//! named with their line as warnings; keys whose absence would change
//! behaviour dangerously (a skipped connect query, another authentication)
//! are errors. Each section's keys are a table from the key to what it sets,
//! so a key is mapped in one line and an unknown one falls through to the
//! section's warning or error.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::{
    AdminSection, AuthType, Config, ConfigError, Database, General, Peer, PoolMode, TlsMode, User,
};

/// One `key = value` line with where it came from.
#[derive(Debug, Clone)]
struct Line {
    section: String,
    key: String,
    value: String,
    at: String,
}

/// What reading produced: the settings, and what was ignored.
#[derive(Default)]
struct Reader {
    lines: Vec<Line>,
    errors: Vec<String>,
}

impl Reader {
    /// Reads `path` and its `%include`s (relative to the including file).
    fn read(&mut self, path: &Path, depth: usize) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut section = String::new();
        for (i, raw) in text.lines().enumerate() {
            let at = format!("{}:{}", path.display(), i + 1);
            let line = raw.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(inc) = line.strip_prefix("%include") {
                if depth >= 10 {
                    self.errors
                        .push(format!("{at}: %include nested too deeply"));
                    continue;
                }
                let target = path.parent().unwrap_or(Path::new(".")).join(inc.trim());
                self.read(&target, depth + 1)?;
            } else if let Some(name) = line.strip_prefix('[') {
                match name.strip_suffix(']') {
                    Some(n) => section = n.trim().to_ascii_lowercase(),
                    None => self
                        .errors
                        .push(format!("{at}: malformed section header {line:?}")),
                }
            } else {
                self.key_value(&section, line, at);
            }
        }
        Ok(())
    }

    /// One `key = value` line of `section`.
    fn key_value(&mut self, section: &str, line: &str, at: String) {
        match line.split_once('=') {
            Some((k, v)) => self.lines.push(Line {
                section: section.to_owned(),
                key: k.trim().to_owned(),
                value: v.trim().to_owned(),
                at,
            }),
            None => self.errors.push(format!("{at}: expected key = value")),
        }
    }
}

/// The characters of a connection string still to read.
type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// Splits a libpq-style connection string (`key=value key2='quoted value'`).
fn connstring(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        skip_blanks(&mut chars);
        if chars.peek().is_none() {
            return Ok(out);
        }
        let key = take_until(&mut chars, |c| c == '=' || c.is_whitespace());
        skip_blanks(&mut chars);
        if chars.next() != Some('=') {
            // Not the word read: it may be a value whose `key=` is missing.
            return Err("expected key=value".to_string());
        }
        skip_blanks(&mut chars);
        let value = if chars.next_if_eq(&'\'').is_some() {
            quoted(&mut chars, &key)?
        } else {
            take_until(&mut chars, char::is_whitespace)
        };
        out.push((key.to_ascii_lowercase(), value));
    }
}

fn skip_blanks(chars: &mut Chars<'_>) {
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
}

fn take_until(chars: &mut Chars<'_>, stop: impl Fn(char) -> bool) -> String {
    let mut out = String::new();
    while let Some(c) = chars.next_if(|&c| !stop(c)) {
        out.push(c);
    }
    out
}

/// The rest of a `'...'` value (the opening quote read), `\` escaping
/// the next character.
fn quoted(chars: &mut Chars<'_>, key: &str) -> Result<String, String> {
    let mut value = String::new();
    loop {
        match chars.next() {
            Some('\\') => value.extend(chars.next()),
            Some('\'') => return Ok(value),
            Some(c) => value.push(c),
            None => return Err(format!("unterminated quote in {key}")),
        }
    }
}

/// Reads a userlist.txt: `"user" "password"` per line (plain, md5 or SCRAM
/// verifier), `;` comments. Doubled quotes stand for one.
pub fn userlist(text: &str, path: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let mut fields = Vec::new();
        let mut rest = line;
        while let Some(start) = rest.find('"') {
            let mut value = String::new();
            let mut tail = &rest[start + 1..];
            loop {
                match tail.find('"') {
                    Some(q) if tail[q + 1..].starts_with('"') => {
                        value.push_str(&tail[..=q]);
                        tail = &tail[q + 2..];
                    }
                    Some(q) => {
                        value.push_str(&tail[..q]);
                        rest = &tail[q + 1..];
                        break;
                    }
                    None => return Err(format!("{path}:{}: unterminated quote", i + 1)),
                }
            }
            fields.push(value);
        }
        match fields.as_slice() {
            [user, password, ..] => out.push((user.clone(), password.clone())),
            _ => return Err(format!("{path}:{}: expected \"user\" \"password\"", i + 1)),
        }
    }
    Ok(out)
}

/// Seconds as PgBouncer writes them (a number, fractions allowed).
fn seconds(v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{v:?} is not a number of seconds"))
}

fn millis(v: &str) -> Result<Duration, String> {
    v.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{v:?} is not a number of milliseconds"))
}

fn number<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{v:?} is not a number"))
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Ok(true),
        "0" | "off" | "no" | "false" => Ok(false),
        _ => Err(format!("{v:?} is not a boolean")),
    }
}

fn pool_mode(v: &str) -> Result<PoolMode, String> {
    match v {
        "session" => Ok(PoolMode::Session),
        "transaction" => Ok(PoolMode::Transaction),
        "statement" => Err(
            "statement pooling is not supported (it forbids transactions); use transaction".into(),
        ),
        _ => Err(format!("unknown pool_mode {v:?}")),
    }
}

fn tls_mode(v: &str) -> Result<TlsMode, String> {
    Ok(match v {
        "disable" => TlsMode::Disable,
        "allow" => TlsMode::Allow,
        "prefer" => TlsMode::Prefer,
        "require" => TlsMode::Require,
        "verify-ca" => TlsMode::VerifyCa,
        "verify-full" => TlsMode::VerifyFull,
        _ => return Err(format!("unknown TLS mode {v:?}")),
    })
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn text(v: &str) -> Result<String, String> {
    Ok(v.to_owned())
}

/// `[pgbouncer]` keys read for their effect elsewhere, or that only concern
/// PgBouncer's own process (logging, pid file, Unix socket, buffers):
/// nothing to map, nothing lost.
const PROCESS_ONLY: &[&str] = &[
    "logfile",
    "pidfile",
    "syslog",
    "syslog_ident",
    "syslog_facility",
    "log_connections",
    "log_disconnections",
    "log_pooler_errors",
    "log_stats",
    "stats_period",
    "verbose",
    "user",
    "unix_socket_dir",
    "unix_socket_mode",
    "unix_socket_group",
    "pkt_buf",
    "sbuf_loopcnt",
    "listen_backlog",
    "tcp_defer_accept",
    "tcp_socket_buffer",
    "suspend_timeout",
    "disable_pqexec",
    "application_name_add_host",
    "ignore_startup_parameters",
    "server_round_robin",
    "server_fast_close",
    "server_lifetime_jitter",
    "conffile",
    "service_name",
    "job_name",
    "auth_file",
    "listen_addr",
    "listen_port",
    "admin_users",
    "stats_users",
    "track_extra_parameters",
];

/// Keys whose absence would make pgmux behave dangerously differently:
/// refused rather than ignored.
const REFUSED: &[(&str, &str)] = &[
    ("auth_ident_file", "ident maps are not supported"),
    (
        "client_tls_protocols",
        "TLS protocol restrictions are not supported",
    ),
    (
        "server_tls_protocols",
        "TLS protocol restrictions are not supported",
    ),
    (
        "client_tls_ciphers",
        "TLS cipher restrictions are not supported",
    ),
    (
        "server_tls_ciphers",
        "TLS cipher restrictions are not supported",
    ),
];

/// Applies a PgBouncer value to one setting of `T`; `Ok(Some(note))` is a
/// warning to show with the key's line.
type Setter<T> = fn(&mut T, &str) -> Result<Option<&'static str>, String>;

/// A key as PgBouncer spells it (lower case) and what it sets.
type Row<T> = (&'static str, Setter<T>);

/// The setter of `key` in `table`.
fn setter<T>(table: &[Row<T>], key: &str) -> Option<Setter<T>> {
    table.iter().find(|(k, _)| *k == key).map(|(_, set)| *set)
}

/// A setter that stores `parse(value)` in a field, or `Some` of it in an
/// optional field (an override).
macro_rules! set {
    ($($field:ident).+, Some($parse:expr)) => {
        |t, v| {
            t.$($field).+ = Some($parse(v)?);
            Ok(None)
        }
    };
    ($($field:ident).+, $parse:expr) => {
        |t, v| {
            t.$($field).+ = $parse(v)?;
            Ok(None)
        }
    };
}

/// A setter refusing its key: ignoring it would change who gets in or what
/// a session runs.
macro_rules! refuse {
    ($why:literal) => {
        |_, _| Err($why.into())
    };
}

/// `[pgbouncer]` keys that carry over to `[pgmux]`, in PgBouncer's units
/// (seconds, milliseconds for `tcp_user_timeout`).
const GENERAL: &[Row<General>] = &[
    ("pool_mode", set!(pool_mode, pool_mode)),
    ("default_pool_size", set!(default_pool_size, number)),
    ("min_pool_size", set!(min_pool_size, number)),
    ("max_client_conn", set!(max_client_conn, number)),
    ("query_wait_timeout", set!(query_wait_timeout, seconds)),
    ("query_timeout", set!(query_timeout, seconds)),
    (
        "idle_transaction_timeout",
        set!(idle_transaction_timeout, seconds),
    ),
    ("client_idle_timeout", set!(client_idle_timeout, seconds)),
    ("client_login_timeout", set!(client_login_timeout, seconds)),
    (
        "server_connect_timeout",
        set!(server_connect_timeout, seconds),
    ),
    ("server_idle_timeout", set!(server_idle_timeout, seconds)),
    ("autodb_idle_timeout", set!(autodb_idle_timeout, seconds)),
    ("server_lifetime", set!(server_lifetime, seconds)),
    ("server_login_retry", set!(server_login_retry, seconds)),
    ("server_check_delay", set!(server_check_delay, seconds)),
    ("server_check_query", set!(server_check_query, text)),
    ("server_reset_query", set!(server_reset_query, text)),
    (
        "server_reset_query_always",
        set!(server_reset_query_always, boolean),
    ),
    ("dns_max_ttl", set!(dns_max_ttl, seconds)),
    ("tcp_keepalive", set!(tcp_keepalive, boolean)),
    ("tcp_keepidle", set!(tcp_keepidle, seconds)),
    ("tcp_keepintvl", set!(tcp_keepintvl, seconds)),
    ("tcp_keepcnt", set!(tcp_keepcnt, number)),
    ("tcp_user_timeout", set!(tcp_user_timeout, millis)),
    ("max_packet_size", set!(max_message_size, number)),
    ("so_reuseport", set!(so_reuseport, boolean)),
    ("peer_id", set!(peer_id, number)),
    (
        "max_prepared_statements",
        set!(max_prepared_statements, number),
    ),
    ("auth_user", set!(auth_user, Some(text))),
    ("auth_query", set!(auth_query, text)),
    ("auth_type", auth_type),
    ("auth_hba_file", set!(auth_hba_file, Some(text))),
    ("client_tls_sslmode", set!(client_tls_mode, tls_mode)),
    ("client_tls_cert_file", set!(client_tls_cert, Some(text))),
    ("client_tls_key_file", set!(client_tls_key, Some(text))),
    ("client_tls_ca_file", set!(client_tls_ca, Some(text))),
    ("server_tls_sslmode", set!(server_tls_mode, tls_mode)),
    ("server_tls_ca_file", set!(server_tls_ca, Some(text))),
    ("max_db_connections", set!(max_db_connections, number)),
    ("max_user_connections", set!(max_user_connections, number)),
    ("reserve_pool_size", set!(reserve_pool_size, number)),
    ("reserve_pool_timeout", set!(reserve_pool_timeout, seconds)),
];

/// `auth_type`: `plain` becomes SCRAM, since pgmux never asks a client for
/// a cleartext password; the methods pgmux lacks would let clients in
/// differently.
fn auth_type(g: &mut General, v: &str) -> Result<Option<&'static str>, String> {
    g.auth_type = match v {
        "scram-sha-256" | "plain" => AuthType::ScramSha256,
        "md5" => AuthType::Md5,
        "trust" => AuthType::Trust,
        "hba" => AuthType::Hba,
        other => return Err(format!("auth_type {other} is not supported (scram-sha-256, md5, plain, trust or hba); clients would be let in differently")),
    };
    Ok((v == "plain").then_some(
        "auth_type plain: clients authenticate with SCRAM-SHA-256 instead (never a cleartext password)",
    ))
}

/// A `[databases]` entry being read: its ports wait for all its hosts.
struct DbEntry {
    db: Database,
    ports: Vec<String>,
}

/// Connection-string keys of a `[databases]` entry.
const DATABASE: &[Row<DbEntry>] = &[
    ("host", host),
    ("port", |e, v| {
        e.ports = list(v);
        Ok(None)
    }),
    ("dbname", set!(db.dbname, Some(text))),
    ("user", set!(db.server_user, Some(text))),
    ("password", set!(db.server_password, Some(text))),
    ("pool_size", set!(db.pool_size, Some(number))),
    ("pool_mode", set!(db.pool_mode, Some(pool_mode))),
    (
        "max_db_connections",
        set!(db.max_db_connections, Some(number)),
    ),
    ("reserve_pool", set!(db.reserve_pool, Some(number))),
    (
        "target_session_attrs",
        set!(db.target_session_attrs, serde_plain),
    ),
    (
        "connect_query",
        refuse!("connect_query is not supported; sessions would start without it"),
    ),
    (
        "auth_user",
        refuse!("per-database auth_user is not supported; set auth_user in [pgbouncer]"),
    ),
    (
        "auth_dbname",
        refuse!("per-database auth_dbname is not supported; set auth_user in [pgbouncer]"),
    ),
];

/// `host=a` is the host; `host=a,b` several, each with its port from
/// `port` (read once the whole entry is).
fn host(e: &mut DbEntry, v: &str) -> Result<Option<&'static str>, String> {
    let hosts = list(v);
    if hosts.len() > 1 {
        e.db.hosts = hosts;
    } else {
        e.db.host = v.to_owned();
    }
    Ok(None)
}

/// Connection-string keys of a `[users]` entry.
const USER: &[Row<User>] = &[
    ("pool_mode", set!(pool_mode, Some(pool_mode))),
    (
        "max_user_connections",
        set!(max_user_connections, Some(number)),
    ),
];

/// Connection-string keys of a `[peers]` entry.
const PEER: &[Row<Peer>] = &[("host", set!(host, text)), ("port", set!(port, number))];

/// The sections read; lines of any other are named and ignored.
const SECTIONS: &[&str] = &["pgbouncer", "databases", "users", "peers"];

/// What reading found wrong (the file is refused) or ignored (named).
struct Notes {
    errors: Vec<String>,
    warnings: Vec<String>,
}

/// Reads a PgBouncer configuration into pgmux's; returns it with the
/// warnings (ignored keys, with their lines).
pub fn load(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    let mut reader = Reader::default();
    reader.read(path, 0)?;
    let Reader { lines, errors } = reader;
    let mut notes = Notes {
        errors,
        warnings: Vec::new(),
    };
    // The last of a key written twice wins, whatever its case.
    let settings: BTreeMap<String, &Line> = section(&lines, "pgbouncer")
        .map(|l| (l.key.to_ascii_lowercase(), l))
        .collect();
    let get = |k: &str| settings.get(k).map(|l| l.value.as_str());
    let passwords = auth_file(path, get("auth_file"), &mut notes);
    let mut cfg = Config {
        pgmux: general(&settings, &mut notes),
        ..Config::default()
    };
    databases(&lines, &passwords, &mut cfg, &mut notes);
    users(&lines, &passwords, &mut cfg, &mut notes);
    peers(&lines, &mut cfg, &mut notes);
    let unread = lines
        .iter()
        .filter(|l| !SECTIONS.contains(&l.section.as_str()));
    for l in unread {
        let at = &l.at;
        let ignored = format!("{at}: section [{}] is not supported; ignored", l.section);
        notes.warnings.push(ignored);
    }
    cfg.admin = AdminSection {
        users: get("admin_users").map(list).unwrap_or_default(),
        stats_users: get("stats_users").map(list).unwrap_or_default(),
    };
    if !notes.errors.is_empty() {
        // Messages that quote what a line says (`"x" is not a number`)
        // may quote a password: see `report`.
        let errors = notes
            .errors
            .iter()
            .map(|e| super::report::without_values(e));
        return Err(ConfigError::Invalid(errors.collect()));
    }
    // Relative to the ini's directory, as `auth_file`.
    if let Some(hba) = &mut cfg.pgmux.auth_hba_file {
        let dir = path.parent().unwrap_or(Path::new("."));
        *hba = dir.join(&*hba).display().to_string();
    }
    let (cfg, hba_warnings) = cfg.finish()?;
    notes.warnings.extend(hba_warnings);
    Ok((cfg, notes.warnings))
}

/// The lines of one section, in file order.
fn section<'a>(lines: &'a [Line], name: &'a str) -> impl Iterator<Item = &'a Line> {
    lines.iter().filter(move |l| l.section == name)
}

/// The users of `auth_file` (relative to the ini's directory) and their
/// passwords.
fn auth_file(path: &Path, file: Option<&str>, notes: &mut Notes) -> BTreeMap<String, String> {
    let Some(file) = file.filter(|f| !f.is_empty()) else {
        return BTreeMap::new();
    };
    let p = path.parent().unwrap_or(Path::new(".")).join(file);
    notes
        .warnings
        .extend(super::report::loose_mode(&p, "auth_file"));
    let read = std::fs::read_to_string(&p).map_err(|e| format!("auth_file {}: {e}", p.display()));
    match read.and_then(|text| userlist(&text, &p.display().to_string())) {
        Ok(users) => users.into_iter().collect(),
        Err(e) => {
            notes.errors.push(e);
            BTreeMap::new()
        }
    }
}

/// `[pgbouncer]` onto `[pgmux]`, in key order.
fn general(settings: &BTreeMap<String, &Line>, notes: &mut Notes) -> General {
    let mut g = pgbouncer_defaults();
    g.listen = listen(settings, notes);
    for (key, l) in settings {
        match general_key(&mut g, key, &l.value) {
            Ok(None) => {}
            Ok(Some(warning)) => notes.warnings.push(format!("{}: {warning}", l.at)),
            Err(e) => notes.errors.push(format!("{}: {key}: {e}", l.at)),
        }
    }
    g
}

/// One `[pgbouncer]` key: mapped, silent, refused, or else ignored with a
/// warning.
fn general_key(g: &mut General, key: &str, v: &str) -> Result<Option<String>, String> {
    if let Some(set) = setter(GENERAL, key) {
        return set(g, v).map(|note| note.map(str::to_owned));
    }
    if PROCESS_ONLY.contains(&key) {
        return Ok(None);
    }
    if let Some((_, why)) = REFUSED.iter().find(|(name, _)| *name == key) {
        return Err((*why).to_owned());
    }
    Ok(Some(format!("{key} is not supported by pgmux; ignored")))
}

/// PgBouncer's documented defaults where they differ from pgmux's, so an
/// ini means what it meant (keepalive timings excepted: pgmux's find a
/// dead server in seconds, not hours).
fn pgbouncer_defaults() -> General {
    General {
        pool_mode: PoolMode::Session,
        auth_type: AuthType::Md5,
        max_client_conn: 100,
        query_wait_timeout: Duration::from_secs(120),
        server_idle_timeout: Duration::from_secs(600),
        server_connect_timeout: Duration::from_secs(15),
        client_login_timeout: Duration::from_secs(60),
        idle_transaction_timeout: Duration::ZERO,
        server_reset_query: "DISCARD ALL".into(),
        ..General::default()
    }
}

/// `listen_addr` and `listen_port` as one address: the first of the
/// addresses (`*` is every IPv4 one), 127.0.0.1 by default (PgBouncer
/// would listen on its Unix socket only).
fn listen(settings: &BTreeMap<String, &Line>, notes: &mut Notes) -> String {
    let value = |k: &str, default| settings.get(k).map_or(default, |l| l.value.as_str());
    let addrs = list(value("listen_addr", "127.0.0.1"));
    if addrs.len() > 1 {
        notes
            .warnings
            .push("listen_addr: pgmux listens on the first address only".into());
    }
    let addr = match addrs.into_iter().next().unwrap_or_default() {
        any if any == "*" => "0.0.0.0".to_owned(),
        addr => addr,
    };
    let port = value("listen_port", "6432");
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// `[databases]`: one connection string per database.
fn databases(
    lines: &[Line],
    passwords: &BTreeMap<String, String>,
    cfg: &mut Config,
    notes: &mut Notes,
) {
    for l in section(lines, "databases") {
        match database(&l.value, passwords) {
            Ok((db, ignored)) => {
                for n in ignored {
                    notes
                        .warnings
                        .push(format!("{}: database {}: {n}", l.at, l.key));
                }
                cfg.databases.insert(l.key.clone(), db);
            }
            Err(e) => notes
                .errors
                .push(format!("{}: database {}: {e}", l.at, l.key)),
        }
    }
}

/// One `[databases]` connection string, and the keys it ignored.
fn database(
    value: &str,
    passwords: &BTreeMap<String, String>,
) -> Result<(Database, Vec<String>), String> {
    // An empty [databases.NAME] table: its defaults are written once, in
    // its serde attributes.
    let db = toml::Value::Table(toml::Table::new())
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())?;
    let mut entry = DbEntry {
        db,
        ports: Vec::new(),
    };
    let mut ignored = Vec::new();
    for (k, v) in connstring(value)? {
        match setter(DATABASE, &k) {
            Some(set) => {
                set(&mut entry, &v)?;
            }
            None => ignored.push(format!("{k} is not supported; ignored")),
        }
    }
    let DbEntry { mut db, ports } = entry;
    set_ports(&mut db, &ports)?;
    if let (Some(u), None) = (&db.server_user, &db.server_password) {
        match passwords.get(u) {
            Some(p) => db.server_password = Some(p.clone()),
            None => return Err(format!("user={u} has no password here or in auth_file")),
        }
    }
    Ok((db, ignored))
}

/// `port=1` for every host; `host=a,b port=1,2` one per host, as libpq.
fn set_ports(db: &mut Database, ports: &[String]) -> Result<(), String> {
    match ports {
        [] => {}
        [p] => db.port = number(p)?,
        many => {
            let mut hosts = Vec::new();
            for (i, h) in db.hosts.iter().enumerate() {
                let p = many.get(i).or(many.last()).ok_or("no port")?;
                hosts.push(format!("{h}:{p}"));
            }
            db.hosts = hosts;
        }
    }
    Ok(())
}

/// The users of `auth_file`, with `[users]` settings for some of them.
fn users(
    lines: &[Line],
    passwords: &BTreeMap<String, String>,
    cfg: &mut Config,
    notes: &mut Notes,
) {
    for (name, password) in passwords {
        let user = User {
            password: password.clone(),
            ..User::default()
        };
        cfg.users.insert(name.clone(), user);
    }
    for l in section(lines, "users") {
        let Some(u) = cfg.users.get_mut(&l.key) else {
            notes.warnings.push(format!(
                "{}: user {} is not in auth_file; its settings are ignored",
                l.at, l.key
            ));
            continue;
        };
        let pairs = match connstring(&l.value) {
            Ok(pairs) => pairs,
            Err(e) => {
                notes.errors.push(format!("{}: {e}", l.at));
                continue;
            }
        };
        for (k, v) in pairs {
            match setter(USER, &k).map(|set| set(u, &v)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => notes.errors.push(format!("{}: {e}", l.at)),
                None => notes.warnings.push(format!(
                    "{}: user {}: {k} is not supported; ignored",
                    l.at, l.key
                )),
            }
        }
    }
}

/// `[peers]`: the other instances, by peer id.
fn peers(lines: &[Line], cfg: &mut Config, notes: &mut Notes) {
    for l in section(lines, "peers") {
        let peer = connstring(&l.value).and_then(|pairs| {
            let mut p = Peer {
                host: String::new(),
                port: 6432,
            };
            for (k, v) in pairs {
                let set = setter(PEER, &k).ok_or(format!("{k} is not supported for a peer"))?;
                set(&mut p, &v)?;
            }
            Ok(p)
        });
        match peer {
            Ok(p) => {
                cfg.peers.insert(l.key.clone(), p);
            }
            Err(e) => notes.errors.push(format!("{}: peer {}: {e}", l.at, l.key)),
        }
    }
}

/// A kebab-case value of one of pgmux's enums, as written in the ini.
fn serde_plain<T: serde::de::DeserializeOwned>(v: &str) -> Result<T, String> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(v))
        .map_err(|e| e.to_string())
}

/// Whether a path names a PgBouncer-style ini file.
pub fn is_ini(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "ini")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_and_userlists() {
        let pairs = connstring(r"host=db port=5433 dbname='my db' password='it\'s'").unwrap();
        assert_eq!(pairs[2], ("dbname".into(), "my db".into()));
        assert!(connstring("host").is_err());
        let users = userlist(
            "\"alice\" \"SCRAM-SHA-256$4096:abc\"\n; comment\n\"b\"\"ob\" \"md5x\"\n",
            "u",
        )
        .unwrap();
        assert_eq!(users[1], ("b\"ob".into(), "md5x".into()));
        assert!(userlist("\"alice\n", "u").is_err());
    }

    #[test]
    fn each_key_is_mapped_once_and_the_rest_are_named_with_their_line() {
        for (i, (key, _)) in GENERAL.iter().enumerate() {
            assert!(!GENERAL[..i].iter().any(|(k, _)| k == key), "{key} twice");
            assert!(!PROCESS_ONLY.contains(key), "{key} mapped and silent");
            assert!(
                !REFUSED.iter().any(|(k, _)| k == key),
                "{key} mapped and refused"
            );
        }
        /// Removes the test's directory however the test ends.
        struct Scratch(std::path::PathBuf);
        impl Drop for Scratch {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let scratch =
            Scratch(std::env::temp_dir().join(format!("pgmux-ini-test-{}", std::process::id())));
        let dir = &scratch.0;
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("users.txt"), "\"app\" \"secret\"\n").unwrap();
        // Only the owner may read it: no warning about its mode here.
        let owner_only = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(dir.join("users.txt"), owner_only).unwrap();
        let ini = dir.join("t.ini");
        let at = |line: usize| format!("{}:{line}", ini.display());
        std::fs::write(
            &ini,
            "[pgbouncer]\nauth_file = users.txt\nquery_timeout = 2.5\nlogfile = x\n\
             auth_type = plain\nquery_timout = 3\n[databases]\n\
             app = host=a,b port=1,2 pool_mode=transaction timezone=UTC\n[users]\n\
             app = query_timeout=1 max_user_connections=4\n",
        )
        .unwrap();
        let (cfg, warnings) = load(&ini).unwrap();
        assert_eq!(cfg.pgmux.query_timeout, Duration::from_millis(2500));
        assert_eq!(cfg.pgmux.auth_type, AuthType::ScramSha256);
        assert_eq!(cfg.databases["app"].hosts, ["a:1", "b:2"]);
        assert_eq!(cfg.databases["app"].pool_mode, Some(PoolMode::Transaction));
        assert_eq!(cfg.users["app"].max_user_connections, Some(4));
        assert_eq!(
            warnings,
            [
                format!("{}: auth_type plain: clients authenticate with SCRAM-SHA-256 instead (never a cleartext password)", at(5)),
                format!("{}: query_timout is not supported by pgmux; ignored", at(6)),
                format!("{}: database app: timezone is not supported; ignored", at(8)),
                format!("{}: user app: query_timeout is not supported; ignored", at(10)),
            ]
        );
        std::fs::write(dir.join("hba.conf"), "host all all 127.0.0.1/32 md5\n").unwrap();
        std::fs::write(
            &ini,
            "[pgbouncer]\nauth_file = users.txt\nauth_type = hba\nauth_hba_file = hba.conf\n",
        )
        .unwrap();
        let (cfg, _) = load(&ini).unwrap();
        assert_eq!(cfg.pgmux.auth_type, AuthType::Hba);
        assert_eq!(
            cfg.pgmux.auth_hba_file,
            Some(dir.join("hba.conf").display().to_string()),
            "relative to the ini, as auth_file"
        );
        assert!(cfg.hba.is_some());
        std::fs::write(dir.join("hba.conf"), "hostssl all all 127.0.0.1 md5\n").unwrap();
        let Err(ConfigError::Invalid(errors)) = load(&ini) else {
            panic!("a bad rule fails the load");
        };
        let hba_at = format!("{}:1", dir.join("hba.conf").display());
        assert!(errors[0].contains(&hba_at), "{errors:?}");
        std::fs::write(
            &ini,
            "[pgbouncer]\nauth_ident_file = x\ntcp_keepalive = maybe\n[databases]\n\
             app = host=h connect_query=x\n[users]\nnobody = pool_mode=session\n",
        )
        .unwrap();
        let Err(ConfigError::Invalid(errors)) = load(&ini) else {
            panic!("refused keys and bad values are errors");
        };
        assert_eq!(
            errors,
            [
                format!("{}: auth_ident_file: ident maps are not supported", at(2)),
                format!("{}: tcp_keepalive: \"…\" is not a boolean", at(3)),
                format!("{}: database app: connect_query is not supported; sessions would start without it", at(5)),
            ]
        );
    }
}
