//! The process-wide registry of distinct statements.
//!
//! Keyed by the full query text and parameter types (a hash only picks the
//! bucket; equality is checked on the bytes), so two different statements
//! can never alias. Entries are weak: a statement no client and no server
//! refers to any more is freed, and its bucket slot is swept later.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use crate::protocol::encode::{self, EncodeError};

/// One distinct statement and its server-side name.
#[derive(Debug)]
pub struct Statement {
    /// Registry id; the server-side name is `pgmux_<id>`.
    pub id: u64,
    /// The server-side name.
    pub name: Bytes,
    /// A complete Parse message under the server-side name, ready to send.
    pub parse: Bytes,
    /// Offsets of the query text and the parameter types inside `parse`.
    query_at: (usize, usize),
    /// Some server has answered this statement's Parse with ParseComplete,
    /// so it is known to be valid SQL.
    confirmed: AtomicBool,
    /// What executing it may change in the session ([`crate::sql::effects`]),
    /// read once here rather than at every Bind.
    pub effects: crate::sql::Effects,
    /// A SHA-256 (hex) of [`Statement::server_text`] when it is ASCII,
    /// made once, on the first check of a server's statements.
    text_hash: std::sync::OnceLock<Option<Box<str>>>,
    /// Prepared with SQL `PREPARE`: `parse` is a Query (`PREPARE pgmux_<n>
    /// <text>`), and the text is what followed the client's name.
    pub sql: bool,
}

/// The `types` key of statements a client prepared with SQL `PREPARE`
/// (never a valid count-prefixed type list, so the kinds can't alias).
pub const SQL_PREPARE: &[u8] = b"\xff\xffPREPARE";

impl Statement {
    fn new(id: u64, query: &[u8], types: &[u8]) -> Result<Self, EncodeError> {
        let name = Bytes::from(format!("pgmux_{id}"));
        let sql = types == SQL_PREPARE;
        let mut parse = BytesMut::with_capacity(query.len() + types.len() + name.len() + 16);
        let start = if sql {
            encode::query_raw(&mut parse, &[b"PREPARE ", &name, b" ", query])?;
            5 + b"PREPARE ".len() + name.len() + 1
        } else {
            encode::parse_raw(&mut parse, &name, query, types)?;
            5 + name.len() + 1
        };
        Ok(Self {
            id,
            name,
            parse: parse.freeze(),
            query_at: (start, start + query.len()),
            confirmed: AtomicBool::new(false),
            text_hash: std::sync::OnceLock::new(),
            effects: crate::sql::effects(query),
            sql,
        })
    }

    /// The text the server keeps for it (`pg_prepared_statements`'
    /// `statement`): the Parse's query, or for SQL `PREPARE` the whole
    /// Query pgmux sent.
    pub fn server_text(&self) -> &[u8] {
        if self.sql {
            // A Query message: tag, length, the text, its NUL.
            self.parse
                .get(5..self.parse.len().saturating_sub(1))
                .unwrap_or_default()
        } else {
            self.query()
        }
    }

    /// The hex SHA-256 of [`Statement::server_text`], which the server
    /// computes over its UTF-8 form: comparable only for an ASCII text,
    /// which reads the same in every client encoding (`None` otherwise).
    pub fn text_hash(&self) -> Option<&str> {
        self.text_hash
            .get_or_init(|| {
                use sha2::{Digest, Sha256};
                let text = self.server_text();
                text.is_ascii().then(|| {
                    Sha256::digest(text)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect()
                })
            })
            .as_deref()
    }

    /// The query text.
    pub fn query(&self) -> &[u8] {
        &self.parse[self.query_at.0..self.query_at.1]
    }

    /// The raw parameter type list ([`SQL_PREPARE`] for SQL `PREPARE`).
    pub fn types(&self) -> &[u8] {
        if self.sql {
            return SQL_PREPARE;
        }
        &self.parse[self.query_at.1 + 1..]
    }

    /// Whether a server has accepted this statement.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Relaxed)
    }

    /// Records that a server accepted this statement.
    pub fn confirm(&self) {
        self.confirmed.store(true, Ordering::Relaxed);
    }
}

/// How statements were served, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Parse answered without sending it (the server already had it).
    pub hits: AtomicU64,
    /// Parse sent to the server.
    pub misses: AtomicU64,
    /// Parse injected before a Bind/Describe on a server that lacked it.
    pub reprepares: AtomicU64,
    /// Statements closed on a server to respect `max_prepared_statements`.
    pub evictions: AtomicU64,
}

/// Distinct statements, shared by every session.
#[derive(Debug, Default)]
pub struct Registry {
    buckets: Mutex<HashMap<u64, Vec<Weak<Statement>>>>,
    next_id: AtomicU64,
    inserts: AtomicU64,
    /// Hit/miss/re-prepare/eviction counts.
    pub counters: Counters,
}

fn key_hash(query: &[u8], types: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    query.hash(&mut h);
    types.hash(&mut h);
    h.finish()
}

impl Registry {
    /// The entry for this statement, created if no one holds one; an error
    /// when its Parse would be too long to send.
    pub fn get_or_insert(&self, query: &[u8], types: &[u8]) -> Result<Arc<Statement>, EncodeError> {
        let hash = key_hash(query, types);
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(hash).or_default();
        bucket.retain(|w| w.strong_count() > 0);
        if let Some(s) = bucket
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.query() == query && s.types() == types)
        {
            return Ok(s);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let s = Arc::new(Statement::new(id, query, types)?);
        bucket.push(Arc::downgrade(&s));
        if self.inserts.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            buckets.retain(|_, b| {
                b.retain(|w| w.strong_count() > 0);
                !b.is_empty()
            });
        }
        Ok(s)
    }

    /// Whether some server has accepted this statement (it is answered
    /// without a server), looked up without creating an entry.
    pub fn is_confirmed(&self, query: &[u8], types: &[u8]) -> bool {
        let hash = key_hash(query, types);
        let buckets = self.buckets.lock();
        buckets.get(&hash).is_some_and(|b| {
            b.iter()
                .filter_map(Weak::upgrade)
                .any(|s| s.query() == query && s.types() == types && s.is_confirmed())
        })
    }

    /// Statements alive now (held by some client or server).
    pub fn live(&self) -> usize {
        self.buckets
            .lock()
            .values()
            .flatten()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_statement_same_entry_and_freed_when_unused() {
        let r = Registry::default();
        let a = r.get_or_insert(b"select 1", b"\0\0").unwrap();
        let b = r.get_or_insert(b"select 1", b"\0\0").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = r.get_or_insert(b"select 1", b"\0\x01\0\0\0\x17").unwrap();
        assert_ne!(a.id, c.id);
        assert_eq!(a.query(), b"select 1");
        assert_eq!(c.types(), b"\0\x01\0\0\0\x17");
        drop((a, b));
        let d = r.get_or_insert(b"select 1", b"\0\0").unwrap();
        assert_ne!(d.id, c.id);
        assert_eq!(r.live(), 2);
    }
}
