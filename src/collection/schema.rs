//! The collection's schema and the value codec.
//!
//! One table, keyed by the record key (byte order of its UTF-8, SQLite's
//! `BINARY` collation), `WITHOUT ROWID` so a record is one b-tree entry and a
//! key-range scan reads consecutive pages:
//!
//! ```sql
//! CREATE TABLE records (
//!   key        TEXT PRIMARY KEY NOT NULL,
//!   value      NOT NULL,          -- JSON text (TEXT) or JSONB (BLOB)
//!   version    INTEGER NOT NULL,  -- 1 on insert, +1 on every change
//!   updated_ms INTEGER NOT NULL   -- Unix ms of the last change
//! ) WITHOUT ROWID;
//! ```

use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::options::Encoding;
use crate::error::Error;

/// Schema v1.
const V1: &str = "
CREATE TABLE records (
  key TEXT PRIMARY KEY NOT NULL,
  value NOT NULL,
  version INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The collection's migrations: `MIGRATIONS[i]` takes user_version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[V1];

/// The stored JSON text of a cell: a TEXT cell as is, a BLOB (JSONB)
/// through SQLite's `json()`. Anything else, or a BLOB SQLite cannot
/// convert, is [`Error::Corrupt`] naming the file and the key.
pub(crate) fn cell_text(
    conn: &Connection,
    path: &Path,
    key: &str,
    cell: ValueRef<'_>,
) -> Result<String, Error> {
    match cell {
        ValueRef::Text(t) => String::from_utf8(t.to_vec())
            .map_err(|_| corrupt(path, key, "its value is not UTF-8 text".into())),
        ValueRef::Blob(b) => conn
            .prepare_cached("SELECT json(?1)")
            .and_then(|mut st| st.query_row([b], |r| r.get::<_, String>(0)))
            .map_err(|e| corrupt(path, key, format!("its JSONB value does not convert: {e}"))),
        other => Err(corrupt(
            path,
            key,
            format!(
                "its value is {:?}, not JSON text or JSONB",
                other.data_type()
            ),
        )),
    }
}

/// Decodes stored JSON text as `V`.
///
/// Errors: [`Error::Corrupt`] naming the file and the key.
pub(crate) fn decode<V: DeserializeOwned>(path: &Path, key: &str, text: &str) -> Result<V, Error> {
    serde_json::from_str(text)
        .map_err(|e| corrupt(path, key, format!("its value does not decode: {e}")))
}

/// Encodes `v` as compact JSON text.
///
/// Errors: [`Error::Serialize`].
pub(crate) fn encode<V: Serialize>(path: &Path, v: &V) -> Result<String, Error> {
    serde_json::to_string(v).map_err(|source| Error::Serialize {
        path: path.to_path_buf(),
        source,
    })
}

/// [`Error::Corrupt`] for the record `key` of `path`.
pub(crate) fn corrupt(path: &Path, key: &str, why: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: format!("record {key:?}: {why}; the record was left untouched"),
    }
}

/// The upsert of one record (version 1 when new, +1 otherwise).
pub(crate) fn upsert_sql(enc: Encoding) -> &'static str {
    match enc {
        Encoding::Text => {
            "INSERT INTO records(key, value, version, updated_ms) VALUES (?1, ?2, 1, ?3)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value,
               version = records.version + 1, updated_ms = excluded.updated_ms"
        }
        Encoding::Jsonb => {
            "INSERT INTO records(key, value, version, updated_ms) VALUES (?1, jsonb(?2), 1, ?3)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value,
               version = records.version + 1, updated_ms = excluded.updated_ms"
        }
    }
}
