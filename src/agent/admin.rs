//! The local admin API: a Unix socket (`<run-dir>/admin.sock`, mode 0600) speaking
//! newline-delimited JSON. One request per line (`{"command":"status"}`), one response per
//! line (`{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Name of the admin socket inside the run directory.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(ADMIN_SOCKET)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum AdminRequest {
    Status,
    /// The verdict of the current NetworkPolicy rule set on a flow between two Pods.
    PolicyCheck {
        from: String,
        to: String,
        port: u16,
        protocol: String,
    },
    /// Start rotating the node key; peers get `grace_secs` to move to the next key.
    KeyRotate {
        grace_secs: u64,
    },
    /// The node key, the next key while rotating, and the rotation's progress.
    KeyStatus,
}

#[derive(Debug, Serialize, Deserialize)]
struct AdminResponse {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What serves the requests (the agent).
pub trait AdminHandler: Send + Sync + 'static {
    fn handle(
        &self,
        request: AdminRequest,
    ) -> impl Future<Output = Result<serde_json::Value, String>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("another weft agent is already serving {0}; stop it first or use another --run-dir")]
    InUse(String),
    #[error("cannot serve the admin socket {path}: {source}")]
    Bind {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no weft agent is running for this run directory ({path} does not exist); start `weft agent` or pass the agent's --run-dir"
    )]
    NotRunning { path: String },
    #[error("no weft agent answers on {path} (stale socket: {source})")]
    Refused {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent on {path} failed: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent answered with something that is not a response: {0}")]
    BadResponse(String),
    #[error("the agent refused the request: {0}")]
    Refusal(String),
}

/// Binds the admin socket: replaces a stale socket file, refuses if a live agent answers.
pub async fn bind(run_dir: &Path) -> Result<UnixListener, AdminError> {
    let path = socket_path(run_dir);
    let shown = path.display().to_string();
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(AdminError::InUse(shown));
        }
        let _ = std::fs::remove_file(&path);
    }
    let bind_error = |source| AdminError::Bind {
        path: shown.clone(),
        source,
    };
    let listener = UnixListener::bind(&path).map_err(bind_error)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

/// Serves connections until the task is dropped.
pub async fn serve<H: AdminHandler>(listener: UnixListener, handler: Arc<H>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve_connection(stream, handler).await {
                        tracing::debug!(%error, "admin connection ended with an error");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "admin socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection<H: AdminHandler>(
    stream: UnixStream,
    handler: Arc<H>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST_BYTES));
    let mut line = String::new();
    while lines.read_line(&mut line).await? > 0 {
        let response = match serde_json::from_str::<AdminRequest>(line.trim()) {
            Ok(request) => match handler.handle(request).await {
                Ok(result) => AdminResponse {
                    ok: true,
                    result: Some(result),
                    error: None,
                },
                Err(error) => refusal(error),
            },
            Err(error) => refusal(format!("bad request: {error}")),
        };
        let mut bytes = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        write.write_all(&bytes).await?;
        line.clear();
    }
    Ok(())
}

fn refusal(error: String) -> AdminResponse {
    AdminResponse {
        ok: false,
        result: None,
        error: Some(error),
    }
}

/// Sends one request to the agent serving `run_dir` and returns its result.
pub async fn request(
    run_dir: &Path,
    request: &AdminRequest,
) -> Result<serde_json::Value, AdminError> {
    let path = socket_path(run_dir);
    let shown = path.display().to_string();
    let stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(AdminError::NotRunning { path: shown });
        }
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(AdminError::Refused {
                path: shown,
                source: error,
            });
        }
        Err(source) => {
            return Err(AdminError::Io {
                path: shown,
                source,
            });
        }
    };
    let io_error = |source| AdminError::Io {
        path: shown.clone(),
        source,
    };
    let (read, mut write) = stream.into_split();
    let mut bytes = serde_json::to_vec(request).map_err(|e| io_error(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    write.write_all(&bytes).await.map_err(io_error)?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(io_error)?;
    let response: AdminResponse = serde_json::from_str(line.trim())
        .map_err(|e| AdminError::BadResponse(format!("{e}: {line:?}")))?;
    match (response.ok, response.result, response.error) {
        (true, Some(result), _) => Ok(result),
        (_, _, Some(error)) => Err(AdminError::Refusal(error)),
        _ => Err(AdminError::BadResponse(line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl AdminHandler for Echo {
        async fn handle(&self, request: AdminRequest) -> Result<serde_json::Value, String> {
            match request {
                AdminRequest::Status => Ok(serde_json::json!({"hello": "status"})),
                _ => Err("not here".into()),
            }
        }
    }

    #[tokio::test]
    async fn request_round_trips_and_socket_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).await.unwrap();
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let server = tokio::spawn(serve(listener, Arc::new(Echo)));
        let result = request(dir.path(), &AdminRequest::Status).await.unwrap();
        assert_eq!(result, serde_json::json!({"hello": "status"}));
        // A second agent on the same run directory is refused while the first one serves.
        assert!(matches!(bind(dir.path()).await, Err(AdminError::InUse(_))));
        server.abort();
    }

    #[tokio::test]
    async fn garbage_request_gets_a_refusal_not_a_hangup() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).await.unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(Echo)));
        let stream = UnixStream::connect(socket_path(dir.path())).await.unwrap();
        let (read, mut write) = stream.into_split();
        write
            .write_all(b"{\"command\":\"explode\"}\n")
            .await
            .unwrap();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await.unwrap();
        let response: AdminResponse = serde_json::from_str(&line).unwrap();
        assert!(!response.ok);
        assert!(response.error.unwrap().contains("bad request"));
        server.abort();
    }

    #[tokio::test]
    async fn missing_agent_is_reported_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let error = request(dir.path(), &AdminRequest::Status)
            .await
            .unwrap_err();
        assert!(matches!(error, AdminError::NotRunning { .. }));
        assert!(error.to_string().contains("no weft agent is running"));
    }

    #[tokio::test]
    async fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        drop(bind(dir.path()).await.unwrap());
        assert!(socket_path(dir.path()).exists());
        assert!(bind(dir.path()).await.is_ok());
    }
}
