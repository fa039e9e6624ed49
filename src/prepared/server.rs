//! The statements one server connection has prepared, bounded by
//! `max_prepared_statements` with least-recently-used eviction.

use std::collections::HashMap;
use std::sync::Arc;

use super::Statement;

/// Statements prepared on one server connection.
#[derive(Debug, Default)]
pub struct ServerStatements {
    held: HashMap<u64, (Arc<Statement>, u64)>,
    clock: u64,
    /// Statements that still exist on the server under their name but must
    /// not be used (their plan went stale): Close them before preparing again.
    stale: Vec<Arc<Statement>>,
}

impl ServerStatements {
    /// Whether the server has `stmt`; marks it used.
    pub fn touch(&mut self, stmt: &Statement) -> bool {
        self.clock += 1;
        match self.held.get_mut(&stmt.id) {
            Some(e) => {
                e.1 = self.clock;
                true
            }
            None => false,
        }
    }

    /// Whether the server has `stmt` (without marking it used).
    pub fn has(&self, stmt: &Statement) -> bool {
        self.held.contains_key(&stmt.id)
    }

    /// Records `stmt` as prepared.
    pub fn add(&mut self, stmt: Arc<Statement>) {
        self.clock += 1;
        self.held.insert(stmt.id, (stmt, self.clock));
    }

    /// Forgets `stmt`.
    pub fn remove(&mut self, stmt: &Statement) {
        self.held.remove(&stmt.id);
    }

    /// Every statement that exists on the server under pgmux's name: those
    /// held and those waiting to be closed.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Statement>> {
        self.held.values().map(|(s, _)| s).chain(&self.stale)
    }

    /// Number of statements held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Holds none.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Removes least recently used statements until one more fits under
    /// `max`, and returns them (to be closed on the server).
    pub fn make_room(&mut self, max: usize) -> Vec<Arc<Statement>> {
        let mut evicted = Vec::new();
        while self.len() >= max {
            match self.pop_lru() {
                Some(old) => evicted.push(old),
                None => break,
            }
        }
        evicted
    }

    /// Removes and returns the least recently used statement.
    pub fn pop_lru(&mut self) -> Option<Arc<Statement>> {
        let id = self
            .held
            .iter()
            .min_by_key(|(_, (_, t))| *t)
            .map(|(id, _)| *id)?;
        self.held.remove(&id).map(|(s, _)| s)
    }

    /// Forgets everything (the server ran DISCARD ALL or DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.held.clear();
        self.stale.clear();
    }

    /// Marks `stmt` unusable on this server until it is closed and prepared again.
    pub fn mark_stale(&mut self, stmt: &Arc<Statement>) {
        if self.held.remove(&stmt.id).is_some() {
            self.stale.push(stmt.clone());
        }
    }

    /// Takes `stmt` off the stale list; true if it was there (so the caller
    /// must Close it before preparing it again).
    pub fn take_stale(&mut self, stmt: &Statement) -> bool {
        let before = self.stale.len();
        self.stale.retain(|s| s.id != stmt.id);
        self.stale.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepared::Registry;

    #[test]
    fn evicts_least_recently_used() {
        let r = Registry::default();
        let a = r.get_or_insert(b"a", b"\0\0").unwrap();
        let b = r.get_or_insert(b"b", b"\0\0").unwrap();
        let mut s = ServerStatements::default();
        s.add(a.clone());
        s.add(b.clone());
        assert!(s.touch(&a));
        assert_eq!(s.pop_lru().unwrap().id, b.id);
        assert_eq!(s.len(), 1);
        s.mark_stale(&a);
        assert!(!s.touch(&a));
        assert!(s.take_stale(&a));
        assert!(!s.take_stale(&a));
    }
}
