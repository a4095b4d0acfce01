//! A JSON counter updated by every process that runs this binary: no lost
//! update, whatever the concurrency.

use lockstore::{JsonOptions, JsonStore};

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct Doc {
    n: u64,
}

fn main() -> Result<(), lockstore::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "adopt-lean.json".into());
    let store: JsonStore<Doc> = JsonStore::open(&path, JsonOptions::default())?;
    // The infallible closure: no `Ok::<_, lockstore::Error>(())`.
    store.update(|d| {
        d.n += 1;
    })?;
    let n = store.update(|d| d.n)?;
    println!("{path}: n = {n}");
    Ok(())
}
