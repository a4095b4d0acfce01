//! The private cluster starts, serves a database over its socket only,
//! survives an immediate stop + restart, and is removed on drop.

use lockstore_pg_cluster::Cluster;

#[test]
fn starts_creates_a_database_restarts_and_cleans_up() {
    if !lockstore_pg_cluster::available() {
        eprintln!("SKIP: PostgreSQL server binaries not installed");
        return;
    }
    let pg = Cluster::start().expect("start");
    let dir = pg.dir().to_path_buf();
    let url = pg.create_database("t1").expect("createdb");
    assert!(url.starts_with("postgresql://postgres@%2F"), "{url}");
    assert!(
        dir.join(".s.PGSQL.5432").exists(),
        "socket in the private dir"
    );
    pg.stop_immediate().expect("stop");
    assert!(!dir.join(".s.PGSQL.5432").exists());
    pg.start_server().expect("restart");
    pg.create_database("t2").expect("createdb after restart");
    drop(pg);
    assert!(!dir.exists(), "dir removed on drop");
}
