//! Reads of a [`Collection`]: on the read connection (the last committed
//! state; never an open batch's rows), through the cache when there is one.

use std::sync::Arc;

use rusqlite::OptionalExtension;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::schema::{cell_text, decode};
use super::{relock, Collection, Record};
use crate::error::{Error, Result};

impl<V: Serialize + DeserializeOwned> Collection<V> {
    /// The record `key` as stored: JSON text, version, updated ms.
    fn read_raw(&self, key: &str) -> Result<Option<(String, i64, i64)>> {
        let core = &self.core;
        let conn = core.read_conn();
        let row = conn
            .prepare_cached("SELECT value, version, updated_ms FROM records WHERE key = ?1")
            .and_then(|mut st| {
                st.query_row([key], |r| {
                    Ok((
                        r.get::<_, rusqlite::types::Value>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| Error::sqlite("read record of", &core.path, e))?;
        match row {
            None => Ok(None),
            Some((cell, version, updated)) => {
                let text = cell_text(&conn, &core.path, key, (&cell).into())?;
                Ok(Some((text, version, updated)))
            }
        }
    }

    /// The record `key`, or `None`: the last committed value (another
    /// process's commit included), through the cache when there is one.
    /// Inside a [`Collection::transaction`] closure this still reads the last
    /// committed value; use [`super::Tx::get`] to see the transaction's own
    /// changes.
    ///
    /// Errors: [`Error::Corrupt`] naming the file and the key when the
    /// stored value does not decode as `V`; [`Error::Sqlite`].
    pub fn get(&self, key: &str) -> Result<Option<V>> {
        let core = &self.core;
        // Inside this collection's transaction closure this thread holds the
        // write connection (the cache's data_version check): read uncached.
        let cache = core
            .cache
            .as_ref()
            .filter(|_| !self.writer.held_by_this_thread());
        let Some(cache) = cache else {
            return match self.read_raw(key)? {
                Some((t, _, _)) => decode(&core.path, key, &t).map(Some),
                None => Ok(None),
            };
        };
        // Coherence: drop the cache if another connection committed.
        let dv = {
            let conn = core.write_conn();
            conn.prepare_cached("PRAGMA data_version")
                .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
                .map_err(|e| Error::sqlite("read data_version of", &core.path, e))?
        };
        let generation = {
            let mut c = relock(cache);
            c.validate(dv);
            match c.get(key) {
                Some(Some(t)) => {
                    drop(c);
                    return decode(&core.path, key, &t).map(Some);
                }
                Some(None) => return Ok(None),
                None => c.generation(),
            }
        };
        let raw = self.read_raw(key)?.map(|(t, _, _)| Arc::<str>::from(t));
        let out = match &raw {
            Some(t) => Some(decode(&core.path, key, t)?),
            None => None,
        };
        relock(cache).fill(generation, key, raw);
        Ok(out)
    }

    /// The record `key` with its version and time of last change, or `None`
    /// (never cached).
    ///
    /// Errors: as [`Collection::get`].
    pub fn get_record(&self, key: &str) -> Result<Option<Record<V>>> {
        match self.read_raw(key)? {
            None => Ok(None),
            Some((t, version, updated_ms)) => Ok(Some(Record {
                key: key.to_string(),
                value: decode(&self.core.path, key, &t)?,
                version,
                updated_ms,
            })),
        }
    }

    /// Number of records (SQLite `count(*)`: reads the key index, decodes
    /// nothing; O(records) pages, no memory per record).
    ///
    /// Errors: [`Error::Sqlite`].
    pub fn len(&self) -> Result<u64> {
        let core = &self.core;
        let conn = core.read_conn();
        conn.prepare_cached("SELECT count(*) FROM records")
            .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(|e| Error::sqlite("count records of", &core.path, e))
    }

    /// Whether the collection has no record.
    ///
    /// Errors: [`Error::Sqlite`].
    pub fn is_empty(&self) -> Result<bool> {
        let core = &self.core;
        let conn = core.read_conn();
        conn.prepare_cached("SELECT NOT EXISTS (SELECT 1 FROM records)")
            .and_then(|mut st| st.query_row([], |r| r.get::<_, bool>(0)))
            .map_err(|e| Error::sqlite("read", &core.path, e))
    }
}
