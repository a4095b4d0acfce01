//! Migration from and to a JSON document: [`Collection::import_json`] and
//! [`Collection::export_json`].

use std::io::Write;
use std::path::Path;

use super::schema::{cell_text, decode, encode};
use super::Collection;
use crate::error::{Error, Result};
use crate::json_doc::{JsonDocument, JsonPointer, Parts};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What [`Collection::import_json`] did (feature `sqlite`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportReport {
    /// Records of the document that were not in the collection: inserted.
    pub inserted: u64,
    /// Records already in the collection with the same value: unchanged.
    pub unchanged: u64,
    /// Records already in the collection with another value (changed since
    /// an earlier import): the collection's value was kept.
    pub kept: u64,
}

fn bad_source(path: &Path, reason: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: format!("{reason}; nothing was imported and the file was left untouched"),
    }
}

/// The `(key, value)` pairs of the document part at `pointer`; each value
/// keeps its text (number digits, member order).
fn entries(
    path: &Path,
    part: JsonDocument,
    pointer: &str,
    id_field: &str,
) -> Result<Vec<(String, JsonDocument)>> {
    let id_ptr = JsonPointer::parse(&format!(
        "/{}",
        id_field.replace('~', "~0").replace('/', "~1")
    ))
    .map_err(|e| bad_source(path, e.to_string()))?;
    match part.into_parts() {
        Parts::Object(m) => Ok(m),
        Parts::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let id = item.get(&id_ptr).ok().flatten();
                let text = id.as_ref().and_then(|d| d.scalar_text());
                let id = match text.map(|t| (t, t.as_bytes().first())) {
                    Some((t, Some(b'"'))) => serde_json::from_str::<String>(t).ok(),
                    Some((t, Some(b'-' | b'0'..=b'9'))) => Some(t.to_string()),
                    _ => None,
                };
                match id {
                    Some(id) => Ok((id, item)),
                    None => Err(bad_source(
                        path,
                        format!("element {i} of the array at JSON Pointer {pointer:?} has no string or number field {id_field:?}"),
                    )),
                }
            })
            .collect(),
        Parts::Scalar(kind) => Err(bad_source(
            path,
            format!(
                "the value at JSON Pointer {pointer:?} is {kind}, not an object keyed by id or an array of objects"
            ),
        )),
    }
}

impl<V: Serialize + DeserializeOwned> Collection<V> {
    /// Imports the records of a JSON document: the value at the JSON Pointer
    /// `pointer` (RFC 6901; `""` is the whole document) of `json_file` is
    /// either an object keyed by id (each member one record) or an array of
    /// objects whose field `id_field` (a string, or a number taken in its
    /// decimal form) is the key. Every record must decode as `V`.
    ///
    /// Idempotent and non-destructive: one transaction inserts the records
    /// that are missing; a record already present is left as it is
    /// ([`ImportReport::unchanged`] when equal, [`ImportReport::kept`] when
    /// the collection's value differs — it may have been updated since an
    /// earlier import). `json_file` is only read, never changed or deleted.
    /// The document is read whole into memory (once).
    ///
    /// Errors: [`Error::Io`] reading `json_file`; [`Error::Corrupt`] naming
    /// `json_file` when it is not JSON, has nothing at `pointer`, has the
    /// wrong shape there, a record without the id, or a record that does not
    /// decode as `V` (named by its key) — nothing is imported then; the
    /// write errors of [`Collection::insert`].
    pub fn import_json(
        &self,
        json_file: impl AsRef<Path>,
        pointer: &str,
        id_field: &str,
    ) -> Result<ImportReport> {
        let src = json_file.as_ref();
        let text = std::fs::read_to_string(src).map_err(|e| Error::io("read", src, e))?;
        let doc =
            JsonDocument::parse(&text).map_err(|e| bad_source(src, format!("not JSON: {e}")))?;
        drop(text);
        let ptr = JsonPointer::parse(pointer).map_err(|e| bad_source(src, e.to_string()))?;
        let part = doc
            .get(&ptr)
            .map_err(|e| bad_source(src, e.to_string()))?
            .ok_or_else(|| bad_source(src, format!("no value at JSON Pointer {pointer:?}")))?;
        drop(doc);
        let mut records = Vec::new();
        for (key, value) in entries(src, part, pointer, id_field)? {
            // Decoded from the record's own text: a `JsonDocument` record
            // keeps its digits and member order.
            let v: V = serde_json::from_str(&value.to_string())
                .map_err(|e| bad_source(src, format!("record {key:?} does not decode: {e}")))?;
            let text = encode(self.path(), &v)?;
            records.push((key, text));
        }
        let report = self.write(|tx| {
            let mut r = ImportReport::default();
            for (key, text) in &records {
                match tx.raw(key)? {
                    None => {
                        tx.put_raw(key, text.clone())?;
                        r.inserted += 1;
                    }
                    Some(old) if &old == text => r.unchanged += 1,
                    Some(_) => r.kept += 1,
                }
            }
            Ok::<_, Error>(r)
        })?;
        tracing::info!(path = %self.path().display(), source = %src.display(), inserted = report.inserted, unchanged = report.unchanged, kept = report.kept, "imported JSON document");
        Ok(report)
    }

    /// Writes every record as one JSON document to `out`, atomically
    /// ([`crate::write_atomic`] with the collection's durability: temp file,
    /// fsync, rename, directory fsync): an object keyed by record key, in key
    /// order, one record per line. The records come from one read
    /// transaction (a consistent snapshot); each is checked to decode as `V`
    /// and written as stored. Returns the number of records. The document is
    /// built in memory before the save.
    ///
    /// Errors: [`Error::Corrupt`] naming the collection's file and the key
    /// of a record that does not decode (nothing is written); [`Error::Sqlite`];
    /// the errors of [`crate::write_atomic`] naming `out`.
    pub fn export_json(&self, out: impl AsRef<Path>) -> Result<u64> {
        let out = out.as_ref();
        let (bytes, n) = self.export_bytes()?;
        crate::atomic::write_atomic(out, &bytes, self.opts.sqlite.durability)?;
        Ok(n)
    }

    /// The document [`Collection::export_json`] writes, as a string (for a
    /// pipe or a caller that stores it elsewhere).
    ///
    /// Errors: as [`Collection::export_json`], without the save.
    pub fn export_json_string(&self) -> Result<String> {
        let (bytes, _) = self.export_bytes()?;
        // Built from `String`s and serde_json output only.
        String::from_utf8(bytes).map_err(|e| Error::Corrupt {
            path: self.core.path.clone(),
            reason: format!("export produced invalid UTF-8: {e}"),
        })
    }

    /// The document of [`Collection::export_json`] and its record count.
    fn export_bytes(&self) -> Result<(Vec<u8>, u64)> {
        let core = &self.core;
        let path = &core.path;
        let sql = |e| Error::sqlite("export", path, e);
        let conn = core.read_conn();
        let tx = conn.unchecked_transaction().map_err(sql)?;
        let mut buf: Vec<u8> = Vec::new();
        let mut n = 0u64;
        {
            let mut st = tx
                .prepare("SELECT key, value FROM records ORDER BY key")
                .map_err(sql)?;
            let mut rows = st.query([]).map_err(sql)?;
            buf.push(b'{');
            while let Some(r) = rows.next().map_err(sql)? {
                let key: String = r.get(0).map_err(sql)?;
                let text = cell_text(&tx, path, &key, r.get_ref(1).map_err(sql)?)?;
                let _: V = decode(path, &key, &text)?;
                buf.extend_from_slice(if n == 0 { b"\n  " } else { b",\n  " });
                serde_json::to_writer(&mut buf, &key).map_err(|source| Error::Serialize {
                    path: path.clone(),
                    source,
                })?;
                buf.extend_from_slice(b": ");
                buf.extend_from_slice(text.as_bytes());
                n += 1;
            }
            let _ = buf.write_all(if n == 0 { b"}\n" } else { b"\n}\n" });
        }
        tx.commit().map_err(sql)?;
        Ok((buf, n))
    }
}
