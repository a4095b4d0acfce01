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

/// A `JsonDocument` in a versioned store: its members sit beside "version"
/// and keep their text through a save.
#[test]
fn a_versioned_json_document_keeps_its_text() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("v.json");
    std::fs::write(
        &f,
        br#"{"version": 1, "big": 123456789012345678901234567890, "f": 1.50}"#,
    )
    .unwrap();
    let store: JsonStore<JsonDocument> = JsonStore::open(&f, opts(Some(1))).unwrap();
    store
        .update(|doc| {
            doc.set(
                &"/new".parse().unwrap(),
                JsonDocument::parse("true").unwrap(),
            )
            .unwrap()
        })
        .unwrap();
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(
        text.contains("123456789012345678901234567890") && text.contains("1.50"),
        "{text}"
    );
    assert_eq!(text.matches("\"version\"").count(), 1, "{text}");
    store.load().expect("reads back");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["version"].clone(), v["new"].clone()),
        (Value::from(1), Value::from(true))
    );
}

/// A versioned `Value` store: the document read from the envelope carries
/// "version"; the save writes it once (it was written twice, a duplicate key).
#[test]
fn a_versioned_value_store_writes_version_once() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("v.json");
    std::fs::write(&f, br#"{"version": 1, "n": 1}"#).unwrap();
    let store: JsonStore<Value> = JsonStore::open(&f, opts(Some(1))).unwrap();
    store.update(|v| v["n"] = Value::from(2)).unwrap();
    let text = std::fs::read_to_string(&f).unwrap();
    assert_eq!(text.matches("\"version\"").count(), 1, "{text}");
    JsonDocument::parse(&text).expect("no duplicate key");
}
