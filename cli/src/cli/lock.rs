//! `lockstore lock status PATH` and `lockstore lock reclaim PATH`: who holds a
//! store's lock, and removal of a definitely-stale sidecar lock.
//!
//! PATH is the store file or its `.lock` file. `lock reclaim` on a flock
//! store removes nothing (the kernel releases a dead holder's flock) and says
//! so. The protocol is detected from the
//! lock file: a persistent file holding an owner record is the flock protocol's;
//! a JSON payload with `createdAt` is a sidecar (fs-safe's or lockstore's).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use lockstore::lock::sidecar::{self, Payload, ReclaimOutcome, SidecarSnapshot, Verdict};
use lockstore::lock::{self, LockState};
use lockstore::{HolderInfo, OwnerRecord};

use super::CliResult;

/// Arguments of `lockstore lock`.
#[derive(Args, Debug)]
pub struct LockArgs {
    #[command(subcommand)]
    cmd: LockCmd,
    /// Age in ms after which a lock without a judgeable owner is stale.
    #[arg(long, global = true, default_value_t = 60_000)]
    stale_ms: u64,
}

#[derive(Subcommand, Debug)]
enum LockCmd {
    /// Print who holds the lock: protocol, pid, command, state, age.
    Status {
        /// The store file or its `.lock` file.
        path: PathBuf,
    },
    /// Remove a sidecar lock only if its holder is definitely gone; prints
    /// missing, removed or retained with the reason.
    Reclaim {
        /// The store file or its `.lock` file.
        path: PathBuf,
    },
}

fn lock_path(p: &Path) -> PathBuf {
    if p.extension().is_some_and(|e| e == "lock") {
        p.to_path_buf()
    } else {
        lock::lock_path(p)
    }
}

fn describe(h: &OwnerRecord) -> String {
    let info = HolderInfo::judge(h.clone());
    format!(
        "pid {} command {} state {} age {} s",
        h.pid,
        h.cmd.as_deref().unwrap_or("?"),
        info.liveness.as_str(),
        info.held.as_secs()
    )
}

/// Runs `lockstore lock`.
pub fn run(a: LockArgs) -> CliResult {
    let stale = Duration::from_millis(a.stale_ms);
    match a.cmd {
        LockCmd::Status { path } => {
            let lp = lock_path(&path);
            let Some(snap) = SidecarSnapshot::read(&lp)? else {
                println!("{}: no lock file (free)", lp.display());
                return Ok(());
            };
            match Payload::parse(&snap.raw) {
                Payload::FlockRecord => match lock::inspect(&lp)? {
                    LockState::Held(Some(h)) => println!(
                        "{}: protocol flock, held by {}",
                        lp.display(),
                        describe(&h.record)
                    ),
                    LockState::Held(None) => {
                        println!("{}: protocol flock, held (no owner record)", lp.display())
                    }
                    LockState::Abandoned(h) => println!(
                        "{}: protocol flock, free (last holder crashed) by {}",
                        lp.display(),
                        describe(&h.record)
                    ),
                    _ => println!("{}: protocol flock, free", lp.display()),
                },
                _ => {
                    let (payload, verdict) = sidecar::judge(&lp, &snap, stale)?;
                    let who = match payload.holder() {
                        Some(h) => describe(h),
                        None => "an unknown holder (empty or unparseable payload)".into(),
                    };
                    let kind = if matches!(payload, Payload::Lockstore { .. }) {
                        "lockstore"
                    } else {
                        "foreign/fs-safe"
                    };
                    let (state, why) = match verdict {
                        Verdict::Retain(r) => ("held", r),
                        Verdict::Stale(r) => ("stale", r),
                    };
                    println!(
                        "{}: protocol sidecar ({kind}), {state} by {who}, file age {} s: {why}",
                        lp.display(),
                        snap.age().as_secs()
                    );
                }
            }
            Ok(())
        }
        LockCmd::Reclaim { path } => {
            let lp = lock_path(&path);
            // A flock lock is never removed by hand: the kernel drops it when
            // its holder exits, and the next writer reclaims the record.
            if let Some(snap) = SidecarSnapshot::read(&lp)? {
                if matches!(Payload::parse(&snap.raw), Payload::FlockRecord) {
                    match lock::inspect(&lp)? {
                        LockState::Held(h) => println!(
                            "retained: {}: protocol flock, held by {}; a flock lock is released by the kernel when its holder exits, never removed by hand",
                            lp.display(),
                            h.map_or_else(|| "a process without an owner record".into(), |h| describe(&h.record))
                        ),
                        LockState::Abandoned(h) => println!(
                            "free: {}: protocol flock; its last holder ({}) died holding it, the kernel already released the lock and the next writer reclaims it (nothing to remove)",
                            lp.display(),
                            describe(&h.record)
                        ),
                        _ => println!(
                            "free: {}: protocol flock; nothing to reclaim",
                            lp.display()
                        ),
                    }
                    return Ok(());
                }
            }
            match sidecar::reclaim_definitely_stale(&lp, stale)? {
                ReclaimOutcome::Missing => println!("missing: {}", lp.display()),
                ReclaimOutcome::Removed(r) => println!("removed: {}: {r}", lp.display()),
                ReclaimOutcome::Retained(r) => println!("retained: {}: {r}", lp.display()),
            }
            Ok(())
        }
    }
}
