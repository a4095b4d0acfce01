//! Uses the user's own rusqlite next to lockstore's SQLite stores: one SQLite
//! is linked (`lockstore::rusqlite` is the same crate as `rusqlite`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("adopt-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The user's own database, through the user's own rusqlite.
    let conn = rusqlite::Connection::open(dir.join("app.sqlite"))?;
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t(x); INSERT INTO t VALUES (1);")?;
    // The same type through lockstore's re-export: one rusqlite, one SQLite.
    let same: &lockstore::rusqlite::Connection = &conn;
    let n: i64 = same.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
    println!("app rows: {n}; sqlite {}", rusqlite::version());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
