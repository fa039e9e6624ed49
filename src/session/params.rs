//! A client's session parameters, and making a server match them before
//! the client's first message reaches it.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::pool::ParamList;

use crate::server::{ServerConn, ServerError, TRACKED_REPORTED};

/// The dotted names in the bodies of the database's own functions (not
/// C or internal ones), each with its value when it is a custom setting
/// that `pg_settings` hides and is not empty: what code pgmux cannot read
/// may have set. Up to 256 names; no backslash, so it reads the same
/// whatever `standard_conforming_strings` says. Like every query pgmux
/// runs on a client's session, it names its operators with their schema
/// (`OPERATOR(pg_catalog.=)`): the client's `search_path` may put an
/// operator of its own making first, which would answer falsely.
const CODE_SETTING_NAMES: &str =
    "SELECT c.n, CASE WHEN v OPERATOR(pg_catalog.<>) '' AND NOT EXISTS \
     (SELECT 1 FROM pg_catalog.pg_settings AS s \
      WHERE pg_catalog.lower(s.name) OPERATOR(pg_catalog.=) c.n) THEN v END \
     FROM (SELECT DISTINCT pg_catalog.lower(m[1]) AS n \
     FROM pg_catalog.pg_proc AS p, pg_catalog.regexp_matches(p.prosrc, \
       '([A-Za-z_][A-Za-z_0-9$]*(?:[.][A-Za-z_][A-Za-z_0-9$]*)+)', 'g') AS m \
     WHERE p.pronamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace \
     AND p.pronamespace OPERATOR(pg_catalog.<>) 'information_schema'::pg_catalog.regnamespace \
     AND p.prolang OPERATOR(pg_catalog.>) 13::pg_catalog.oid ORDER BY 1 LIMIT 256) AS c, \
     LATERAL (SELECT pg_catalog.current_setting(c.n, true) AS v) AS r";

/// The client-only encodings whose second byte of a character may be
/// 0x5C, a backslash ([`ClientParams::lexed_unreliably`]), with their
/// aliases.
const UNRELIABLE_ENCODINGS: [&str; 14] = [
    "sjis",
    "shift_jis",
    "mskanji",
    "win932",
    "windows932",
    "shift_jis_2004",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "gb18030",
    "johab",
];

/// A read-back query and what its statements are
/// ([`ClientParams::settle_sql`]).
#[derive(Debug)]
pub struct Settle {
    /// The statements, as one Query.
    pub sql: String,
    /// `RESET ALL` follows the reading.
    pub wipe: bool,
    /// The names of the database's own functions are asked first.
    pub ask_code: bool,
}

/// Parameters that can't come from a client's startup packet: changing
/// them would change who the server thinks the client is.
const FORBIDDEN: &[&str] = &["role", "session_authorization", "is_superuser"];

/// Why a startup parameter was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    /// Not a parameter name.
    #[error("invalid startup parameter name {0:?}")]
    BadName(String),
    /// A parameter that changes the session's identity.
    #[error("startup parameter {0:?} is not allowed through pgmux")]
    Forbidden(String),
}

/// Parameter values by lowercase name, sorted: a handful per client, where
/// a `BTreeMap` node alone took over 500 bytes of every idle client.
/// Shared until written: the clients of a pool that set nothing of their
/// own all point at the pool's values.
#[derive(Debug, Clone, Default, Hash)]
struct ParamMap(Arc<PoolValues>);

/// The pool values every client of a pool starts from, by the pool's
/// parameter list, so its clients share one copy. A handful of pools per
/// process: a short list, pruned of dropped ones.
static DEFAULTS: Mutex<Vec<(Weak<PoolValues>, ParamMap)>> = Mutex::new(Vec::new());

/// A pool's parameter list, as `ParamList` holds it.
type PoolValues = Vec<(String, String)>;

impl ParamMap {
    /// The tracked parameters of a pool's list, shared with every other
    /// client of the same list.
    fn defaults(pool_params: &ParamList) -> Self {
        let mut cache = DEFAULTS.lock();
        cache.retain(|(list, _)| list.strong_count() > 0);
        if let Some((_, map)) = cache
            .iter()
            .find(|(list, _)| std::ptr::eq(list.as_ptr(), Arc::as_ptr(pool_params)))
        {
            return map.clone();
        }
        let mut map = ParamMap::default();
        for (k, v) in pool_params.iter() {
            let lower = k.to_ascii_lowercase();
            if TRACKED_REPORTED.contains(&lower.as_str()) {
                map.insert(lower, v.clone());
            }
        }
        Arc::make_mut(&mut map.0).shrink_to_fit();
        cache.push((Arc::downgrade(pool_params), map.clone()));
        map
    }

    fn find(&self, k: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(name, _)| name.as_str().cmp(k))
    }

    fn get(&self, k: &str) -> Option<&String> {
        self.find(k).ok().map(|i| &self.0[i].1)
    }

    fn contains_key(&self, k: &str) -> bool {
        self.find(k).is_ok()
    }

    fn insert(&mut self, k: String, v: String) {
        match self.find(&k) {
            Ok(i) if self.0[i].1 == v => {}
            Ok(i) => Arc::make_mut(&mut self.0)[i].1 = v,
            Err(i) => Arc::make_mut(&mut self.0).insert(i, (k, v)),
        }
    }

    fn extend(&mut self, items: impl IntoIterator<Item = (String, String)>) {
        for (k, v) in items {
            self.insert(k, v);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        if !self.0.iter().all(|(k, _)| keep(k)) {
            Arc::make_mut(&mut self.0).retain(|(k, _)| keep(k));
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// The values a client expects its server to have, by lowercase name.
#[derive(Debug, Clone, Default)]
pub struct ClientParams {
    desired: ParamMap,
    /// What the client sent at startup (and in `options`), by lowercase
    /// name: what `RESET` gives back on a direct connection.
    startup: Box<[(String, String)]>,
    /// Hash of `desired` (never 0). A server last synced to the same
    /// fingerprint needs no comparison at all, which is the common case.
    fingerprint: u64,
    /// [`ClientParams::lexed_unreliably`], kept with the fingerprint: it is
    /// asked at the end of every transaction.
    unreliable_encoding: bool,
    /// Which reported startup parameters (bit i: `startup[i]`) the client
    /// changed itself: the server reported a new value during its
    /// transactions ([`ClientParams::on_parameter_status`]).
    startup_changed: u64,
    /// Custom setting names (`app.tenant_id`) the client's statements
    /// mentioned: PostgreSQL hides placeholder settings from `pg_settings`,
    /// so they are read back by name. Boxed: most clients have none, and
    /// an idle client pays 8 bytes for it instead of a Vec's 24.
    #[allow(clippy::box_collection)]
    watched: Option<Box<Vec<String>>>,
}

/// At most this many custom names are followed per client; past it a
/// transaction that sets one more has its server's settings reset.
const MAX_WATCHED: usize = 64;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// Quotes a name as an identifier: a setting named after a keyword
/// (`select.x`) or with any other character reads as that one name.
pub(crate) fn ident(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\"\""))
}

/// Quotes a value as an escape-string literal, which reads the same whatever
/// the server's `standard_conforming_strings`.
pub(crate) fn literal(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 3);
    s.push_str("E'");
    for c in v.chars() {
        match c {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

impl ClientParams {
    /// Starts from the pool's reported values for the tracked parameters,
    /// then applies the client's own settings.
    pub fn new(pool_params: &ParamList, client: &[(String, String)]) -> Result<Self, ParamError> {
        let mut desired = ParamMap::defaults(pool_params);
        let mut startup = Vec::new();
        for (k, v) in client {
            let lower = k.to_ascii_lowercase();
            if !valid_name(&lower) {
                return Err(ParamError::BadName(k.clone()));
            }
            if FORBIDDEN.contains(&lower.as_str()) {
                return Err(ParamError::Forbidden(k.clone()));
            }
            desired.insert(lower.clone(), v.clone());
            startup.push((lower, v.clone()));
        }
        let mut p = Self {
            desired,
            startup: startup.into_boxed_slice(),
            fingerprint: 0,
            unreliable_encoding: false,
            startup_changed: 0,
            watched: None,
        };
        if let Some(own) = Arc::get_mut(&mut p.desired.0) {
            own.shrink_to_fit();
        }
        p.refresh();
        Ok(p)
    }

    fn refresh(&mut self) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.desired.hash(&mut h);
        self.fingerprint = h.finish() | 1;
        self.unreliable_encoding = self.desired.get("client_encoding").is_some_and(|e| {
            UNRELIABLE_ENCODINGS
                .iter()
                .any(|x| e.eq_ignore_ascii_case(x))
        });
    }

    /// Identifies the parameter values this client expects.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The ParameterStatus list shown at login: the pool's values with the
    /// client's own where it set them.
    pub fn welcome(&self, pool_params: &[(String, String)]) -> Vec<(String, String)> {
        pool_params
            .iter()
            .map(|(k, v)| {
                let own = self.desired.get(&k.to_ascii_lowercase());
                (k.clone(), own.unwrap_or(v).clone())
            })
            .collect()
    }

    /// Records a ParameterStatus the server sent while this client held it
    /// (the client's own SET of a reported parameter).
    pub fn on_parameter_status(&mut self, name: &str, value: &str) {
        let lower = name.to_ascii_lowercase();
        if TRACKED_REPORTED.contains(&lower.as_str()) || self.desired.contains_key(&lower) {
            if let Some(i) = self.startup.iter().position(|(k, _)| *k == lower) {
                self.startup_changed |= 1u64.checked_shl(i as u32).unwrap_or(0);
            }
            self.desired.insert(lower, value.to_owned());
            self.refresh();
        }
    }

    /// Whether the client changed startup parameter `k` itself: a reported
    /// one the server reported anew during its transactions, an unreported
    /// one whose value is no longer what it sent. (The server reports a
    /// startup value normalized, `ISO` as `ISO, MDY`: that is no change.)
    fn changed_startup(&self, k: &str, v: &str) -> bool {
        let Some(i) = self.startup.iter().position(|(sk, _)| sk == k) else {
            return false;
        };
        if TRACKED_REPORTED.contains(&k) {
            i >= 64 || self.startup_changed & (1 << i) != 0
        } else {
            self.startup[i].1 != v
        }
    }

    /// The statement that makes `server` match this client, if any differs.
    pub fn sync_sql(&self, server: &ServerConn) -> Option<String> {
        let mut sets = Vec::new();
        for (k, v) in self.desired.iter() {
            // A startup parameter the client changed is set even where the
            // server's value is already the same (its default, after a
            // reset): only a value set in the session tells a later RESET
            // of something else from a RESET of this one
            // (`startup_reapply_sql`).
            if server.param(k) != Some(v.as_str()) || self.changed_startup(k, v) {
                sets.push(format!(
                    "pg_catalog.set_config({}, {}, false)",
                    literal(k),
                    literal(v)
                ));
            }
        }
        let resets: Vec<&String> = server
            .unreported_set()
            .iter()
            .filter(|k| !self.desired.contains_key(k))
            .collect();
        if sets.is_empty() && resets.is_empty() {
            return None;
        }
        let mut sql = String::new();
        if !sets.is_empty() {
            sql.push_str("SELECT ");
            sql.push_str(&sets.join(", "));
            sql.push(';');
        }
        for k in resets {
            sql.push_str(&format!("RESET {};", ident(k)));
        }
        Some(sql)
    }

    /// Follows custom setting names the client mentioned; `false` when
    /// there were more than pgmux follows per client (the caller then
    /// treats the transaction as setting names it cannot read back).
    pub fn watch(&mut self, names: Vec<String>) -> bool {
        let watched = self.watched.get_or_insert_with(Default::default);
        for n in names {
            if !watched.contains(&n) {
                if watched.len() == MAX_WATCHED {
                    return false;
                }
                watched.push(n);
            }
        }
        true
    }

    /// The query that reads back every setting the session holds at
    /// session level: what `pg_settings` lists, and the followed custom
    /// names it hides (placeholders), by name. A placeholder that reads as
    /// an empty string is at its reset value. With `wipe`, `RESET ALL`
    /// follows: the session may hold settings no name can find. Before a
    /// wipe, the names the database's own functions mention are read too
    /// (asked of the server once per connection, [`CODE_SETTING_NAMES`]),
    /// so a setting such a function made stays its client's.
    pub fn settle_sql(&self, wipe: bool, server: &ServerConn) -> Settle {
        let ask_code = wipe && server.code_setting_names.is_none();
        let mut sql = String::new();
        if ask_code {
            sql.push_str(CODE_SETTING_NAMES);
            sql.push_str("; ");
        }
        sql.push_str(
            "SELECT name, pg_catalog.current_setting(name) \
             FROM pg_catalog.pg_settings WHERE source OPERATOR(pg_catalog.=) 'session' \
             AND NOT name OPERATOR(pg_catalog.=) ANY \
             (ARRAY['role', 'session_authorization']::pg_catalog.text[])",
        );
        // Every custom name the client holds is read back too, however it
        // was learned (its text, its Binds, a function's body): pgmux set
        // it on this server, and what is not read back is not recorded
        // as set, so the next client's sync would not reset it.
        let held = self
            .desired
            .iter()
            .map(|(k, _)| k)
            .filter(|k| k.contains('.'));
        let mut names: Vec<String> = self
            .watched
            .iter()
            .flat_map(|w| w.iter())
            .chain(held)
            .chain(server.code_setting_names.iter().flatten().filter(|_| wipe))
            .map(|n| literal(n))
            .collect();
        names.sort_unstable();
        names.dedup();
        if !names.is_empty() {
            sql.push_str(&format!(
                " UNION ALL SELECT n, v FROM (SELECT n, pg_catalog.current_setting(n, true) AS v \
                 FROM pg_catalog.unnest(ARRAY[{}]::pg_catalog.text[]) AS n) AS c \
                 WHERE v OPERATOR(pg_catalog.<>) '' AND NOT EXISTS \
                 (SELECT 1 FROM pg_catalog.pg_settings AS s \
                 WHERE pg_catalog.lower(s.name) OPERATOR(pg_catalog.=) c.n)",
                names.join(", ")
            ));
        }
        if wipe {
            sql.push_str("; RESET ALL");
        }
        Settle {
            sql,
            wipe,
            ask_code,
        }
    }

    /// Adopts the settings the session on `server` holds at session level
    /// (what the client set, and what pgmux set for it) as the client's
    /// own, and records them as the server's. Reported parameters are
    /// already followed through ParameterStatus; identity is
    /// [`super::identity`]'s. With `wipe` the server's settings are reset
    /// after the reading (something may have set a setting no name finds):
    /// the client keeps what was read, and its next server is synced.
    pub async fn settle(
        &mut self,
        server: &mut ServerConn,
        max: usize,
        wipe: bool,
    ) -> Result<(), ServerError> {
        let settle = self.settle_sql(wipe, server);
        let mut sets = Vec::new();
        server
            .run_internal_statements(&settle.sql, max, &mut sets)
            .await?;
        self.adopt_settled(server, &mut sets.into_iter(), &settle);
        Ok(())
    }

    /// What [`ClientParams::settle`] does with the rows of the statements
    /// of [`ClientParams::settle_sql`], taken from `sets` in order. Nothing
    /// is adopted unless the read-back itself completed.
    pub fn adopt_settled(
        &mut self,
        server: &mut ServerConn,
        sets: &mut impl Iterator<Item = Vec<Vec<Option<String>>>>,
        settle: &Settle,
    ) {
        let mut rows = Vec::new();
        if settle.ask_code {
            let Some(code) = sets.next() else { return };
            server.code_setting_names = Some(
                code.iter()
                    .filter_map(|r| r.first().cloned().flatten())
                    .collect(),
            );
            rows.extend(
                code.into_iter()
                    .filter(|r| r.get(1).is_some_and(Option::is_some)),
            );
        }
        let Some(read) = sets.next() else { return };
        rows.extend(read);
        if settle.wipe {
            sets.next();
        }
        let held: BTreeMap<String, String> = rows
            .into_iter()
            .filter_map(|r| match r.as_slice() {
                [Some(k), Some(v)] => Some((k.to_ascii_lowercase(), v.clone())),
                _ => None,
            })
            .filter(|(k, _)| !TRACKED_REPORTED.contains(&k.as_str()))
            .collect();
        self.desired.retain(|k| TRACKED_REPORTED.contains(&k));
        self.desired.extend(held.clone());
        self.refresh();
        if settle.wipe {
            server.set_unreported(BTreeMap::new());
            server.params_fingerprint = 0;
        } else {
            server.set_unreported(held);
            server.params_fingerprint = self.fingerprint;
        }
    }

    /// The statement that gives back, after a `RESET` or `RESET ALL`, the
    /// startup value of every startup parameter that is back at the
    /// server's default (no longer set at session level), as PostgreSQL
    /// does on a direct connection. `None` when the client sent none.
    pub fn startup_reapply_sql(&self) -> Option<String> {
        if self.startup.is_empty() {
            return None;
        }
        let values: Vec<String> = self
            .startup
            .iter()
            .map(|(k, v)| format!("({}, {})", literal(k), literal(v)))
            .collect();
        // A startup setting PostgreSQL hides (a placeholder, `app.x`) is
        // back at its reset value when it reads as empty.
        Some(format!(
            "SELECT pg_catalog.set_config(v.n, v.v, false) FROM (VALUES {}) AS v(n, v) \
             LEFT JOIN pg_catalog.pg_settings s \
             ON pg_catalog.lower(s.name) OPERATOR(pg_catalog.=) v.n \
             WHERE s.source OPERATOR(pg_catalog.<>) 'session' \
             OR (s.name IS NULL AND pg_catalog.current_setting(v.n, true) OPERATOR(pg_catalog.=) '')",
            values.join(", ")
        ))
    }

    /// Whether the client's text may be read differently by PostgreSQL
    /// than by pgmux's lexer: in the client-only encodings whose second
    /// byte of a character may be 0x5C (SJIS, BIG5, GBK, GB18030, JOHAB),
    /// PostgreSQL converts before it lexes, so a backslash pgmux sees in an
    /// escape string may be half of a character. Such a client's
    /// transactions all end with the check that follows code pgmux cannot
    /// read.
    pub fn lexed_unreliably(&self) -> bool {
        self.unreliable_encoding
    }

    /// True when `server` was last synced to exactly these values.
    pub fn in_sync(&self, server: &ServerConn) -> bool {
        server.params_fingerprint == self.fingerprint
    }

    /// Makes `server` match this client. Values the server normalizes
    /// (`utf8` → `UTF8`) are adopted so the next sync doesn't repeat them.
    pub async fn sync(&mut self, server: &mut ServerConn, max: usize) -> Result<(), ServerError> {
        if self.in_sync(server) {
            return Ok(());
        }
        let Some(sql) = self.sync_sql(server) else {
            server.params_fingerprint = self.fingerprint;
            return Ok(());
        };
        server.params_fingerprint = 0;
        server.run_internal(&sql, max).await?;
        self.record_synced(server);
        Ok(())
    }

    /// After a sync: the server holds exactly this client's values.
    fn record_synced(&mut self, server: &mut ServerConn) {
        let mut unreported = BTreeMap::new();
        // Only values the server changed are written: a client sharing its
        // pool's values keeps sharing them.
        let mut adopted = Vec::new();
        for (k, v) in self.desired.iter() {
            if TRACKED_REPORTED.contains(&k.as_str()) {
                if let Some(now) = server.param(k).filter(|now| *now != v.as_str()) {
                    adopted.push((k.clone(), now.to_owned()));
                }
            } else {
                unreported.insert(k.clone(), v.clone());
            }
        }
        self.desired.extend(adopted);
        server.set_unreported(unreported);
        self.refresh();
        server.params_fingerprint = self.fingerprint;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_values() {
        assert_eq!(literal(r"a'b\c"), r"E'a''b\\c'");
        assert_eq!(ident(r#"select.x"y"#), r#""select.x""y""#);
    }

    #[test]
    fn client_overrides_pool_values() {
        let pool = Arc::new(vec![
            ("TimeZone".to_string(), "UTC".to_string()),
            ("server_version".to_string(), "15".to_string()),
        ]);
        let p = ClientParams::new(&pool, &[("timezone".into(), "Europe/Paris".into())]).unwrap();
        assert_eq!(p.welcome(&pool)[0].1, "Europe/Paris");
        assert!(!p.desired.contains_key("server_version"));
        assert!(ClientParams::new(&pool, &[("role".into(), "postgres".into())]).is_err());
        assert!(ClientParams::new(&pool, &[("a;b".into(), "x".into())]).is_err());
        // Clients that set nothing share the pool's values until they do.
        let a = ClientParams::new(&pool, &[]).unwrap();
        let mut b = ClientParams::new(&pool, &[]).unwrap();
        assert!(Arc::ptr_eq(&a.desired.0, &b.desired.0));
        b.on_parameter_status("TimeZone", "Asia/Tokyo");
        assert!(!Arc::ptr_eq(&a.desired.0, &b.desired.0));
        assert_eq!(a.desired.get("timezone").map(String::as_str), Some("UTC"));
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
