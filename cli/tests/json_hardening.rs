//! `lockstore json` hardening (issue 11): what the writer accepts the reader
//! reads, untouched values keep their text and order, duplicate keys are
//! corrupt, integer `incr` stays integer, `set` takes JSON (or `--string`),
//! pointer errors, reads create nothing, quarantine refuses a valid file, and
//! thread spawn failures are reported instead of panicking.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_lockstore");

fn json(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("json")
        .args(args)
        .env_remove("LOCKSTORE_FAILPOINT")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run lockstore")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn set_refuses_a_value_nested_deeper_than_a_reader_reads() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("r.json");
    // 127 arrays under the root object: 128 levels, one more than serde_json reads.
    let deep = format!("{}{}", "[".repeat(127), "]".repeat(127));
    let o = json(&["set", s(&f), "/x", &deep]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout {} stderr {}",
        out(&o),
        err(&o)
    );
    assert!(
        err(&o).contains("128") && err(&o).contains("127"),
        "{}",
        err(&o)
    );
    assert!(!f.exists(), "nothing written");

    // A 128-segment pointer builds 128 nested objects: refused the same way.
    let ptr = "/a".repeat(128);
    let o = json(&["set", s(&f), &ptr, "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("128"), "{}", err(&o));
    let o = json(&["incr", s(&f), &ptr]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));

    // At the limit: written and read back.
    let limit = format!("{}{}", "[".repeat(126), "]".repeat(126));
    let o = json(&["set", s(&f), "/x", &limit]);
    assert!(o.status.success(), "{}", err(&o));
    let o = json(&["get", s(&f), "/x"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = json(&["set", s(&f), &"/a".repeat(127), "1"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = json(&["get", s(&f)]);
    assert!(o.status.success(), "{}", err(&o));
}

#[test]
fn untouched_values_keep_their_text_and_order() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("e.json");
    std::fs::write(
        &f,
        r#"{"id": 123456789012345678901234567890, "v": 9007199254740993.0, "z": {"b": 1, "a": 1.50}, "a": "\u00e9"}"#,
    )
    .unwrap();
    let o = json(&["set", s(&f), "/new", "true"]);
    assert!(o.status.success(), "{}", err(&o));
    let text = std::fs::read_to_string(&f).unwrap();
    for exact in [
        "123456789012345678901234567890",
        "9007199254740993.0",
        "1.50",
        r#""\u00e9""#,
    ] {
        assert!(text.contains(exact), "{exact} lost in {text}");
    }
    let order: Vec<usize> = [
        "\"id\"",
        "\"v\"",
        "\"z\"",
        "\"b\"",
        "\"a\": 1.50",
        "\"new\"",
    ]
    .iter()
    .map(|k| {
        text.find(k)
            .unwrap_or_else(|| panic!("{k} missing in {text}"))
    })
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "key order changed: {text}"
    );
    // `get` prints the number as written too.
    let o = json(&["get", s(&f), "/id"]);
    assert_eq!(out(&o).trim(), "123456789012345678901234567890");
}

#[test]
fn duplicate_keys_are_corrupt_and_left_untouched() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("e.json");
    let before = br#"{"dup": 1, "x": {"dup": 1}, "dup": 2}"#;
    std::fs::write(&f, before).unwrap();
    let o = json(&["set", s(&f), "/new", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("duplicate key \"dup\""), "{}", err(&o));
    assert_eq!(std::fs::read(&f).unwrap(), before);
    let o = json(&["get", s(&f)]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
}

#[test]
fn incr_keeps_integers_exact_or_fails_naming_the_value() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("n.json");
    std::fs::write(
        &f,
        r#"{"n": 9223372036854775807, "m": 18446744073709551615}"#,
    )
    .unwrap();
    let o = json(&["incr", s(&f), "/n"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), "9223372036854775808");
    assert!(std::fs::read_to_string(&f)
        .unwrap()
        .contains("9223372036854775808"));
    let before = std::fs::read(&f).unwrap();
    let o = json(&["incr", s(&f), "/m"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        err(&o).contains("18446744073709551615") && err(&o).contains("\"/m\""),
        "{}",
        err(&o)
    );
    assert_eq!(std::fs::read(&f).unwrap(), before, "nothing written");
}

#[test]
fn set_requires_a_json_value_unless_string() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("v.json");
    let o = json(&["set", s(&f), "/cfg", r#"{"retries": 3,}"#]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        err(&o).contains("line 1 column 15")
            && err(&o).contains("retries")
            && err(&o).contains("--string"),
        "{}",
        err(&o)
    );
    let o = json(&["set", s(&f), "/big", "1e400"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("1e400") && err(&o).contains("out of range"),
        "{}",
        err(&o)
    );
    let o = json(&["set", s(&f), "/word", "alice"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!f.exists(), "nothing written");
    let o = json(&["set", "--string", s(&f), "/cfg", r#"{"retries": 3,}"#]);
    assert!(o.status.success(), "{}", err(&o));
    let o = json(&["get", s(&f), "/cfg"]);
    assert_eq!(out(&o).trim(), r#""{\"retries\": 3,}""#);
}

#[test]
fn pointer_errors_name_the_pointer_and_refuse_leading_zeros() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("p.json");
    std::fs::write(&f, r#"{"s": "text", "arr": [10, 11, 12]}"#).unwrap();
    let o = json(&["set", s(&f), "/s/x", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("\"/s/x\""), "{}", err(&o));
    assert!(!err(&o).contains("in \"\""), "{}", err(&o));
    for args in [
        vec!["set", s(&f), "/arr/01", "1"],
        vec!["get", s(&f), "/arr/01"],
        vec!["del", s(&f), "/arr/01"],
        vec!["incr", s(&f), "/arr/01"],
    ] {
        let o = json(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", out(&o));
        assert!(err(&o).contains("\"01\""), "{}", err(&o));
    }
    let o = json(&["get", s(&f), "/arr/1"]);
    assert_eq!(out(&o).trim(), "11");
}

#[test]
fn get_on_a_missing_path_creates_nothing() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("no/such/dir/f.json");
    let o = json(&["get", s(&f)]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), "null");
    assert!(!d.path().join("no").exists(), "a read created directories");
}

#[test]
fn quarantine_refuses_a_valid_file_unless_forced_and_logs_at_warn() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("q.json");
    std::fs::write(&f, r#"{"ok": true}"#).unwrap();
    let o = json(&["quarantine", s(&f)]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(err(&o).contains("--force"), "{}", err(&o));
    assert!(f.exists(), "a valid file stays in place");
    let o = json(&["quarantine", "--force", s(&f)]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!f.exists());

    std::fs::write(&f, b"{not json").unwrap();
    let o = json(&["quarantine", s(&f)]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!f.exists());
    assert!(out(&o).contains(".corrupt-"), "{}", out(&o));
    assert!(
        err(&o).contains("WARN") && !err(&o).contains("ERROR"),
        "{}",
        err(&o)
    );
}

/// `--threads 200` under a process limit: an error that says how many
/// increments were done, never a panic. Needs RLIMIT_NPROC to bite: as root
/// (where it does not) the binary runs as nobody through setpriv.
#[test]
fn incr_threads_under_a_process_limit_reports_what_was_done() {
    let d = tempfile::tempdir().unwrap();
    let mut perm = std::fs::metadata(d.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o777);
    std::fs::set_permissions(d.path(), perm).unwrap();
    let f = d.path().join("t.json");
    let root = nix::unistd::geteuid().is_root();
    let mut c = if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "prlimit",
        ]);
        c
    } else {
        Command::new("prlimit")
    };
    // A limit of 20 processes for the user: the binary's own thread fits,
    // 200 workers do not.
    c.args([
        "--nproc=20",
        BIN,
        "json",
        "incr",
        s(&f),
        "/n",
        "--threads",
        "200",
    ])
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null());
    let o = match c.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run setpriv/prlimit ({e}); util-linux is required"),
    };
    let e = err(&o);
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(o.status.code(), Some(4), "stdout {} stderr {e}", out(&o));
    let done: u64 = if f.exists() {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        v["n"].as_u64().unwrap()
    } else {
        0
    };
    assert!(done < 200, "{done}");
    assert!(
        e.contains(&format!("{done} of 200 increments done")),
        "the error must say what was done ({done}): {e}"
    );
}
