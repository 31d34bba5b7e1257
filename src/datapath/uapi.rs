//! The WireGuard cross-platform userspace API (`/var/run/wireguard/<iface>.sock`), read side,
//! so `wg show` lists weft's peers as it would for wireguard-go or the kernel module.
//! Configuration belongs to weft's mesh: `set` is refused with EOPNOTSUPP, so `wg set` says
//! "Operation not supported".

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::stats::DatapathStatus;

/// The directory `wg` looks in.
pub const DEFAULT_UAPI_DIR: &str = "/var/run/wireguard";
/// `set` is refused: weft's mesh is the only source of configuration.
const EOPNOTSUPP: i32 = 95;
/// Neither `get=1` nor `set=1`.
const EINVAL: i32 = 22;

/// The answer for a refused request. The protocol sends the errno negated, as wireguard-go
/// does: `wg` negates it back, so `errno=-95` prints "Operation not supported", while a
/// positive number would print "Unknown error -95".
fn error_reply(errno: i32) -> Zeroizing<String> {
    Zeroizing::new(format!("errno=-{errno}\n\n"))
}

pub fn default_socket_path(interface: &str) -> PathBuf {
    Path::new(DEFAULT_UAPI_DIR).join(format!("{interface}.sock"))
}

/// The device's own private key in hex, as `get` reports it; replaced when a key rotation
/// completes.
#[derive(Clone)]
pub struct SharedKeyHex(Arc<RwLock<Zeroizing<String>>>);

impl SharedKeyHex {
    pub fn new(key: &weft_keys::PrivateKey) -> Self {
        Self(Arc::new(RwLock::new(hex_of(key))))
    }

    pub fn set(&self, key: &weft_keys::PrivateKey) {
        if let Ok(mut slot) = self.0.write() {
            *slot = hex_of(key);
        }
    }

    fn get(&self) -> Zeroizing<String> {
        self.0
            .read()
            .map(|hex| hex.clone())
            .unwrap_or_else(|_| Zeroizing::new(String::new()))
    }
}

fn hex_of(key: &weft_keys::PrivateKey) -> Zeroizing<String> {
    let mut hex = Zeroizing::new(String::with_capacity(64));
    for byte in key.to_bytes().iter() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// What the `get` answer is built from: the datapath's live status plus the device's own key.
#[derive(Clone)]
pub struct UapiSource {
    pub private_key_hex: SharedKeyHex,
    pub fwmark: u32,
    pub status: watch::Receiver<DatapathStatus>,
}

fn hex_of_base64(key: &str) -> Option<String> {
    let bytes = weft_keys::PublicKey::from_base64(key).ok()?;
    Some(
        bytes
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// The whole `get=1` answer (ending with `errno=0` and the blank line). It holds the private
/// key, so it is built in one zeroized buffer allocated at its final size (a buffer that grew
/// would leave copies of the key behind in freed memory); the rest is rendered first.
pub fn render_get(source: &UapiSource, now: SystemTime) -> Zeroizing<String> {
    let rest = render_public(source, now);
    let key = source.private_key_hex.get();
    const PREFIX: &str = "private_key=";
    const TRAILER: &str = "errno=0\n\n";
    let mut out = Zeroizing::new(String::with_capacity(
        PREFIX.len() + key.len() + 1 + rest.len() + TRAILER.len(),
    ));
    out.push_str(PREFIX);
    out.push_str(&key);
    out.push('\n');
    out.push_str(&rest);
    out.push_str(TRAILER);
    out
}

/// Everything in the `get=1` answer after the private key.
fn render_public(source: &UapiSource, now: SystemTime) -> String {
    let status = source.status.borrow().clone();
    let mut out = String::new();
    let _ = writeln!(out, "listen_port={}", status.listen_port);
    if source.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", source.fwmark);
    }
    for peer in &status.peers {
        let Some(key) = hex_of_base64(&peer.public_key) else {
            continue;
        };
        let _ = writeln!(out, "public_key={key}");
        if let Some(endpoint) = &peer.endpoint {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        if let Some(age) = peer.handshake_age_secs {
            let at = now
                .checked_sub(Duration::from_secs(age))
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .unwrap_or_default();
            let _ = writeln!(out, "last_handshake_time_sec={}", at.as_secs());
            let _ = writeln!(out, "last_handshake_time_nsec=0");
        } else {
            let _ = writeln!(out, "last_handshake_time_sec=0\nlast_handshake_time_nsec=0");
        }
        let _ = writeln!(out, "rx_bytes={}", peer.rx_bytes);
        let _ = writeln!(out, "tx_bytes={}", peer.tx_bytes);
        let _ = writeln!(out, "persistent_keepalive_interval=25");
        for ip in &peer.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
        let _ = writeln!(out, "protocol_version=1");
    }
    out
}

/// Binds the socket (0600; its directory created 0700) and serves it until dropped.
pub async fn serve(path: PathBuf, source: UapiSource) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let source = source.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, &source).await {
                tracing::debug!(%error, "uapi connection failed");
            }
        });
    }
}

async fn serve_connection(stream: UnixStream, source: &UapiSource) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(64 * 1024));
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let answer = match line.trim_end() {
            "get=1" => {
                skip_to_blank_line(&mut reader).await?;
                render_get(source, SystemTime::now())
            }
            "set=1" => {
                skip_to_blank_line(&mut reader).await?;
                error_reply(EOPNOTSUPP)
            }
            "" => continue,
            _ => error_reply(EINVAL),
        };
        write.write_all(answer.as_bytes()).await?;
    }
}

async fn skip_to_blank_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::stats::PeerTraffic;

    fn source_with(status: watch::Receiver<DatapathStatus>) -> UapiSource {
        UapiSource {
            private_key_hex: SharedKeyHex::new(&weft_keys::PrivateKey::from_bytes([0; 32])),
            fwmark: 0x5746,
            status,
        }
    }

    /// The errno `wg` reports for an answer: it negates the number the server sends.
    fn errno_as_wg_reports_it(answer: &str) -> i64 {
        let value = answer
            .strip_prefix("errno=")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .unwrap_or_else(|| panic!("not an errno answer: {answer:?}"));
        -value.parse::<i64>().expect("errno is a number")
    }

    #[tokio::test]
    async fn set_is_refused_with_an_errno_wg_can_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft0.sock");
        let (_tx, status) = watch::channel(DatapathStatus::default());
        let server = tokio::spawn(serve(path.clone(), source_with(status)));
        let mut stream = loop {
            match UnixStream::connect(&path).await {
                Ok(stream) => break stream,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        stream
            .write_all(b"set=1\nlisten_port=1234\n\nfrobnicate=1\n\n")
            .await
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut answers = Vec::new();
        for _ in 0..2 {
            let mut answer = String::new();
            reader.read_line(&mut answer).await.unwrap();
            reader.read_line(&mut answer).await.unwrap();
            answers.push(answer);
        }
        // wg prints strerror of what it reads negated: a positive errno on the wire would be
        // "Unknown error -95".
        assert_eq!(errno_as_wg_reports_it(&answers[0]), 95, "{answers:?}");
        assert_eq!(errno_as_wg_reports_it(&answers[1]), 22, "{answers:?}");
        server.abort();
    }

    #[test]
    fn get_lists_peers_in_uapi_form() {
        let (_tx, status) = watch::channel(DatapathStatus {
            interface: "weft0".into(),
            listen_port: 51820,
            encryption: "required".into(),
            peers: vec![PeerTraffic {
                name: "n2".into(),
                public_key: weft_keys::PublicKey::from_bytes([0xab; 32]).to_string(),
                endpoint: Some("198.18.0.2:51820".into()),
                allowed_ips: vec!["10.244.2.0/24".into()],
                handshake_age_secs: Some(5),
                rx_bytes: 10,
                tx_bytes: 20,
                drops: Default::default(),
            }],
            ..DatapathStatus::default()
        });
        let source = source_with(status);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        // Zeroized when dropped: it holds the private key.
        let text: Zeroizing<String> = render_get(&source, now);
        assert!(text.starts_with(&format!(
            "private_key={}\nlisten_port=51820\n",
            "00".repeat(32)
        )));
        assert!(
            text.ends_with("\nprotocol_version=1\nerrno=0\n\n"),
            "{}",
            text.as_str()
        );
        // Built at its final size: no reallocation left a copy of the key behind.
        assert_eq!(text.len(), text.capacity());
        assert!(text.contains(&format!("public_key={}\n", "ab".repeat(32))));
        assert!(text.contains("endpoint=198.18.0.2:51820\n"));
        assert!(text.contains("last_handshake_time_sec=995\n"));
        assert!(text.contains("allowed_ip=10.244.2.0/24\n"));
        assert!(text.contains("rx_bytes=10\ntx_bytes=20\n"));
        assert!(text.contains("fwmark=22342\n"));
    }
}
