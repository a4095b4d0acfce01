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
//! this way: unparsable JSON read as `{}`). [`JsonStore::quarantine_corrupt`]
//! moves such a file aside to `<file>.corrupt-<unix ms>` (`-1`, `-2`, ...
//! appended when the name is taken; nothing is ever replaced) and lets the
//! store start fresh.
//!
//! Depth: a document nests at most [`crate::JsonDocument::MAX_DEPTH`] arrays/objects
//! (what `serde_json`'s reader reads); a save of a deeper one fails with
//! [`Error::Serialize`] and writes nothing. For untyped documents that keep
//! their numbers' text and key order, use [`crate::JsonDocument`] as `T`.
//!
//! Formatting: lockstore writes 2-space pretty JSON with a trailing newline (as
//! openclaw did). A no-op update writes nothing when the file is in that
//! canonical form; a file formatted otherwise is rewritten once.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::atomic::{self, Durability};
use crate::error::{Error, Result};
use crate::group::{Batch, Group};
use crate::lock::LockOptions;
use crate::writer::{Exclusive, Writer};

use crate::group::GroupCommitStats;

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
    /// Group commit of queued updates (on by default).
    pub group_commit: GroupCommit,
}

/// Group commit: when several threads of one process have updates queued on one
/// store (one [`JsonStore`] handle, shared by reference or `Arc`; handles
/// opened separately on the same path share the FIFO queue, and each closes
/// the other's open batch before starting its own), the updates run one after another (strict FIFO, each on its own thread,
/// each seeing its predecessor's result) on one loaded document, which is saved
/// and fsynced once for the whole batch — the way databases amortize log flushes.
/// Every caller returns only after the save containing its change is durable. A
/// closure's error or panic rolls back only its own change (its document is
/// restored to what it was given) and reaches only its caller.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommit {
    /// Batch queued updates. Default true; false gives one save per update.
    pub enabled: bool,
    /// Most updates in one batch (one save). Default 64.
    pub max_batch: usize,
    /// How long the last update of a batch waits for one more writer to enter
    /// the queue before saving. Default 0 (batch only writers already queued).
    pub max_wait: Duration,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            enabled: true,
            max_batch: 64,
            max_wait: Duration::ZERO,
        }
    }
}

impl std::fmt::Debug for JsonOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonOptions")
            .field("lock", &self.lock)
            .field("durability", &self.durability)
            .field("version", &self.version)
            .field("migrate", &self.migrate.is_some())
            .field("compact", &self.compact)
            .field("group_commit", &self.group_commit)
            .finish()
    }
}

/// One JSON document in one file, updated under the writer. `Send + Sync`; share
/// it or open it again (both see one queue per path).
pub struct JsonStore<T> {
    writer: Writer,
    opts: JsonOptions,
    group: Arc<Group<JsonBatch<T>, ()>>,
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

/// Outcome of [`JsonStore::load_with_state`].
#[derive(Debug)]
pub struct Loaded<T> {
    /// The document (`T::default()` when the file is missing).
    pub doc: T,
    /// The file's bytes as read (`None` when missing).
    pub raw: Option<Vec<u8>>,
}

impl<T: Serialize + DeserializeOwned + Default + Clone + Send + 'static> JsonStore<T> {
    /// Opens the store at `path` (created on the first write). Creates the parent
    /// directory with mode 0700.
    ///
    /// Errors: [`Error::InvalidPath`], [`Error::Io`].
    pub fn open(path: impl AsRef<Path>, opts: JsonOptions) -> Result<Self> {
        let writer = Writer::open(path.as_ref(), opts.lock.clone())?;
        Ok(JsonStore {
            writer,
            opts,
            group: Group::new(),
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

    /// Group-commit statistics of this handle: batches saved and the updates
    /// they held (see [`GroupCommit`]).
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.group.stats()
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
    pub(crate) fn load_with_state(&self) -> Result<Loaded<T>> {
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
    pub(crate) fn decode(&self, raw: &[u8]) -> Result<T> {
        decode_doc(&self.opts, self.writer.path(), raw)
    }

    /// Load → `f` → save, inside the exclusive section: the infallible form.
    /// Writes only if the serialized document changed; returns `f`'s value
    /// once the save that contains the change is durable.
    ///
    /// ```
    /// # #[derive(Default, Clone, serde::Serialize, serde::Deserialize)] struct D { n: u64 }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: lockstore::JsonStore<D> =
    /// #     lockstore::JsonStore::open(dir.path().join("d.json"), Default::default()).unwrap();
    /// let n = store.update(|d| { d.n += 1; d.n })?;
    /// # assert_eq!(n, 1);
    /// # Ok::<_, lockstore::Error>(())
    /// ```
    ///
    /// Errors: [`Error::Corrupt`] (the file is left untouched); lock errors
    /// ([`Error::LockTimeout`], [`Error::Reentrant`], ...); save errors
    /// ([`Error::Io`], e.g. ENOSPC — the old file stays intact).
    pub fn update<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut T) -> R,
    {
        self.update_ctx(|doc, _| Ok::<_, Error>(f(doc)))
    }

    /// Load → `f` → save, for a fallible closure with the caller's own error
    /// type: `f`'s error aborts without writing (in a group-commit batch it
    /// rolls back only this closure's change) and is returned as is.
    ///
    /// Errors: `f`'s error, and [`JsonStore::update`]'s converted with
    /// `E: From<lockstore::Error>`.
    pub fn try_update<R, E, F>(&self, f: F) -> std::result::Result<R, E>
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
        if self.opts.group_commit.enabled && self.writer.supports_group_commit() {
            return self.update_grouped(f);
        }
        self.writer.run(|ctx| self.section(ctx, f))
    }

    /// [`JsonStore::update_ctx`] for a caller that already holds the store's
    /// queue slot (an async writer that won it on a task and moved it to this
    /// blocking thread, see [`crate::tokio`]): group commit through the same
    /// engine ([`Group::run_slotted`]), or one section
    /// ([`Writer::run_slotted`]). `start` and `deadline` are those of the
    /// queue wait.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn update_slotted<S, R, E, F>(
        &self,
        slot: S,
        start: std::time::Instant,
        deadline: std::time::Instant,
        span: &tracing::Span,
        f: F,
    ) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut T, &mut Exclusive<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        if self.opts.group_commit.enabled && self.writer.supports_group_commit() {
            let (v, ()) = self.group.run_slotted(
                &self.writer,
                &self.opts.group_commit,
                slot,
                start,
                deadline,
                span,
                || self.begin_batch(),
                |b, _, ctx| f(&mut b.doc, ctx),
            )?;
            return Ok(v);
        }
        self.writer
            .run_slotted(slot, start, deadline, span, |ctx| self.section(ctx, f))
    }

    /// One ungrouped section's body: load → `f` → fencing check → save.
    fn section<R, E, F>(&self, ctx: &mut Exclusive<'_>, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut T, &mut Exclusive<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        let Loaded { mut doc, raw } = self.load_with_state()?;
        let out = f(&mut doc, ctx)?;
        // Fencing (sidecar lease mode): refuse to commit over a new holder.
        ctx.verify_still_held()?;
        self.save_if_changed(&doc, raw.as_deref())?;
        Ok(out)
    }

    /// Loads the document that opens a group-commit batch.
    fn begin_batch<E: From<Error>>(&self) -> std::result::Result<JsonBatch<T>, E> {
        let Loaded { doc, raw } = self.load_with_state()?;
        Ok(JsonBatch {
            doc,
            raw,
            opts: self.opts.clone(),
        })
    }

    /// Saves `doc` unless its encoding equals `previous`. Must be called inside
    /// the store's exclusive section. Returns whether it wrote.
    ///
    /// Errors: [`Error::Serialize`], [`Error::Io`].
    pub(crate) fn save_if_changed(&self, doc: &T, previous: Option<&[u8]>) -> Result<bool> {
        save_doc(&self.opts, self.writer.path(), doc, previous)
    }

    /// The group-commit path of [`JsonStore::update_ctx`] (see [`GroupCommit`]
    /// and [`crate::group`]).
    fn update_grouped<R, E, F>(&self, f: F) -> std::result::Result<R, E>
    where
        F: FnOnce(&mut T, &mut Exclusive<'_>) -> std::result::Result<R, E>,
        E: From<Error>,
    {
        let (v, ()) = self.group.run(
            &self.writer,
            &self.opts.group_commit,
            || self.begin_batch(),
            |b, _, ctx| f(&mut b.doc, ctx),
        )?;
        Ok(v)
    }

    /// Moves the current file aside to `<file>.corrupt-<unix ms>` (inside the
    /// exclusive section) so the store starts fresh, whether or not it is
    /// corrupt; logs at warn. The name is taken without replacing anything:
    /// when it exists (several quarantines in one millisecond, or a clock
    /// stepped back), `-1`, `-2`, ... is appended. Returns the new path, or
    /// `None` if there was no file. See [`JsonStore::quarantine_corrupt`] for
    /// the form that moves only a corrupt file.
    ///
    /// Errors: lock errors, [`Error::Io`].
    pub fn quarantine(&self) -> Result<Option<PathBuf>> {
        self.writer.run(|_| {
            let path = self.writer.path();
            if std::fs::symlink_metadata(path).is_err() {
                return Ok(None);
            }
            self.move_aside(path, "moved aside on request").map(Some)
        })
    }

    /// Moves the file aside like [`JsonStore::quarantine`], but only if it
    /// is corrupt (does not decode with this store's options); decides and
    /// moves inside one exclusive section.
    ///
    /// Errors: lock errors, [`Error::Symlink`], [`Error::Io`].
    pub fn quarantine_corrupt(&self) -> Result<QuarantineOutcome> {
        self.writer.run(|_| {
            let path = self.writer.path();
            let reason = match self.load_with_state() {
                Ok(Loaded { raw: None, .. }) => return Ok(QuarantineOutcome::NoFile),
                Ok(Loaded { raw: Some(_), .. }) => return Ok(QuarantineOutcome::NotCorrupt),
                Err(Error::Corrupt { reason, .. }) => reason,
                Err(e) => return Err(e),
            };
            let to = self.move_aside(path, &reason)?;
            Ok(QuarantineOutcome::Moved { to, reason })
        })
    }

    /// Renames `path` to a fresh `<path>.corrupt-<unix ms>[-n]`, fsyncs the
    /// directory and logs at warn.
    fn move_aside(&self, path: &Path, reason: &str) -> Result<PathBuf> {
        let aside = rename_unique(path, &format!(".corrupt-{}", crate::proc::now_ms()), "")?;
        let (dir, _) = atomic::split(path)?;
        atomic::fsync_dir(dir)?;
        tracing::warn!(path = %path.display(), moved_to = %aside.display(), reason, "quarantined store; starting fresh");
        Ok(aside)
    }
}

/// Outcome of [`JsonStore::quarantine_corrupt`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuarantineOutcome {
    /// The corrupt file was moved to `to`.
    Moved {
        /// `<file>.corrupt-<unix ms>` (with `-n` appended if that was taken).
        to: PathBuf,
        /// Why the file does not decode.
        reason: String,
    },
    /// There was no file.
    NoFile,
    /// The file decodes; nothing was moved.
    NotCorrupt,
}

/// The first of `<path><tag><suffix>`, `<path><tag>-1<suffix>`, ... that does
/// not exist: `try_at` is called with each candidate until it does not fail
/// with `AlreadyExists` (it must create the name exclusively).
pub(crate) fn unique_name<R>(
    path: &Path,
    tag: &str,
    suffix: &str,
    mut try_at: impl FnMut(&Path) -> std::io::Result<R>,
) -> Result<(PathBuf, R)> {
    for n in 0u32.. {
        let mut name = path.as_os_str().to_os_string();
        match n {
            0 => name.push(format!("{tag}{suffix}")),
            n => name.push(format!("{tag}-{n}{suffix}")),
        }
        let candidate = PathBuf::from(name);
        match try_at(&candidate) {
            Ok(r) => return Ok((candidate, r)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100_000 => continue,
            Err(e) => return Err(Error::io("move aside (exclusive create)", &candidate, e)),
        }
    }
    unreachable!("the loop returns")
}

/// Renames `path` to a fresh name beside it (see [`unique_name`]) without
/// replacing anything: `renameat2(RENAME_NOREPLACE)` where the kernel and file
/// system have it, else a hard link (fails if the name exists) and an unlink.
pub(crate) fn rename_unique(path: &Path, tag: &str, suffix: &str) -> Result<PathBuf> {
    let (to, ()) = unique_name(path, tag, suffix, |to| rename_noreplace(path, to))?;
    Ok(to)
}

fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

fn decode_doc<T: DeserializeOwned>(opts: &JsonOptions, path: &Path, raw: &[u8]) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let Some(want) = opts.version else {
        return serde_json::from_slice(raw).map_err(|e| corrupt(format!("invalid JSON: {e}")));
    };
    // A versioned envelope is an object. (serde's derived struct visitor would
    // also accept an array: `[1]` would pass for version 1.)
    if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let what = match serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
            Ok(_) => "top level is not a JSON object".to_string(),
            Err(e) => format!("invalid JSON document: {e}"),
        };
        return Err(corrupt(what));
    }
    let peek: Peek =
        serde_json::from_slice(raw).map_err(|e| corrupt(format!("invalid JSON document: {e}")))?;
    let version = match peek.version {
        None => return Err(corrupt("missing \"version\" field".into())),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| corrupt(format!("\"version\" is {v}, not a non-negative integer")))?,
    };
    if version == want {
        return serde_json::from_slice(raw).map_err(|e| corrupt(format!("invalid document: {e}")));
    }
    if version > want {
        return Err(corrupt(format!(
            "unknown version {version} (this lockstore {} supports up to {want}); refusing to touch it",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let Some(migrate) = &opts.migrate else {
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

fn encode_doc<T: Serialize>(opts: &JsonOptions, path: &Path, doc: &T) -> Result<Vec<u8>> {
    let ser = |e| Error::Serialize {
        path: path.to_path_buf(),
        source: e,
    };
    let mut out = match opts.version {
        // The envelope is built on the document's own JSON text (values keep
        // their text), so a document that carries a "version" member (a
        // `Value` or `JsonDocument` read from an envelope) does not write it
        // twice next to the envelope's.
        Some(version) => {
            let inner = serde_json::to_string(doc).map_err(ser)?;
            let env = crate::json_doc::envelope(&inner, version)
                .map_err(|e| ser(serde::ser::Error::custom(e)))?;
            if opts.compact {
                serde_json::to_vec(&env)
            } else {
                serde_json::to_vec_pretty(&env)
            }
        }
        None if opts.compact => serde_json::to_vec(doc),
        None => serde_json::to_vec_pretty(doc),
    }
    .map_err(ser)?;
    out.push(b'\n');
    Ok(out)
}

fn save_doc<T: Serialize>(
    opts: &JsonOptions,
    path: &Path,
    doc: &T,
    previous: Option<&[u8]>,
) -> Result<bool> {
    let bytes = encode_doc(opts, path, doc)?;
    // What is written must read back: serde_json's reader stops at 128 levels.
    let depth = crate::json_doc::nesting_depth(&bytes);
    if depth > crate::json_doc::MAX_DEPTH {
        return Err(Error::Serialize {
            path: path.to_path_buf(),
            source: serde::ser::Error::custom(format!(
                "the document nests {depth} arrays/objects deep; lockstore reads (and so writes) at most {}",
                crate::json_doc::MAX_DEPTH
            )),
        });
    }
    if previous == Some(&bytes[..]) {
        return Ok(false);
    }
    let _span =
        tracing::debug_span!("commit", path = %path.display(), bytes = bytes.len()).entered();
    atomic::write_atomic(path, &bytes, opts.durability)?;
    Ok(true)
}

/// An open group-commit batch of a JSON store: the unsaved document (the
/// engine holds the OS lock).
struct JsonBatch<T> {
    doc: T,
    /// The file's bytes when the batch began.
    raw: Option<Vec<u8>>,
    opts: JsonOptions,
}

impl<T: Serialize + DeserializeOwned + Default + Clone + Send + 'static> Batch for JsonBatch<T> {
    /// The document before the member ran; `None` for the batch's first
    /// member, whose undo re-decodes the file's bytes.
    type Undo = Option<T>;
    type Delivery = ();

    fn savepoint(&mut self, index: usize) -> Result<Option<T>> {
        Ok((index > 0).then(|| self.doc.clone()))
    }

    fn keep(&mut self, _: Option<T>, _: usize) {}

    fn undo(&mut self, undo: Option<T>, _: usize) {
        self.doc = match (undo, &self.raw) {
            (Some(before), _) => before,
            (None, None) => T::default(),
            // These bytes decoded when the batch began; decoding them again
            // cannot fail unless memory is corrupt.
            (None, Some(raw)) => decode_doc(&self.opts, Path::new(""), raw).unwrap_or_else(|e| {
                tracing::error!(error = %e, "re-decoding a loaded document failed");
                T::default()
            }),
        };
    }

    fn close(self, w: &Writer, committed: usize) -> Result<BTreeMap<usize, ()>> {
        // No successful update: nothing to save (an erroring first closure must
        // not create the file).
        if committed > 0 {
            save_doc(&self.opts, w.path(), &self.doc, self.raw.as_deref())?;
        }
        Ok(BTreeMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
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
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"version": 2, "n": 5}));
        let m1 = std::fs::metadata(&p).unwrap().modified().unwrap();
        let ino1 = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        s.try_update(|_| Ok::<_, Error>(())).unwrap();
        let ino2 = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        assert_eq!(ino1, ino2, "no-op update must not rewrite");
        assert_eq!(m1, std::fs::metadata(&p).unwrap().modified().unwrap());
    }

    #[test]
    fn closure_error_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.json");
        let s = versioned(&p);
        let r: std::result::Result<(), Error> = s.try_update(|d| {
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
    fn a_versioned_store_refuses_a_top_level_array() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.json");
        let s = JsonStore::<Doc>::open(
            &p,
            JsonOptions {
                version: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        for raw in [&b"[1]"[..], b" []", b"[1, {\"n\": 2}]"] {
            std::fs::write(&p, raw).unwrap();
            let e = s.load().unwrap_err();
            assert!(
                e.to_string().contains("top level is not a JSON object"),
                "{e}"
            );
            assert!(s.update(|d| d.n += 1).unwrap_err().is_corrupt());
            assert_eq!(std::fs::read(&p).unwrap(), raw, "left untouched");
        }
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

    fn plain(p: &Path, group: bool) -> JsonStore<Doc> {
        JsonStore::open(
            p,
            JsonOptions {
                durability: Durability::Process,
                group_commit: GroupCommit {
                    enabled: group,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn grouped_threads_lose_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.json");
        let s = plain(&p, true);
        std::thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    for _ in 0..50 {
                        s.update(|d| {
                            d.n += 1;
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(plain(&p, false).load().unwrap().n, 400);
        assert!(atomic::temp_files(&p).is_empty());
    }

    /// Waits (yielding) until `n` writers are in the store's queue.
    fn until_queued(s: &JsonStore<Doc>, n: usize) {
        while s.writer().entry().fifo.len() < n {
            std::thread::yield_now();
        }
    }

    #[test]
    fn error_and_panic_inside_a_batch_roll_back_only_their_own_change() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.json");
        let s = plain(&p, true);
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let seen = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            // A holds the head of the queue until B, C, D are queued behind it.
            let s = &s;
            let a = sc.spawn(move || {
                s.try_update(|d| {
                    go_rx.recv().unwrap();
                    d.n += 1;
                    Ok::<_, Error>(())
                })
            });
            until_queued(s, 1);
            let b = sc.spawn(|| {
                s.try_update(|d| {
                    seen.lock().unwrap().push(("b", d.n));
                    d.n += 1;
                    Ok::<_, Error>(())
                })
            });
            until_queued(s, 2);
            let c = sc.spawn(|| {
                s.try_update(|d| {
                    seen.lock().unwrap().push(("c", d.n));
                    d.n += 100;
                    Err::<(), _>(Error::InvalidPath {
                        path: "c".into(),
                        reason: "closure error",
                    })
                })
            });
            until_queued(s, 3);
            let e = sc.spawn(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    s.try_update(|d| {
                        seen.lock().unwrap().push(("d", d.n));
                        d.n += 1000;
                        panic!("closure panic");
                        #[allow(unreachable_code)]
                        Ok::<_, Error>(())
                    })
                }))
            });
            until_queued(s, 4);
            let f = sc.spawn(|| {
                s.try_update(|d| {
                    seen.lock().unwrap().push(("f", d.n));
                    d.n += 1;
                    Ok::<_, Error>(())
                })
            });
            until_queued(s, 5);
            go_tx.send(()).unwrap();
            a.join().unwrap().unwrap();
            b.join().unwrap().unwrap();
            assert!(c.join().unwrap().is_err());
            assert!(
                e.join().unwrap().is_err(),
                "the panic reaches its own caller"
            );
            f.join().unwrap().unwrap();
        });
        // FIFO: each closure saw its predecessors' successful changes only.
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("b", 1), ("c", 2), ("d", 2), ("f", 2)]
        );
        assert_eq!(plain(&p, false).load().unwrap().n, 3);
    }

    #[test]
    fn successor_giving_up_while_the_batch_is_open_still_closes_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.json");
        let s = plain(&p, true);
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|sc| {
            let s = &s;
            let a = sc.spawn(move || {
                s.try_update(|d| {
                    go_rx.recv().unwrap();
                    d.n += 1;
                    Ok::<_, Error>(())
                })
            });
            until_queued(s, 1);
            let b = sc.spawn(|| {
                s.update(|d| {
                    d.n += 1;
                })
            });
            until_queued(s, 2);
            // A successor that gives up: a queue ticket dropped unserved (what
            // a deadline does to a waiting writer).
            let quitter = s.writer().entry().fifo.enter();
            until_queued(s, 3);
            go_tx.send(()).unwrap();
            // b leaves the batch open for the quitter, which then gives up.
            while !(s.writer().entry().fifo.len() == 1
                && s.writer().entry().batch.lock().unwrap().is_some())
            {
                std::thread::yield_now();
            }
            drop(quitter);
            a.join().unwrap().unwrap();
            b.join().unwrap().unwrap();
        });
        assert!(s.writer().entry().batch.lock().unwrap().is_none());
        assert_eq!(plain(&p, false).load().unwrap().n, 2);
    }
}
