//! The optional in-memory cache of a [`super::Collection`]
//! ([`super::CollectionOptions::cache`]) and its cross-process coherence.
//!
//! The cache maps a key to its stored JSON text (or to "absent"). It is valid
//! for one `PRAGMA data_version` of the collection's *write* connection
//! (SQLite docs, "PRAGMA data_version": the value changes when another
//! connection commits, never for the connection's own commits): before every
//! cached read the version is read again and, if it changed (another process
//! or another handle committed), the whole cache is dropped. This handle's
//! own commits are applied to the cache when the group-commit batch commits
//! ([`super::batch`]). A miss is filled from the read connection only if no
//! commit of this handle was applied meanwhile (`generation`), so a slow
//! reader never puts back a value older than this handle's last commit.

use std::collections::HashMap;
use std::sync::Arc;

/// One change of a committed transaction, applied to the cache after COMMIT.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// The record now has this JSON text.
    Put(String, Arc<str>),
    /// The record was removed.
    Remove(String),
}

/// The cache proper (behind the collection's cache mutex).
#[derive(Debug)]
pub(crate) struct Cache {
    cap: usize,
    /// The write connection's `data_version` the entries are valid for.
    data_version: Option<i64>,
    /// Bumped by every applied commit of this handle.
    generation: u64,
    map: HashMap<String, Option<Arc<str>>>,
}

impl Cache {
    pub(crate) fn new(cap: usize) -> Self {
        Cache {
            cap,
            data_version: None,
            generation: 0,
            map: HashMap::new(),
        }
    }

    /// Drops every entry unless they are valid for `dv`.
    pub(crate) fn validate(&mut self, dv: i64) {
        if self.data_version != Some(dv) {
            if !self.map.is_empty() {
                tracing::debug!(
                    entries = self.map.len(),
                    "collection cache dropped: another connection committed"
                );
            }
            self.map.clear();
            self.data_version = Some(dv);
            self.generation += 1;
        }
    }

    /// The cached entry: `Some(None)` is a cached absence.
    pub(crate) fn get(&self, key: &str) -> Option<Option<Arc<str>>> {
        self.map.get(key).cloned()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Fills a miss read at `generation` (ignored if a commit came in between).
    pub(crate) fn fill(&mut self, generation: u64, key: &str, text: Option<Arc<str>>) {
        if generation == self.generation {
            self.insert(key.to_string(), text);
        }
    }

    fn insert(&mut self, key: String, text: Option<Arc<str>>) {
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            self.map.clear();
        }
        if self.cap > 0 {
            self.map.insert(key, text);
        }
    }

    /// Applies a committed transaction's changes.
    pub(crate) fn apply(&mut self, changes: Vec<Change>) {
        self.generation += 1;
        for c in changes {
            match c {
                Change::Put(k, t) => self.insert(k, Some(t)),
                Change::Remove(k) => self.insert(k, None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A miss read before a commit of this handle was applied is not put
    /// back (it could be older than the commit); a drop on another
    /// connection's commit empties the cache.
    #[test]
    fn stale_fill_is_ignored_and_foreign_commit_drops_all() {
        let mut c = Cache::new(10);
        c.validate(1);
        let g = c.generation();
        c.apply(vec![Change::Put("k".into(), Arc::from("2"))]);
        c.fill(g, "k", Some(Arc::from("1")));
        assert_eq!(c.get("k"), Some(Some(Arc::from("2"))));
        let g = c.generation();
        c.fill(g, "m", None);
        assert_eq!(c.get("m"), Some(None));
        c.validate(1);
        assert!(c.get("k").is_some());
        c.validate(2);
        assert_eq!((c.get("k"), c.get("m")), (None, None));
    }
}
