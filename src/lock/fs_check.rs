//! Refuses file systems whose advisory locks cannot be trusted.
//!
//! flock on NFS is emulated with byte-range locks (or not at all), SMB/CIFS locks
//! are mandatory-ish and per-client, and FUSE file systems may ignore locks
//! entirely. lockstore refuses them unless `LOCKSTORE_ALLOW_NETWORK_FS=1`.

use std::path::Path;

use crate::error::{Error, Result};

const NFS_SUPER_MAGIC: i64 = 0x6969;
const SMB_SUPER_MAGIC: i64 = 0x517b;
const CIFS_MAGIC_NUMBER: i64 = 0xff53_4d42;
const SMB2_MAGIC_NUMBER: i64 = 0xfe53_4d42;
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Name of the unreliable file system type with magic `magic`, if it is one.
pub fn unreliable_fs_name(magic: i64) -> Option<&'static str> {
    match magic {
        NFS_SUPER_MAGIC => Some("NFS"),
        SMB_SUPER_MAGIC | CIFS_MAGIC_NUMBER | SMB2_MAGIC_NUMBER => Some("SMB/CIFS"),
        FUSE_SUPER_MAGIC => Some("FUSE"),
        _ => None,
    }
}

/// Checks the file system holding `dir`; see the module docs.
///
/// Errors: [`Error::UnsupportedFilesystem`], or [`Error::Io`] if statfs fails.
pub fn check_dir(dir: &Path) -> Result<()> {
    if std::env::var_os("LOCKSTORE_ALLOW_NETWORK_FS").is_some_and(|v| v == "1") {
        return Ok(());
    }
    let st = nix::sys::statfs::statfs(dir)
        .map_err(|e| Error::io("statfs", dir, std::io::Error::from(e)))?;
    #[allow(clippy::unnecessary_cast)]
    let magic = st.filesystem_type().0 as i64;
    match unreliable_fs_name(magic) {
        Some(fs) => Err(Error::UnsupportedFilesystem {
            path: dir.to_path_buf(),
            fs,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics() {
        assert_eq!(unreliable_fs_name(0x6969), Some("NFS"));
        assert_eq!(unreliable_fs_name(0xff53_4d42), Some("SMB/CIFS"));
        assert_eq!(unreliable_fs_name(0x6573_5546), Some("FUSE"));
        assert_eq!(unreliable_fs_name(0xef53), None); // ext4
    }

    #[test]
    fn local_tmp_is_accepted() {
        let d = tempfile::tempdir().unwrap();
        check_dir(d.path()).unwrap();
    }
}
