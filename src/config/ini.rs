//! PgBouncer's configuration files read as PgBouncer reads them: a
//! `pgbouncer.ini` (`[databases]` connection strings, `[users]`,
//! `[pgbouncer]` settings, `%include`) and the `auth_file` in userlist.txt
//! format, turned into pgmux's own [`Config`]. Keys pgmux has no use for are
//! named with their line as warnings; keys whose absence would change
//! behaviour dangerously (a skipped connect query, another authentication)
//! are errors.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::{AdminSection, AuthType, Config, ConfigError, Database, PoolMode, TlsMode, User};

/// One `key = value` line with where it came from.
#[derive(Debug, Clone)]
struct Line {
    section: String,
    key: String,
    value: String,
    at: String,
}

/// What reading produced: the settings, and what was ignored.
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
                let inc = inc.trim();
                let target = path.parent().unwrap_or(Path::new(".")).join(inc);
                if depth >= 10 {
                    self.errors
                        .push(format!("{at}: %include nested too deeply"));
                    continue;
                }
                self.read(&target, depth + 1)?;
                continue;
            }
            if let Some(name) = line.strip_prefix('[') {
                match name.strip_suffix(']') {
                    Some(n) => section = n.trim().to_ascii_lowercase(),
                    None => self
                        .errors
                        .push(format!("{at}: malformed section header {line:?}")),
                }
                continue;
            }
            match line.split_once('=') {
                Some((k, v)) => self.lines.push(Line {
                    section: section.clone(),
                    key: k.trim().to_owned(),
                    value: v.trim().to_owned(),
                    at,
                }),
                None => self
                    .errors
                    .push(format!("{at}: expected key = value, found {line:?}")),
            }
        }
        Ok(())
    }
}

/// Splits a libpq-style connection string (`key=value key2='quoted value'`).
fn connstring(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("expected {key}=value"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quote in {key}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.to_ascii_lowercase(), value));
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
    "server_reset_query_always",
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
    (
        "auth_hba_file",
        "pg_hba.conf-style rules are not supported; clients would be let in differently",
    ),
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

/// Reads a PgBouncer configuration into pgmux's; returns it with the
/// warnings (ignored keys, with their lines).
pub fn load(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    let mut reader = Reader {
        lines: Vec::new(),
        errors: Vec::new(),
    };
    reader.read(path, 0)?;
    let Reader { lines, mut errors } = reader;
    let mut warnings = Vec::new();
    let mut cfg = Config::default();
    let settings: BTreeMap<String, Line> = lines
        .iter()
        .filter(|l| l.section == "pgbouncer")
        .map(|l| (l.key.to_ascii_lowercase(), l.clone()))
        .collect();
    let get = |k: &str| settings.get(k).map(|l| l.value.as_str());

    // Users from auth_file (relative to the ini's directory).
    let mut passwords: BTreeMap<String, String> = BTreeMap::new();
    if let Some(file) = get("auth_file").filter(|f| !f.is_empty()) {
        let p = path.parent().unwrap_or(Path::new(".")).join(file);
        match std::fs::read_to_string(&p) {
            Ok(text) => match userlist(&text, &p.display().to_string()) {
                Ok(users) => passwords.extend(users),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(format!("auth_file {}: {e}", p.display())),
        }
    }

    general(&settings, &mut cfg, &mut errors, &mut warnings);
    for l in lines.iter().filter(|l| l.section == "databases") {
        match database(&l.value, &passwords) {
            Ok((db, notes)) => {
                for n in notes {
                    warnings.push(format!("{}: database {}: {n}", l.at, l.key));
                }
                cfg.databases.insert(l.key.clone(), db);
            }
            Err(e) => errors.push(format!("{}: database {}: {e}", l.at, l.key)),
        }
    }
    for (name, password) in &passwords {
        cfg.users.insert(name.clone(), user(password));
    }
    for l in lines.iter().filter(|l| l.section == "users") {
        let Some(u) = cfg.users.get_mut(&l.key) else {
            warnings.push(format!(
                "{}: user {} is not in auth_file; its settings are ignored",
                l.at, l.key
            ));
            continue;
        };
        match connstring(&l.value) {
            Ok(pairs) => {
                for (k, v) in pairs {
                    match k.as_str() {
                        "pool_mode" => match pool_mode(&v) {
                            Ok(m) => u.pool_mode = Some(m),
                            Err(e) => errors.push(format!("{}: {e}", l.at)),
                        },
                        "max_user_connections" => match number(&v) {
                            Ok(n) => u.max_user_connections = Some(n),
                            Err(e) => errors.push(format!("{}: {e}", l.at)),
                        },
                        _ => warnings.push(format!(
                            "{}: user {}: {k} is not supported; ignored",
                            l.at, l.key
                        )),
                    }
                }
            }
            Err(e) => errors.push(format!("{}: {e}", l.at)),
        }
    }
    for l in lines.iter().filter(|l| l.section == "peers") {
        let peer = connstring(&l.value).and_then(|pairs| {
            let mut p = super::Peer {
                host: String::new(),
                port: 6432,
            };
            for (k, v) in pairs {
                match k.as_str() {
                    "host" => p.host = v,
                    "port" => p.port = number(&v)?,
                    other => return Err(format!("{other} is not supported for a peer")),
                }
            }
            Ok(p)
        });
        match peer {
            Ok(p) => {
                cfg.peers.insert(l.key.clone(), p);
            }
            Err(e) => errors.push(format!("{}: peer {}: {e}", l.at, l.key)),
        }
    }
    for l in lines.iter().filter(|l| {
        !matches!(
            l.section.as_str(),
            "pgbouncer" | "databases" | "users" | "peers"
        )
    }) {
        warnings.push(format!(
            "{}: section [{}] is not supported; ignored",
            l.at, l.section
        ));
    }
    cfg.admin = AdminSection {
        users: get("admin_users").map(list).unwrap_or_default(),
        stats_users: get("stats_users").map(list).unwrap_or_default(),
    };
    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors));
    }
    cfg.validate()?;
    Ok((cfg, warnings))
}

/// A `[users]`-table entry for a userlist.txt password.
fn user(password: &str) -> User {
    User {
        password: password.to_owned(),
        ..User::default()
    }
}

/// `[pgbouncer]` onto `[pgmux]`.
fn general(
    settings: &BTreeMap<String, Line>,
    cfg: &mut Config,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let g = &mut cfg.pgmux;
    let addr = settings
        .get("listen_addr")
        .map_or("127.0.0.1", |l| l.value.as_str());
    let addr = list(addr).into_iter().next().unwrap_or_default();
    let addr = if addr == "*" {
        "0.0.0.0".to_owned()
    } else {
        addr
    };
    let port = settings
        .get("listen_port")
        .map_or("6432", |l| l.value.as_str());
    g.listen = if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    };
    if settings
        .get("listen_addr")
        .is_some_and(|l| list(&l.value).len() > 1)
    {
        warnings.push("listen_addr: pgmux listens on the first address only".into());
    }
    // PgBouncer's documented defaults where they differ from pgmux's, so
    // an ini means what it meant (keepalive timings excepted: pgmux's
    // find a dead server in seconds, not hours).
    g.pool_mode = PoolMode::Session;
    g.auth_type = AuthType::Md5;
    g.max_client_conn = 100;
    g.query_wait_timeout = Duration::from_secs(120);
    g.server_idle_timeout = Duration::from_secs(600);
    g.server_connect_timeout = Duration::from_secs(15);
    g.client_login_timeout = Duration::from_secs(60);
    g.idle_transaction_timeout = Duration::ZERO;
    g.server_reset_query = "DISCARD ALL".into();
    for (key, l) in settings {
        let v = l.value.as_str();
        let r: Result<(), String> = (|| {
            match key.as_str() {
                "pool_mode" => g.pool_mode = pool_mode(v)?,
                "default_pool_size" => g.default_pool_size = number(v)?,
                "min_pool_size" => g.min_pool_size = number(v)?,
                "max_client_conn" => g.max_client_conn = number(v)?,
                "query_wait_timeout" => g.query_wait_timeout = seconds(v)?,
                "query_timeout" => g.query_timeout = seconds(v)?,
                "idle_transaction_timeout" => g.idle_transaction_timeout = seconds(v)?,
                "client_idle_timeout" => g.client_idle_timeout = seconds(v)?,
                "client_login_timeout" => g.client_login_timeout = seconds(v)?,
                "server_connect_timeout" => g.server_connect_timeout = seconds(v)?,
                "server_idle_timeout" => g.server_idle_timeout = seconds(v)?,
                "server_lifetime" => g.server_lifetime = seconds(v)?,
                "server_login_retry" => g.server_login_retry = seconds(v)?,
                "server_check_delay" => g.server_check_delay = seconds(v)?,
                "server_check_query" => g.server_check_query = v.to_owned(),
                "server_reset_query" => g.server_reset_query = v.to_owned(),
                "dns_max_ttl" => g.dns_max_ttl = seconds(v)?,
                "tcp_keepalive" => g.tcp_keepalive = boolean(v)?,
                "tcp_keepidle" => g.tcp_keepidle = seconds(v)?,
                "tcp_keepintvl" => g.tcp_keepintvl = seconds(v)?,
                "tcp_keepcnt" => g.tcp_keepcnt = number(v)?,
                "tcp_user_timeout" => g.tcp_user_timeout = millis(v)?,
                "max_packet_size" => g.max_message_size = number(v)?,
                "so_reuseport" => g.so_reuseport = boolean(v)?,
                "peer_id" => g.peer_id = number(v)?,
                "max_prepared_statements" => g.max_prepared_statements = number(v)?,
                "auth_user" => g.auth_user = Some(v.to_owned()),
                "auth_query" => g.auth_query = v.to_owned(),
                "auth_type" => {
                    g.auth_type = match v {
                        "scram-sha-256" => AuthType::ScramSha256,
                        "md5" => AuthType::Md5,
                        "trust" => AuthType::Trust,
                        "plain" => {
                            warnings.push(format!("{}: auth_type plain: clients authenticate with SCRAM-SHA-256 instead (never a cleartext password)", l.at));
                            AuthType::ScramSha256
                        }
                        other => return Err(format!("auth_type {other} is not supported (scram-sha-256, md5, plain or trust); clients would be let in differently")),
                    }
                }
                "client_tls_sslmode" => g.client_tls_mode = tls_mode(v)?,
                "client_tls_cert_file" => g.client_tls_cert = Some(v.to_owned()),
                "client_tls_key_file" => g.client_tls_key = Some(v.to_owned()),
                "client_tls_ca_file" => g.client_tls_ca = Some(v.to_owned()),
                "server_tls_sslmode" => g.server_tls_mode = tls_mode(v)?,
                "server_tls_ca_file" => g.server_tls_ca = Some(v.to_owned()),
                "max_db_connections" => g.max_db_connections = number(v)?,
                "max_user_connections" => g.max_user_connections = number(v)?,
                "reserve_pool_size" => g.reserve_pool_size = number(v)?,
                "reserve_pool_timeout" => g.reserve_pool_timeout = seconds(v)?,
                k if PROCESS_ONLY.contains(&k) => {}
                k => {
                    if let Some((_, why)) = REFUSED.iter().find(|(name, _)| *name == k) {
                        return Err(format!("{k}: {why}"));
                    }
                    warnings.push(format!("{}: {k} is not supported by pgmux; ignored", l.at));
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            errors.push(format!("{}: {key}: {e}", l.at));
        }
    }
}

/// One `[databases]` connection string.
fn database(
    value: &str,
    passwords: &BTreeMap<String, String>,
) -> Result<(Database, Vec<String>), String> {
    // An empty [databases.NAME] table: its defaults are written once, in
    // its serde attributes.
    let mut db: Database = toml::Value::Table(toml::Table::new())
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())?;
    let mut notes = Vec::new();
    let mut ports = Vec::new();
    for (k, v) in connstring(value)? {
        match k.as_str() {
            "host" => {
                let hosts = list(&v);
                if hosts.len() > 1 {
                    db.hosts = hosts;
                } else {
                    db.host = v;
                }
            }
            "port" => ports = list(&v),
            "dbname" => db.dbname = Some(v),
            "user" => db.server_user = Some(v),
            "password" => db.server_password = Some(v),
            "pool_size" => db.pool_size = Some(number(&v)?),
            "pool_mode" => db.pool_mode = Some(pool_mode(&v)?),
            "max_db_connections" => db.max_db_connections = Some(number(&v)?),
            "reserve_pool" => db.reserve_pool = Some(number(&v)?),
            "connect_query" => {
                return Err(
                    "connect_query is not supported; sessions would start without it".into(),
                )
            }
            "auth_user" | "auth_dbname" => {
                return Err(format!(
                    "per-database {k} is not supported; set auth_user in [pgbouncer]"
                ))
            }
            "target_session_attrs" => {
                db.target_session_attrs = serde_plain(&v)?;
            }
            other => notes.push(format!("{other} is not supported; ignored")),
        }
    }
    match ports.as_slice() {
        [] => {}
        [p] => db.port = number(p)?,
        many => {
            // host=a,b port=1,2: one port per host, as libpq.
            let mut hosts = Vec::new();
            for (i, h) in db.hosts.iter().enumerate() {
                let p = many.get(i).or(many.last()).ok_or("no port")?;
                hosts.push(format!("{h}:{p}"));
            }
            db.hosts = hosts;
        }
    }
    if let (Some(u), None) = (&db.server_user, &db.server_password) {
        match passwords.get(u) {
            Some(p) => db.server_password = Some(p.clone()),
            None => return Err(format!("user={u} has no password here or in auth_file")),
        }
    }
    Ok((db, notes))
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
}
