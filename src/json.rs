//! JSON documents: load → modify → save inside the writer's exclusive section.
//!
//! [`JsonStore<T>`] keeps one JSON document in one file. [`JsonStore::update`]
//! runs the closure inside [`crate::writer::Writer::run`] (queue slot + OS lock),
//! on a freshly loaded document, and saves it with
//! [`crate::atomic::write_atomic`] only if the serialized bytes changed. The
//! closure's error aborts without writing.
//!
//! Versioned envelope: with [`JsonOptions::version`] set to `Some(N)`, the file is
//! `{"version": N, ...fields of T}`; a file with a lower version goes through
//! [`JsonOptions::migrate`], a higher one is refused. A file that does not parse,
//! lacks the version or has an unknown version is [`Error::Corrupt`] — never
//! treated as empty and overwritten (openclaw's JSON stores lost data exactly
//! this way: unparsable JSON read as `{}`). [`JsonStore::quarantine`] moves such a
//! file aside to `<file>.corrupt-<unix ms>` and lets the store start fresh.
//!
//! Formatting: lockstore writes 2-space pretty JSON with a trailing newline (as
//! openclaw did). A no-op update writes nothing when the file is in that
//! canonical form; a file formatted otherwise is rewritten once.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::atomic::{self, Durability};
use crate::error::{Error, Result};
use crate::lock::LockOptions;
use crate::writer::{Exclusive, Writer};

/// Migration hook: `(from_version, document) -> document at the current version`,
/// or a reason why it cannot be migrated (reported as [`Error::Corrupt`]).
pub type Migrate = Arc<
    dyn Fn(u64, serde_json::Value) -> std::result::Result<serde_json::Value, String> + Send + Sync,
>;

/// Options of a [`JsonStore`].
#[derive(Clone, Default)]
pub struct JsonOptions {
    /// How to wait for the lock.
    pub lock: LockOptions,
    /// fsync policy of each save. Default [`Durability::Full`].
    pub durability: Durability,
    /// Envelope version; `None` stores `T` as is (no envelope).
    pub version: Option<u64>,
    /// Upgrades an older envelope version; without it older versions are refused.
    pub migrate: Option<Migrate>,
    /// Write compact JSON instead of 2-space pretty JSON.
    pub compact: bool,
}

impl std::fmt::Debug for JsonOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonOptions")
            .field("lock", &self.lock)
            .field("durability", &self.durability)
            .field("version", &self.version)
            .field("migrate", &self.migrate.is_some())
            .field("compact", &self.compact)
            .finish()
    }
}

/// One JSON document in one file, updated under the writer. `Send + Sync`; share
/// it or open it again (both see one queue per path).
pub struct JsonStore<T> {
    writer: Writer,
    opts: JsonOptions,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for JsonStore<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonStore")
            .field("path", &self.writer.path())
            .field("opts", &self.opts)
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct Peek {
    version: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    version: u64,
    #[serde(flatten)]
    doc: &'a T,
}

/// Outcome of [`JsonStore::load_with_state`].
#[derive(Debug)]
pub struct Loaded<T> {
    /// The document (`T::default()` when the file is missing).
    pub doc: T,
    /// The file's bytes as read (`None` when missing).
    pub raw: Option<Vec<u8>>,
}

impl<T: Serialize + DeserializeOwned + Default> JsonStore<T> {
    /// Opens the store at `path` (created on the first write). Creates the parent
    /// directory with mode 0700.
    ///
    /// Errors: [`Error::InvalidPath`], [`Error::Io`].
    pub fn open(path: impl AsRef<Path>, opts: JsonOptions) -> Result<Self> {
        let writer = Writer::open(path.as_ref(), opts.lock.clone())?;
        Ok(JsonStore {
            writer,
            opts,
            _t: PhantomData,
        })
    }

    /// The canonical path of the store file.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    /// The underlying writer (for exclusive sections that do more than one update).
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// The options.
    pub fn options(&self) -> &JsonOptions {
        &self.opts
    }

    /// Loads the document without taking the lock (atomic saves make that safe: a
    /// reader sees a whole old or a whole new file). Missing file → `T::default()`.
    ///
    /// Errors: [`Error::Corrupt`] (unparsable, missing or unknown version),
    /// [`Error::Symlink`], [`Error::Io`].
    pub fn load(&self) -> Result<T> {
        Ok(self.load_with_state()?.doc)
    }

    /// Like [`JsonStore::load`], also returning the raw bytes.
    pub fn load_with_state(&self) -> Result<Loaded<T>> {
        let path = self.writer.path();
        match atomic::read_file(path)? {
            None => Ok(Loaded {
                doc: T::default(),
                raw: None,
            }),
            Some(raw) => Ok(Loaded {
                doc: self.decode(&raw)?,
                raw: Some(raw),
            }),
        }
    }

    /// Decodes file bytes according to the envelope rules (see module docs).
    ///
    /// Errors: [`Error::Corrupt`].
    pub fn decode(&self, raw: &[u8]) -> Result<T> {
        let path = self.writer.path();
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let Some(want) = self.opts.version else {
            return serde_json::from_slice(raw).map_err(|e| corrupt(format!("invalid JSON: {e}")));
        };
        let peek: Peek = serde_json::from_slice(raw)
            .map_err(|e| corrupt(format!("invalid JSON document: {e}")))?;
        let version = match peek.version {
            None => return Err(corrupt("missing \"version\" field".into())),
            Some(v) => v.as_u64().ok_or_else(|| {
                corrupt(format!("\"version\" is {v}, not a non-negative integer"))
            })?,
        };
        if version == want {
            return serde_json::from_slice(raw)
                .map_err(|e| corrupt(format!("invalid document: {e}")));
        }
        if version > want {
            return Err(corrupt(format!(
                "unknown version {version} (this lockstore {} supports up to {want}); refusing to touch it",
                env!("CARGO_PKG_VERSION")
            )));
        }
        let Some(migrate) = &self.opts.migrate else {
            return Err(corrupt(format!(
                "version {version} is older than {want} and no migration is defined"
            )));
        };
        let value: serde_json::Value =
            serde_json::from_slice(raw).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
        let migrated = migrate(version, value)
            .map_err(|e| corrupt(format!("migration from version {version} failed: {e}")))?;
        serde_json::from_value(migrated)
            .map_err(|e| corrupt(format!("invalid document after migration: {e}")))
    }

    /// Serializes `doc` in the store's canonical form (envelope, formatting).
    ///
    /// Errors: [`Error::Serialize`].
    pub fn encode(&self, doc: &T) -> Result<Vec<u8>> {
        let path = self.writer.path();
        let ser = |e| Error::Serialize {
            path: path.to_path_buf(),
            source: e,
        };
        let mut out = match (self.opts.version, self.opts.compact) {
            (Some(version), false) => serde_json::to_vec_pretty(&Envelope { version, doc }),
            (Some(version), true) => serde_json::to_vec(&Envelope { version, doc }),
            (None, false) => serde_json::to_vec_pretty(doc),
            (None, true) => serde_json::to_vec(doc),
        }
        .map_err(ser)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Load → `f` → save, inside the exclusive section. Writes only if the
    /// serialized document changed; `f`'s error aborts without writing and is
    /// returned. Returns `f`'s value.
    ///
    /// Errors: `f`'s error; [`Error::Corrupt`] (the file is left untouched);
    /// lock errors ([`Error::LockTimeout`], [`Error::Reentrant`], ...); save errors
    /// ([`Error::Io`], e.g. ENOSPC — the old file stays intact).
    pub fn update<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut T) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        self.update_ctx(|doc, _| f(doc))
    }

    /// Like [`JsonStore::update`], also giving the closure the section's context.
    pub fn update_ctx<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut T, &mut Exclusive<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        self.writer.run(|ctx| {
            let Loaded { mut doc, raw } = self.load_with_state()?;
            let out = f(&mut doc, ctx)?;
            // Fencing (sidecar lease mode): refuse to commit over a new holder.
            ctx.verify_still_held()?;
            self.save_if_changed(&doc, raw.as_deref())?;
            Ok(out)
        })
    }

    /// Saves `doc` unless its encoding equals `previous`. Must be called inside
    /// the store's exclusive section. Returns whether it wrote.
    ///
    /// Errors: [`Error::Serialize`], [`Error::Io`].
    pub fn save_if_changed(&self, doc: &T, previous: Option<&[u8]>) -> Result<bool> {
        let bytes = self.encode(doc)?;
        if previous == Some(&bytes[..]) {
            return Ok(false);
        }
        let _span = tracing::debug_span!("commit", path = %self.writer.path().display(), bytes = bytes.len()).entered();
        atomic::write_atomic(self.writer.path(), &bytes, self.opts.durability)?;
        Ok(true)
    }

    /// Moves the current file aside to `<file>.corrupt-<unix ms>` (inside the
    /// exclusive section) so the store starts fresh; logs at error. Returns the
    /// new path, or `None` if there was no file.
    ///
    /// Errors: lock errors, [`Error::Io`].
    pub fn quarantine(&self) -> Result<Option<PathBuf>> {
        self.writer.run(|_| {
            let path = self.writer.path();
            if std::fs::symlink_metadata(path).is_err() {
                return Ok(None);
            }
            let mut aside = path.as_os_str().to_os_string();
            aside.push(format!(".corrupt-{}", crate::proc::now_ms()));
            let aside = PathBuf::from(aside);
            std::fs::rename(path, &aside).map_err(|e| Error::io("quarantine (rename)", path, e))?;
            let (dir, _) = atomic::split(path)?;
            atomic::fsync_dir(dir)?;
            tracing::error!(path = %path.display(), moved_to = %aside.display(), "quarantined corrupt store; starting fresh");
            Ok(Some(aside))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Doc {
        n: u64,
    }

    fn versioned(p: &Path) -> JsonStore<Doc> {
        JsonStore::open(
            p,
            JsonOptions {
                version: Some(2),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn update_saves_with_envelope_and_skips_noop() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.json");
        let s = versioned(&p);
        assert_eq!(s.load().unwrap(), Doc { n: 0 });
        s.update(|d| {
            d.n = 5;
            Ok::<_, Error>(())
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"version": 2, "n": 5}));
        let m1 = std::fs::metadata(&p).unwrap().modified().unwrap();
        let ino1 = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        s.update(|_| Ok::<_, Error>(())).unwrap();
        let ino2 = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        assert_eq!(ino1, ino2, "no-op update must not rewrite");
        assert_eq!(m1, std::fs::metadata(&p).unwrap().modified().unwrap());
    }

    #[test]
    fn closure_error_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.json");
        let s = versioned(&p);
        let r: std::result::Result<(), Error> = s.update(|d| {
            d.n = 9;
            Err(Error::InvalidPath {
                path: "x".into(),
                reason: "test",
            })
        });
        assert!(r.is_err());
        assert!(!p.exists());
    }

    #[test]
    fn migration_hook_upgrades_older_versions() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.json");
        std::fs::write(&p, br#"{"version":1,"count":7}"#).unwrap();
        let s: JsonStore<Doc> = JsonStore::open(
            &p,
            JsonOptions {
                version: Some(2),
                migrate: Some(Arc::new(|from, mut v| {
                    assert_eq!(from, 1);
                    let n = v["count"].clone();
                    v["n"] = n;
                    Ok(v)
                })),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.load().unwrap(), Doc { n: 7 });
    }
}
