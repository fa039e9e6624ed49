//! One client's statement names and the registry entries they stand for.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::Statement;

/// A client's named statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    names: HashMap<Bytes, Arc<Statement>>,
}

impl ClientStatements {
    /// The statement a name stands for.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.names.get(name)
    }

    /// Number of names held.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No names held.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Maps a name (the caller checked it is free).
    pub fn insert(&mut self, name: Bytes, stmt: Arc<Statement>) {
        self.names.insert(name, stmt);
    }

    /// Unmaps a name, returning what it stood for.
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.names.remove(name)
    }

    /// Unmaps a name only if it still stands for `stmt` (undoing a Parse
    /// that failed must not drop a later, successful one).
    pub fn remove_if(&mut self, name: &[u8], stmt: &Arc<Statement>) {
        if self.names.get(name).is_some_and(|s| Arc::ptr_eq(s, stmt)) {
            self.names.remove(name);
        }
    }

    /// Drops every name.
    pub fn clear(&mut self) {
        self.names.clear();
    }
}
