//! `lockstore kv` end to end: import (idempotent, source untouched), get /
//! set / incr / del / list, export round trip.

mod common;

use serde_json::{json, Value};

use common::*;

fn run(args: &[&str], file: &std::path::Path) -> (i32, String, String) {
    let out = lockstore(["kv", args[0]])
        .arg(file)
        .args(&args[1..])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn import_edit_list_export_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("sessions.json");
    std::fs::write(
        &src,
        r#"{"store": {"items": [{"sid": "agent:main:1", "turns": 1}, {"sid": "agent:main:2", "turns": 2}, {"sid": "other", "turns": 0}]}}"#,
    )
    .unwrap();
    let before = std::fs::read(&src).unwrap();
    let db = d.path().join("sessions.sqlite");
    let src_s = src.to_str().unwrap();
    let import = [
        "import",
        "--from",
        src_s,
        "--pointer",
        "/store/items",
        "--id-field",
        "sid",
    ];
    let (code, out, err) = run(&import, &db);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("imported 3 records"), "{out}");
    let (code, out, _) = run(&import, &db);
    assert_eq!(code, 0);
    assert!(
        out.contains("imported 0 records") && out.contains("3 already present and equal"),
        "{out}"
    );
    assert_eq!(std::fs::read(&src).unwrap(), before, "the source changed");

    assert_eq!(
        run(&["incr", "agent:main:2", "/turns", "--by", "5"], &db)
            .1
            .trim(),
        "7"
    );
    // VALUE is JSON, as for `json set`: text needs --string (a typo is refused).
    assert_eq!(run(&["set", "other", "/meta/tag", "x y"], &db).0, 1);
    assert_eq!(run(&["set", "other", "/meta/tag", "{\"a\": 1,}"], &db).0, 1);
    assert_eq!(
        run(&["set", "--string", "other", "/meta/tag", "x y"], &db).0,
        0
    );
    assert_eq!(run(&["set", "new", "[1,2]"], &db).0, 0);
    let (_, out, _) = run(&["get", "other"], &db);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"sid": "other", "turns": 0, "meta": {"tag": "x y"}})
    );
    assert_eq!(
        run(&["list", "--prefix", "agent:"], &db).1,
        "agent:main:1\nagent:main:2\n"
    );
    let (_, out, _) = run(&["list", "--prefix", "agent:main:2", "--json"], &db);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["key"], "agent:main:2");
    assert_eq!(v[0]["version"], 2);
    assert_eq!(v[0]["value"]["turns"], 7);
    assert_eq!(run(&["del", "new"], &db).0, 0);
    assert_eq!(run(&["get", "new"], &db).0, 1);

    let exported = d.path().join("export.json");
    let (code, _, err) = run(&["export", "--out", exported.to_str().unwrap()], &db);
    assert_eq!(code, 0, "{err}");
    let doc = read_json(&exported);
    assert_eq!(doc.as_object().unwrap().len(), 3);
    assert_eq!(doc["agent:main:2"]["turns"], 7);
    let (_, stdout_doc, _) = run(&["export"], &db);
    assert_eq!(stdout_doc, std::fs::read_to_string(&exported).unwrap());
    // The export imports back into a fresh collection unchanged.
    let db2 = d.path().join("copy.sqlite");
    assert_eq!(
        run(&["import", "--from", exported.to_str().unwrap()], &db2).0,
        0
    );
    assert_eq!(run(&["export"], &db2).1, stdout_doc);
}
