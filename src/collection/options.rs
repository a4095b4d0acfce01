//! Options of a [`super::Collection`].

use crate::json::GroupCommit;
use crate::lock::LockOptions;
use crate::sqlite::SqliteOptions;

/// How a record's value is stored in the `value` column (feature `sqlite`).
///
/// Reading accepts both encodings whatever this option says (a TEXT cell is
/// parsed as JSON text, a BLOB cell is converted with SQLite's `json()`), so
/// files written with either option, or with both over time, stay readable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encoding {
    /// Compact JSON text (`serde_json::to_string`): readable with the
    /// `sqlite3` shell and by any SQLite. The default.
    #[default]
    Text,
    /// SQLite's binary JSON (`jsonb(?)`, SQLite 3.45+; the bundled SQLite is
    /// newer): smaller, and faster for SQL `->>` queries on the column; the
    /// writer converts through SQLite, so each write costs one conversion.
    Jsonb,
}

/// Options of [`super::Collection::open`] (feature `sqlite`).
#[derive(Debug, Clone)]
pub struct CollectionOptions {
    /// SQLite options: durability (default [`crate::Durability::Full`]:
    /// `synchronous=FULL`, a committed write survives power loss), busy
    /// timeout (5 s), retry deadline (30 s).
    pub sqlite: SqliteOptions,
    /// Lock options of the exclusive section on the collection's file (the
    /// in-process FIFO queue and the `flock` on `<file>.lock`; 60 s deadline).
    pub lock: LockOptions,
    /// Group commit of queued writers of this process (on by default): their
    /// changes share one `BEGIN IMMEDIATE` transaction, each in its own
    /// `SAVEPOINT`, and one COMMIT. Flock protocol only.
    pub group_commit: GroupCommit,
    /// Value encoding of new writes. Default [`Encoding::Text`].
    pub encoding: Encoding,
    /// In-memory cache of up to this many records (`None`, the default: no
    /// cache). The cache holds each cached record's stored JSON (not the
    /// decoded value) and is dropped whole when another connection — another
    /// process, or another handle — committed (`PRAGMA data_version`); this
    /// handle's own commits update it in place. When full it is cleared.
    pub cache: Option<usize>,
}

impl Default for CollectionOptions {
    fn default() -> Self {
        CollectionOptions {
            sqlite: SqliteOptions::default(),
            lock: LockOptions::default(),
            group_commit: GroupCommit::default(),
            encoding: Encoding::Text,
            cache: None,
        }
    }
}
