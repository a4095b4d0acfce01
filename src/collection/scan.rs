//! Streaming scans of a [`Collection`] by key prefix or key range.
//!
//! A scan reads [`PAGE`] records at a time, each page one short read on the
//! read connection (`WHERE key > <last key> ... ORDER BY key LIMIT PAGE`), so
//! its memory does not depend on the collection's size and it never holds a
//! read transaction (writers and WAL checkpoints are not held up). Each page
//! is consistent; the whole scan is not one snapshot: a record changed during
//! the scan is seen with its value at the time its page was read, and a
//! record inserted or removed during the scan may or may not be seen. Every
//! record present for the whole scan is returned exactly once, in key order
//! (bytewise UTF-8, SQLite's `BINARY` collation).

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ops::Bound;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::schema::{cell_text, decode};
use super::{Collection, Core, Record};
use crate::error::{Error, Result};

/// Records per page of a scan.
pub(crate) const PAGE: usize = 256;

/// An iterator over the records of a key range, in key order (feature
/// `sqlite`); see [`Collection::scan_prefix`]. Yields `Err` once — a record
/// that does not decode ([`Error::Corrupt`] naming the file and the key), or
/// a SQLite error — and then ends: a record is never skipped silently.
pub struct Scan<V> {
    core: Arc<Core>,
    lower: Bound<String>,
    upper: Bound<String>,
    buf: VecDeque<Record<V>>,
    done: bool,
    /// The error that ended the scan, yielded after the records before it.
    error: Option<Error>,
    _v: PhantomData<fn() -> V>,
}

impl<V> std::fmt::Debug for Scan<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan")
            .field("path", &self.core.path)
            .field("lower", &self.lower)
            .field("upper", &self.upper)
            .finish()
    }
}

/// The smallest string greater than every string starting with `prefix`
/// (`None`: no such bound, every string from `prefix` on matches). UTF-8
/// byte order is code point order, so the last code point that can be
/// incremented is incremented and the rest dropped.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let next = (c as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl<V: Serialize + DeserializeOwned> Collection<V> {
    /// The records whose key starts with `prefix` (every record for `""`),
    /// in key order, streamed a page at a time (see [`Scan`]).
    pub fn scan_prefix(&self, prefix: &str) -> Scan<V> {
        let upper = match prefix_end(prefix) {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        self.scan_range(Bound::Included(prefix), upper.as_ref().map(|s| s.as_str()))
    }

    /// The records whose key lies between `lower` and `upper`, in key order,
    /// streamed a page at a time (see [`Scan`]).
    pub fn scan_range(&self, lower: Bound<&str>, upper: Bound<&str>) -> Scan<V> {
        Scan {
            core: self.core.clone(),
            lower: lower.map(str::to_string),
            upper: upper.map(str::to_string),
            buf: VecDeque::new(),
            done: false,
            error: None,
            _v: PhantomData,
        }
    }
}

impl<V: DeserializeOwned> Scan<V> {
    /// Reads the next page into `buf`; ends the scan on a short page.
    fn fill(&mut self) -> Result<()> {
        let core = &self.core;
        let mut sql = String::from("SELECT key, value, version, updated_ms FROM records WHERE 1");
        let mut args: Vec<&str> = Vec::new();
        match &self.lower {
            Bound::Included(k) => {
                sql.push_str(" AND key >= ?");
                args.push(k);
            }
            Bound::Excluded(k) => {
                sql.push_str(" AND key > ?");
                args.push(k);
            }
            Bound::Unbounded => {}
        }
        match &self.upper {
            Bound::Included(k) => {
                sql.push_str(" AND key <= ?");
                args.push(k);
            }
            Bound::Excluded(k) => {
                sql.push_str(" AND key < ?");
                args.push(k);
            }
            Bound::Unbounded => {}
        }
        sql.push_str(&format!(" ORDER BY key LIMIT {PAGE}"));
        let conn = core.read_conn();
        let mut st = conn
            .prepare_cached(&sql)
            .map_err(|e| Error::sqlite("scan", &core.path, e))?;
        let mut rows = st
            .query(rusqlite::params_from_iter(args.iter()))
            .map_err(|e| Error::sqlite("scan", &core.path, e))?;
        let mut n = 0;
        let mut last = None;
        while let Some(r) = rows
            .next()
            .map_err(|e| Error::sqlite("scan", &core.path, e))?
        {
            n += 1;
            let key: String = r.get(0).map_err(|e| Error::sqlite("scan", &core.path, e))?;
            let text = cell_text(
                &conn,
                &core.path,
                &key,
                r.get_ref(1)
                    .map_err(|e| Error::sqlite("scan", &core.path, e))?,
            )?;
            let value = decode(&core.path, &key, &text)?;
            let version = r.get(2).map_err(|e| Error::sqlite("scan", &core.path, e))?;
            let updated_ms = r.get(3).map_err(|e| Error::sqlite("scan", &core.path, e))?;
            last = Some(key.clone());
            self.buf.push_back(Record {
                key,
                value,
                version,
                updated_ms,
            });
        }
        if n < PAGE {
            self.done = true;
        }
        if let Some(k) = last {
            self.lower = Bound::Excluded(k);
        }
        Ok(())
    }
}

impl<V: DeserializeOwned> Iterator for Scan<V> {
    type Item = Result<Record<V>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() && !self.done {
            if let Err(e) = self.fill() {
                self.done = true;
                self.error = Some(e);
            }
        }
        match self.buf.pop_front() {
            Some(r) => Some(Ok(r)),
            None => self.error.take().map(Err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
    }
}
