//! Property tests of `JsonDocument` and the envelope decoder: JSON Pointer
//! get/set/del round trips, exact number text and member order through an
//! edit, duplicate keys refused, and decoding arbitrary bytes never panics
//! (corrupt → `Error::Corrupt`).
//!
//! Cases per property: `PROPTEST_CASES` (default 64, a few seconds in a debug
//! build); `.ci/run` may raise it.

use lockstore::{Durability, Error, JsonDocument, JsonOptions, JsonPointer, JsonStore};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A generated JSON value, rendered to text by `render` (compact, the way
/// `serde_json::to_string` lays it out, numbers as generated).
#[derive(Debug, Clone)]
enum Gen {
    Lit(String),
    Arr(Vec<Gen>),
    Obj(Vec<(String, Gen)>),
}

fn render(g: &Gen) -> String {
    match g {
        Gen::Lit(t) => t.clone(),
        Gen::Arr(a) => format!("[{}]", a.iter().map(render).collect::<Vec<_>>().join(",")),
        Gen::Obj(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), render(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Number texts an `f64` would change: long integers, trailing zeros,
/// exponents, `-0`.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (1u8..=9, proptest::collection::vec(0u8..=9, 0..40)).prop_map(|(h, t)| {
            std::iter::once(h)
                .chain(t)
                .map(|d| char::from(b'0' + d))
                .collect()
        }),
        (any::<i32>(), 0u32..1000, 0usize..4)
            .prop_map(|(i, f, z)| format!("{i}.{f}{}", "0".repeat(z))),
        (any::<i16>(), -300i32..300).prop_map(|(m, e)| format!("{m}e{e}")),
        Just("-0".to_string()),
        Just("9007199254740993.0".to_string()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(proptest::char::range('a', 'e'), 1..4)
            .prop_map(|c| c.into_iter().collect()),
        any::<String>(),
        Just("a/b~c".to_string()),
    ]
}

fn value() -> impl Strategy<Value = Gen> {
    let leaf = prop_oneof![
        number().prop_map(Gen::Lit),
        any::<String>().prop_map(|s| Gen::Lit(serde_json::to_string(&s).unwrap())),
        Just(Gen::Lit(r#""\u00e9\n""#.to_string())),
        Just(Gen::Lit("true".into())),
        Just(Gen::Lit("false".into())),
        Just(Gen::Lit("null".into())),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Gen::Arr),
            proptest::collection::vec((key(), inner), 0..6).prop_map(|m| {
                // Unique keys, first occurrence kept, order as generated.
                let mut seen = std::collections::HashSet::new();
                Gen::Obj(
                    m.into_iter()
                        .filter(|(k, _)| seen.insert(k.clone()))
                        .collect(),
                )
            }),
        ]
    })
}

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// Every pointer into `g` with the text of the value there.
fn paths(g: &Gen, at: String, out: &mut Vec<(String, String)>) {
    out.push((at.clone(), render(g)));
    match g {
        Gen::Lit(_) => {}
        Gen::Arr(a) => {
            for (i, v) in a.iter().enumerate() {
                paths(v, format!("{at}/{i}"), out);
            }
        }
        Gen::Obj(m) => {
            for (k, v) in m {
                paths(v, format!("{at}/{}", escape(k)), out);
            }
        }
    }
}

fn ptr(s: &str) -> JsonPointer {
    JsonPointer::parse(s).unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// Parse → serialize gives the text back: numbers exact, member order kept.
    #[test]
    fn text_and_order_survive_a_round_trip(g in value()) {
        let text = render(&g);
        let doc = JsonDocument::parse(&text).unwrap();
        prop_assert_eq!(doc.to_string(), text);
    }

    /// Every pointer gets the value written there; setting one value leaves
    /// the text of every value outside it as it was; deleting it removes it.
    #[test]
    fn pointer_get_set_del_round_trip(g in value(), pick in any::<prop::sample::Index>(), new in value()) {
        let text = render(&g);
        let mut doc = JsonDocument::parse(&text).unwrap();
        let mut all = Vec::new();
        paths(&g, String::new(), &mut all);
        for (p, want) in &all {
            prop_assert_eq!(doc.get(&ptr(p)).unwrap().unwrap().to_string(), want.clone());
        }
        let (target, _) = &all[pick.index(all.len())];
        let new_text = render(&new);
        let new_doc = JsonDocument::parse(&new_text).unwrap();
        match doc.set(&ptr(target), new_doc) {
            Ok(()) => {}
            // Only the depth limit can refuse an existing pointer.
            Err(e) => {
                prop_assert!(e.to_string().contains("levels deep"), "{}", e);
                return Ok(());
            }
        }
        prop_assert_eq!(doc.get(&ptr(target)).unwrap().unwrap().to_string(), new_text);
        for (p, want) in &all {
            let inside = p == target || p.starts_with(&format!("{target}/")) || target.starts_with(&format!("{p}/")) || target.is_empty() || p.is_empty();
            if !inside {
                prop_assert_eq!(doc.get(&ptr(p)).unwrap().unwrap().to_string(), want.clone());
            }
        }
        // The edited document reads back as written.
        let again = JsonDocument::parse(&format!("{doc:#}")).unwrap();
        prop_assert_eq!(again.to_string(), doc.to_string());
        if !target.is_empty() {
            prop_assert!(doc.delete(&ptr(target)).unwrap());
            // An object member is gone; an array's later items moved up.
            if let Some(parent) = target.rsplit_once('/').map(|(p, _)| p) {
                let n = JsonDocument::parse(&doc.get(&ptr(parent)).unwrap().unwrap().to_string()).unwrap();
                prop_assert!(!n.is_null());
            }
        }
    }

    /// A new member is appended; everything before it keeps its text.
    #[test]
    fn a_new_member_is_appended(members in proptest::collection::vec((key(), value()), 0..6), new in value()) {
        let mut seen = std::collections::HashSet::new();
        let members: Vec<_> = members.into_iter().filter(|(k, _)| seen.insert(k.clone()) && k != "new~key").collect();
        let g = Gen::Obj(members.clone());
        let mut doc = JsonDocument::parse(&render(&g)).unwrap();
        doc.set(&ptr("/new~0key"), JsonDocument::parse(&render(&new)).unwrap()).unwrap();
        let mut want = members;
        want.push(("new~key".to_string(), new));
        prop_assert_eq!(doc.to_string(), render(&Gen::Obj(want)));
    }

    /// An object with a repeated key never decodes, wherever it sits.
    #[test]
    fn duplicate_keys_never_decode(g in value(), k in key(), a in value(), b in value()) {
        let dup = Gen::Obj(vec![(k.clone(), a), (k, b)]);
        let text = render(&Gen::Arr(vec![g, dup]));
        let e = JsonDocument::parse(&text).unwrap_err();
        prop_assert!(e.to_string().contains("duplicate key"), "{}", e);
    }

    /// Integer incr is exact or fails; it never turns an integer into a float.
    #[test]
    fn integer_incr_is_exact(n in any::<i64>(), by in any::<i64>()) {
        let mut doc = JsonDocument::parse(&format!("{{\"n\":{n}}}")).unwrap();
        let want = i128::from(n) + i128::from(by);
        match doc.incr(&ptr("/n"), by) {
            Ok(v) => prop_assert_eq!(v.to_string(), want.to_string()),
            Err(_) => prop_assert!(want < i128::from(i64::MIN) || want > i128::from(u64::MAX)),
        }
    }

    /// Decoding arbitrary bytes (and corrupted valid documents) through a
    /// versioned and an unversioned store: a document or `Error::Corrupt`,
    /// never a panic, and the file is left as it was.
    #[test]
    fn envelope_decode_of_arbitrary_bytes(
        noise in proptest::collection::vec(any::<u8>(), 0..64),
        g in value(),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s.json");
        let valid = format!("{{\"version\":1,\"x\":{}}}", render(&g)).into_bytes();
        let mut flipped = valid.clone();
        let i = flip.0.index(flipped.len());
        flipped[i] ^= flip.1 | 1;
        let inputs = [noise, valid[..cut.index(valid.len())].to_vec(), flipped, valid.clone()];
        for version in [None, Some(1)] {
            let o = JsonOptions { durability: Durability::Process, version, ..Default::default() };
            let doc: JsonStore<JsonDocument> = JsonStore::open(&f, o.clone()).unwrap();
            let val: JsonStore<serde_json::Value> = JsonStore::open(&f, o).unwrap();
            for bytes in &inputs {
                std::fs::write(&f, bytes).unwrap();
                for r in [doc.load().map(|_| ()), val.load().map(|_| ())] {
                    if let Err(e) = r {
                        prop_assert!(matches!(e, Error::Corrupt { .. }), "{}", e);
                    }
                }
                prop_assert_eq!(&std::fs::read(&f).unwrap(), bytes);
            }
            // The intact document decodes in both modes.
            std::fs::write(&f, &valid).unwrap();
            prop_assert!(doc.load().is_ok());
        }
    }
}
