use std::path::PathBuf;

/// What to do about a private key file that is not a key.
const REPLACE_HINT: &str = "restore it from a backup, or replace it with `weft key generate --force` \
     (a new key changes the node's identity: peers move to it once they read its record)";

/// Errors about key material. Messages name the file involved and never contain key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no private key at {}; pass --key-dir if the node keeps it elsewhere, or create one with `weft key generate`",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error(
        "private key {} is accessible by group or others (mode {mode:04o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error(
        "key directory {} is writable by group or others (mode {mode:04o}); run `chmod 700 {}`",
        path.display(),
        path.display()
    )]
    InsecureDirectory { path: PathBuf, mode: u32 },
    #[error("private key {} is not base64 (corrupt or truncated); {REPLACE_HINT}", path.display())]
    NotBase64 { path: PathBuf },
    #[error(
        "private key {} holds {len} bytes, not 32 (truncated or not an x25519 key); {REPLACE_HINT}",
        path.display()
    )]
    WrongLength { path: PathBuf, len: usize },
    #[error(
        "private key {} is larger than any key file ({len} bytes); {REPLACE_HINT}",
        path.display()
    )]
    TooLarge { path: PathBuf, len: u64 },
    #[error(
        "a private key already exists at {}; pass --force to replace it (peers then need the new public key)",
        path.display()
    )]
    AlreadyExists { path: PathBuf },
    #[error("{} is not a regular file (symbolic links are refused)", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "a key rotation is already in progress ({} exists); `weft key status` shows its progress",
        path.display()
    )]
    RotationInProgress { path: PathBuf },
    #[error(
        "a key rotation is in progress ({} exists): replacing the key now would strand the next key its peers were told about; let the rotation complete (`weft key status` shows its progress; an agent that is not running completes it when it starts), then run this again",
        path.display()
    )]
    ReplaceWhileRotating { path: PathBuf },
    #[error("{}: {reason}", path.display())]
    RotationState { path: PathBuf, reason: &'static str },
    #[error("invalid key: {0}")]
    Invalid(&'static str),
}
