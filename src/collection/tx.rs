//! [`Tx`]: the changes of one [`super::Collection::transaction`] closure, on
//! the collection's write connection inside its `BEGIN IMMEDIATE`
//! transaction (and, in a group-commit batch, inside this closure's
//! `SAVEPOINT`).

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::cache::Change;
use super::options::Encoding;
use super::schema::{cell_text, decode, encode, upsert_sql};
use crate::error::Error;
use crate::group::duplicate;

/// A transaction on a [`super::Collection`] (feature `sqlite`): reads see
/// this transaction's own earlier changes; every change is committed with the
/// others or not at all. Obtained only inside
/// [`super::Collection::transaction`].
pub struct Tx<'a, V> {
    pub(super) conn: &'a Connection,
    pub(super) path: &'a Path,
    pub(super) encoding: Encoding,
    pub(super) now_ms: i64,
    /// Committed-to-be changes, for the cache.
    pub(super) changes: Vec<Change>,
    /// The last SQLite error of an operation (SQLite may have rolled the
    /// whole transaction back because of it).
    pub(super) last_error: Option<Error>,
    pub(super) _v: PhantomData<fn() -> V>,
}

impl<V> std::fmt::Debug for Tx<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").field("path", &self.path).finish()
    }
}

impl<V: Serialize + DeserializeOwned> Tx<'_, V> {
    fn sql(&mut self, op: &'static str, e: rusqlite::Error) -> Error {
        let e = Error::sqlite(op, self.path, e);
        self.last_error = Some(duplicate(&e));
        e
    }

    /// The stored JSON text of `key` in this transaction.
    pub(super) fn raw(&mut self, key: &str) -> Result<Option<String>, Error> {
        let conn = self.conn;
        let r = conn
            .prepare_cached("SELECT value FROM records WHERE key = ?1")
            .and_then(|mut st| {
                st.query_row([key], |r| r.get::<_, rusqlite::types::Value>(0))
                    .optional()
            });
        match r {
            Ok(None) => Ok(None),
            Ok(Some(v)) => cell_text(conn, self.path, key, (&v).into()).map(Some),
            Err(e) => Err(self.sql("read record of", e)),
        }
    }

    /// Writes the JSON text `text` for `key` (version +1, or 1 when new).
    pub(super) fn put_raw(&mut self, key: &str, text: String) -> Result<(), Error> {
        let (sql, now) = (upsert_sql(self.encoding), self.now_ms);
        let r = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut st| st.execute(rusqlite::params![key, text, now]));
        if let Err(e) = r {
            return Err(self.sql("write record to", e));
        }
        self.changes
            .push(Change::Put(key.to_string(), Arc::from(text)));
        Ok(())
    }

    /// The record `key`, or `None`.
    ///
    /// Errors: [`Error::Corrupt`] naming the file and the key when the stored
    /// value does not decode as `V`; [`Error::Sqlite`].
    pub fn get(&mut self, key: &str) -> Result<Option<V>, Error> {
        match self.raw(key)? {
            Some(t) => decode(self.path, key, &t).map(Some),
            None => Ok(None),
        }
    }

    /// Inserts or replaces the record `key` (its version becomes 1 when new,
    /// +1 otherwise). Replacing does not read the old value, so this (and
    /// [`Tx::remove`]) is how a record that no longer decodes is repaired.
    ///
    /// Errors: [`Error::Serialize`], [`Error::Sqlite`].
    pub fn insert(&mut self, key: &str, value: &V) -> Result<(), Error> {
        let text = encode(self.path, value)?;
        self.put_raw(key, text)
    }

    /// Removes the record `key`; returns whether it existed.
    ///
    /// Errors: [`Error::Sqlite`].
    pub fn remove(&mut self, key: &str) -> Result<bool, Error> {
        let r = self
            .conn
            .prepare_cached("DELETE FROM records WHERE key = ?1")
            .and_then(|mut st| st.execute([key]));
        match r {
            Ok(n) => {
                self.changes.push(Change::Remove(key.to_string()));
                Ok(n > 0)
            }
            Err(e) => Err(self.sql("remove record from", e)),
        }
    }

    /// Load → `f` → save of the record `key`: `f` gets `Some(&mut value)`
    /// (or `None` when there is no such record; nothing is written then). The
    /// record is written only if its encoding changed.
    ///
    /// Errors: [`Error::Corrupt`] (the stored value does not decode; nothing
    /// written), [`Error::Serialize`], [`Error::Sqlite`].
    pub fn update<R>(
        &mut self,
        key: &str,
        f: impl FnOnce(Option<&mut V>) -> R,
    ) -> Result<R, Error> {
        match self.raw(key)? {
            None => Ok(f(None)),
            Some(old) => {
                let mut v: V = decode(self.path, key, &old)?;
                let out = f(Some(&mut v));
                let new = encode(self.path, &v)?;
                if new != old {
                    self.put_raw(key, new)?;
                }
                Ok(out)
            }
        }
    }
}
