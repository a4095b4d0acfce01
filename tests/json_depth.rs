//! What a `JsonStore` writes, it reads back (issue 11, item 1): a typed
//! document nested deeper than serde_json's reader reads is refused at save
//! time (nothing written) instead of producing a file every later load calls
//! corrupt.

use lockstore::{Durability, Error, JsonDocument, JsonOptions, JsonStore};
use serde_json::Value;

fn nested(levels: usize) -> Value {
    let mut v = Value::Null;
    for _ in 0..levels {
        v = Value::Array(vec![v]);
    }
    v
}

fn opts(version: Option<u64>) -> JsonOptions {
    JsonOptions {
        durability: Durability::Process,
        version,
        ..Default::default()
    }
}

#[test]
fn a_store_never_writes_what_it_cannot_read() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("deep.json");
    let store: JsonStore<Value> = JsonStore::open(&f, opts(None)).unwrap();
    let limit = JsonDocument::MAX_DEPTH;
    store.update(|v| *v = nested(limit)).unwrap();
    assert_eq!(store.load().unwrap(), nested(limit), "the limit reads back");
    let before = std::fs::read(&f).unwrap();
    let e = store.update(|v| *v = nested(limit + 1)).unwrap_err();
    assert!(matches!(e, Error::Serialize { .. }), "{e}");
    assert!(e.to_string().contains(&format!("{}", limit + 1)), "{e}");
    assert_eq!(std::fs::read(&f).unwrap(), before, "nothing written");
    store.load().expect("the file still reads");
}

/// The envelope adds no level (the document's fields sit beside "version"),
/// and the limit counts the envelope object itself.
#[test]
fn the_envelope_counts_as_the_top_level() {
    #[derive(Default, Clone, serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Doc {
        x: Value,
    }
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("env.json");
    let store: JsonStore<Doc> = JsonStore::open(&f, opts(Some(1))).unwrap();
    let limit = JsonDocument::MAX_DEPTH;
    store.update(|doc| doc.x = nested(limit - 1)).unwrap();
    assert_eq!(store.load().unwrap().x, nested(limit - 1));
    assert!(store.update(|doc| doc.x = nested(limit)).is_err());
    assert_eq!(store.load().unwrap().x, nested(limit - 1));
}
