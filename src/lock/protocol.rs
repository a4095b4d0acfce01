//! The choice of cross-process lock protocol, and how each recognises the
//! other's lock file (the two are never mixed on one store).

/// Which cross-process lock protocol a store uses. Chosen per store through
/// [`crate::LockOptions::protocol`]; the two must never be mixed on one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LockProtocol {
    /// lockstore's own: `flock` on a persistent `<store>.lock` holding an owner
    /// record. The default.
    #[default]
    Flock,
    /// `@openclaw/fs-safe`'s: the existence of `<store>.lock`
    /// (docs/lock-protocol-sidecar.md). Feature `sidecar`.
    #[cfg(feature = "sidecar")]
    Sidecar,
}

impl LockProtocol {
    /// `flock` or `sidecar`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockProtocol::Flock => "flock",
            #[cfg(feature = "sidecar")]
            LockProtocol::Sidecar => "sidecar",
        }
    }
}

impl std::str::FromStr for LockProtocol {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "flock" => Ok(LockProtocol::Flock),
            #[cfg(feature = "sidecar")]
            "sidecar" => Ok(LockProtocol::Sidecar),
            o => Err(format!("unknown lock protocol {o:?} (flock or sidecar)")),
        }
    }
}

impl std::fmt::Display for LockProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `bytes` look like a sidecar payload (fs-safe's or ours) rather than a
/// flock-protocol owner record: a `createdAt` key, or fs-safe's ownership-token
/// trailer (a line of 8 tabs then tabs/spaces).
pub fn looks_like_sidecar(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"\"createdAt\"")
        || bytes.windows(9).any(|w| w == b"\n\t\t\t\t\t\t\t\t")
}
