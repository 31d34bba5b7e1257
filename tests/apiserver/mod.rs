//! A small in-process emulation of the Kubernetes API server, for the kube registry tests.
//!
//! What it honours, as the real one does: list with the collection's resourceVersion; watch
//! from a resourceVersion with per-event resourceVersions and bookmarks; a watch from a
//! compacted resourceVersion gets one ERROR event with a 410 Gone Status; PATCH with JSON merge
//! patch, or strategic merge patch with ObjectMeta's strategies (maps merge and take
//! `$patch: replace|delete`; `finalizers` merge as a set and take
//! `$deleteFromPrimitiveList/finalizers`; `ownerReferences` merge by `uid`; other fields as a
//! JSON merge patch), and 409 Conflict when the patch names a stale resourceVersion.
//!
//! Test controls: drop every open watch, compact the history, go away (503 on every request),
//! become unreachable (every connection, open or new, is reset, as when the API server's host
//! is gone), force conflicts. Every request is logged for assertions.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::watch;

/// The collections served: (URL prefix, kind, apiVersion).
pub const KINDS: [(&str, &str, &str); 4] = [
    ("/api/v1/nodes", "Node", "v1"),
    ("/api/v1/pods", "Pod", "v1"),
    ("/api/v1/namespaces", "Namespace", "v1"),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicy",
        "networking.k8s.io/v1",
    ),
];

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    kind: &'static str,
    kind_type: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// (kind, namespace/name) -> object.
    objects: BTreeMap<(&'static str, String), Value>,
    events: Vec<Event>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    down: bool,
    conflicts: u32,
    requests: Vec<String>,
    /// Watches answered with 410 Gone.
    gone: u32,
    /// BOOKMARK events sent, by kind.
    bookmarks: BTreeMap<&'static str, u32>,
}

#[derive(Clone)]
struct Shared {
    /// While set, every connection is reset (see `Gate`).
    unreachable: Arc<AtomicBool>,
    store: Arc<Mutex<Store>>,
    /// Bumped on every change; watches wake up on it. A bump of `drops` ends every watch.
    changes: watch::Sender<u64>,
    drops: watch::Sender<u64>,
}

pub struct ApiServer {
    pub address: SocketAddr,
    shared: Shared,
    runtime: Option<tokio::runtime::Runtime>,
}

fn key_of(object: &Value) -> String {
    let meta = &object["metadata"];
    match meta["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", meta["name"].as_str().unwrap_or_default()),
        None => meta["name"].as_str().unwrap_or_default().to_string(),
    }
}

fn kind_meta(kind: &str) -> (&'static str, &'static str, &'static str) {
    KINDS.iter().copied().find(|(_, k, _)| *k == kind).unwrap()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code.as_u16()})
}

fn error(code: StatusCode, reason: &str, message: &str) -> Response {
    (code, axum::Json(status(code, reason, message))).into_response()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (_, Some(_)) => {
            *target = json!({});
            merge(target, patch);
        }
        _ => *target = patch.clone(),
    }
}

impl ApiServer {
    /// Serves on `listener` (already bound, possibly inside a network namespace).
    pub fn start(listener: std::net::TcpListener) -> ApiServer {
        let address = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Shared {
            unreachable: Arc::new(AtomicBool::new(false)),
            store: Arc::new(Mutex::new(Store::default())),
            changes: watch::channel(0).0,
            drops: watch::channel(0).0,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = Router::new()
            .route("/api/v1/nodes", get(collection))
            .route("/api/v1/pods", get(collection))
            .route("/api/v1/namespaces", get(collection))
            .route(
                "/apis/networking.k8s.io/v1/networkpolicies",
                get(collection),
            )
            .route("/api/v1/nodes/{name}", get(get_node).patch(patch_node))
            .with_state(shared.clone());
        let cut = shared.unreachable.clone();
        runtime.spawn(async move {
            let inner = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(Gate { inner, cut }, app).await.unwrap();
        });
        ApiServer {
            address,
            shared,
            runtime: Some(runtime),
        }
    }

    /// A kubeconfig pointing at this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emu\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: emu\n  user: {{}}\ncontexts:\n- name: emu\n  context: {{cluster: emu, user: emu}}\ncurrent-context: emu\n",
            self.address
        )
    }

    fn record(store: &mut Store, kind: &'static str, kind_type: &'static str, object: Value) {
        store.events.push(Event {
            rv: store.rv,
            kind,
            kind_type,
            object,
        });
    }

    /// Creates or replaces an object (ADDED or MODIFIED event).
    pub fn upsert(&self, kind: &str, mut object: Value) {
        let (_, kind, api_version) = kind_meta(kind);
        {
            let mut store = self.shared.store.lock().unwrap();
            store.rv += 1;
            object["kind"] = kind.into();
            object["apiVersion"] = api_version.into();
            object["metadata"]["resourceVersion"] = store.rv.to_string().into();
            let key = (kind, key_of(&object));
            let kind_type = if store.objects.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            store.objects.insert(key, object.clone());
            Self::record(&mut store, kind, kind_type, object);
        }
        self.shared.changes.send_modify(|n| *n += 1);
    }

    /// Deletes an object (DELETED event).
    pub fn delete(&self, kind: &str, key: &str) {
        let (_, kind, _) = kind_meta(kind);
        {
            let mut store = self.shared.store.lock().unwrap();
            let Some(mut object) = store.objects.remove(&(kind, key.to_string())) else {
                panic!("no {kind} {key}");
            };
            store.rv += 1;
            object["metadata"]["resourceVersion"] = store.rv.to_string().into();
            Self::record(&mut store, kind, "DELETED", object);
        }
        self.shared.changes.send_modify(|n| *n += 1);
    }

    pub fn object(&self, kind: &str, key: &str) -> Option<Value> {
        let (_, kind, _) = kind_meta(kind);
        let store = self.shared.store.lock().unwrap();
        store.objects.get(&(kind, key.to_string())).cloned()
    }

    /// Ends every open watch (as a proxy or API server restart does).
    pub fn drop_watches(&self) {
        self.shared.drops.send_modify(|n| *n += 1);
    }

    /// Forgets the history up to now: watches resuming from an older resourceVersion get 410.
    pub fn compact(&self) {
        let mut store = self.shared.store.lock().unwrap();
        store.compacted = store.rv;
        store.events.clear();
    }

    /// While down, every request gets 503 and open watches end.
    pub fn set_down(&self, down: bool) {
        self.shared.store.lock().unwrap().down = down;
        if down {
            self.drop_watches();
        }
    }

    /// While unreachable, new connections are reset at once and open ones fail at their next
    /// read or write (no HTTP answer at all, unlike `set_down`).
    pub fn set_unreachable(&self, unreachable: bool) {
        self.shared.unreachable.store(unreachable, Ordering::SeqCst);
    }

    /// The next `n` patches of a Node race another writer: just before each, the Node gains
    /// an annotation `concurrent.example/write-K` (K counting down from `n`) and a new
    /// resourceVersion, so a patch naming the version it read gets 409 Conflict.
    pub fn conflict_next_patches(&self, n: u32) {
        self.shared.store.lock().unwrap().conflicts = n;
    }

    /// "METHOD path?query [content-type]" of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.store.lock().unwrap().requests.clone()
    }

    /// How many watches were answered with 410 Gone.
    pub fn gone_sent(&self) -> u32 {
        self.shared.store.lock().unwrap().gone
    }

    /// BOOKMARK events sent on watches of `kind`.
    pub fn bookmarks_sent(&self, kind: &str) -> u32 {
        let (_, kind, _) = kind_meta(kind);
        let store = self.shared.store.lock().unwrap();
        store.bookmarks.get(kind).copied().unwrap_or(0)
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().unwrap().rv
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Logs the request; `Err` with a 503 when the server is down.
#[allow(clippy::result_large_err)]
fn admit(shared: &Shared, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<(), Response> {
    let mut store = shared.store.lock().unwrap();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| format!(" [{v}]"))
        .unwrap_or_default();
    store.requests.push(format!("{method} {uri}{content_type}"));
    if store.down {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the API server is going away",
        ));
    }
    Ok(())
}

async fn collection(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(response) = admit(&shared, &method, &uri, &headers) {
        return response;
    }
    let (_, kind, api_version) = KINDS
        .iter()
        .copied()
        .find(|(path, _, _)| *path == uri.path())
        .unwrap();
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch_collection(shared, kind, api_version, &query);
    }
    let store = shared.store.lock().unwrap();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((k, _), _)| *k == kind)
        .map(|(_, object)| {
            // Items of a real list carry no kind/apiVersion of their own.
            let mut item = object.clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    axum::Json(json!({
        "kind": format!("{kind}List"),
        "apiVersion": api_version,
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    }))
    .into_response()
}

fn line(value: &Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn watch_collection(
    shared: Shared,
    kind: &'static str,
    api_version: &'static str,
    query: &BTreeMap<String, String>,
) -> Response {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    let gone = {
        let mut store = shared.store.lock().unwrap();
        let gone = from < store.compacted;
        store.gone += u32::from(gone);
        gone
    };
    if gone {
        let event = json!({"type": "ERROR", "object": status(StatusCode::GONE, "Expired",
            &format!("too old resource version: {from}"))});
        let _ = tx.try_send(Ok(line(&event)));
        drop(tx);
    } else {
        tokio::spawn(async move {
            let mut changes = shared.changes.subscribe();
            let mut drops = shared.drops.subscribe();
            drops.mark_unchanged();
            let deadline = tokio::time::Instant::now() + timeout;
            let mut sent = from;
            loop {
                let pending: Vec<Event> = {
                    let store = shared.store.lock().unwrap();
                    store
                        .events
                        .iter()
                        .filter(|e| e.kind == kind && e.rv > sent)
                        .cloned()
                        .collect()
                };
                for event in pending {
                    sent = event.rv;
                    let message = json!({"type": event.kind_type, "object": event.object});
                    if tx.send(Ok(line(&message))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = drops.changed() => return,
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)), if bookmarks => {
                        // A bookmark promises every event of this kind up to its
                        // resourceVersion was sent: none may be pending.
                        let rv = {
                            let mut store = shared.store.lock().unwrap();
                            let pending = store.events.iter().any(|e| e.kind == kind && e.rv > sent);
                            if !pending {
                                *store.bookmarks.entry(kind).or_default() += 1;
                            }
                            (!pending).then_some(store.rv)
                        };
                        let Some(rv) = rv else { continue };
                        sent = rv;
                        let bookmark = json!({"type": "BOOKMARK", "object": {
                            "kind": kind, "apiVersion": api_version,
                            "metadata": {"resourceVersion": rv.to_string()}}});
                        if tx.send(Ok(line(&bookmark))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn node_not_found(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("nodes \"{name}\" not found"),
    )
}

async fn get_node(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(response) = admit(&shared, &method, &uri, &headers) {
        return response;
    }
    let store = shared.store.lock().unwrap();
    match store.objects.get(&("Node", name.clone())) {
        Some(node) => axum::Json(node.clone()).into_response(),
        None => node_not_found(&name),
    }
}

async fn patch_node(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(response) = admit(&shared, &method, &uri, &headers) {
        return response;
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !matches!(
        content_type,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("the emulation does not take {content_type:?} patches"),
        );
    }
    let strategic = content_type == "application/strategic-merge-patch+json";
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the patch is not JSON",
        );
    };
    if strategic && let Some(directive) = unsupported_directive(&patch) {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("the emulation does not implement the {directive} directive"),
        );
    }
    let concurrent = {
        let mut store = shared.store.lock().unwrap();
        let write = store.conflicts;
        let rv = store.rv;
        match store.objects.get_mut(&("Node", name.clone())) {
            Some(node) if write > 0 => {
                node["metadata"]["annotations"][format!("concurrent.example/write-{write}")] =
                    "yes".into();
                node["metadata"]["resourceVersion"] = (rv + 1).to_string().into();
                let changed = node.clone();
                store.conflicts -= 1;
                store.rv += 1;
                ApiServer::record(&mut store, "Node", "MODIFIED", changed);
                true
            }
            _ => false,
        }
    };
    if concurrent {
        shared.changes.send_modify(|n| *n += 1);
    }
    let updated = {
        let mut store = shared.store.lock().unwrap();
        let rv = store.rv;
        let Some(node) = store.objects.get_mut(&("Node", name.clone())) else {
            return node_not_found(&name);
        };
        if let Some(wanted) = patch["metadata"]["resourceVersion"].as_str()
            && Some(wanted) != node["metadata"]["resourceVersion"].as_str()
        {
            return error(
                StatusCode::CONFLICT,
                "Conflict",
                "Operation cannot be fulfilled on nodes: the object has been modified; please apply your changes to the latest version and try again",
            );
        }
        if strategic {
            strategic_merge(node, &patch);
        } else {
            merge(node, &patch);
        }
        node["metadata"]["resourceVersion"] = (rv + 1).to_string().into();
        let updated = node.clone();
        store.rv += 1;
        ApiServer::record(&mut store, "Node", "MODIFIED", updated.clone());
        updated
    };
    shared.changes.send_modify(|n| *n += 1);
    axum::Json(updated).into_response()
}

/// The listener: resets every connection while the server is unreachable.
struct Gate {
    inner: tokio::net::TcpListener,
    cut: Arc<AtomicBool>,
}

impl axum::serve::Listener for Gate {
    type Io = GatedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, _)) if self.cut.load(Ordering::SeqCst) => {
                    // SO_LINGER 0: closing sends a reset, as a vanished host's stack would.
                    let _ = stream.set_zero_linger();
                }
                Ok((stream, addr)) => {
                    let cut = self.cut.clone();
                    return (GatedStream { stream, cut }, addr);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails its next read or write once the server is unreachable.
struct GatedStream {
    stream: tokio::net::TcpStream,
    cut: Arc<AtomicBool>,
}

fn reset() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::ConnectionReset)
}

impl tokio::io::AsyncRead for GatedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.cut.load(Ordering::SeqCst) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for GatedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.cut.load(Ordering::SeqCst) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A `$` key of a strategic merge patch that `strategic_merge` does not implement (so it is
/// refused rather than stored as a field).
fn unsupported_directive(patch: &Value) -> Option<String> {
    match patch {
        Value::Object(map) => map.iter().find_map(|(key, value)| {
            let known = key == "$patch" || key == "$deleteFromPrimitiveList/finalizers";
            if key.starts_with('$') && !known {
                Some(key.clone())
            } else {
                unsupported_directive(value)
            }
        }),
        Value::Array(items) => items.iter().find_map(unsupported_directive),
        _ => None,
    }
}

/// Strategic merge patch of an object: `metadata` with ObjectMeta's patch strategies, the
/// rest as a JSON merge patch (weft never patches anything but metadata).
fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        return merge(target, patch);
    };
    for (key, value) in fields {
        if key == "metadata" {
            let meta = target
                .as_object_mut()
                .map(|t| t.entry("metadata").or_insert(json!({})));
            if let Some(meta) = meta {
                strategic_metadata(meta, value);
            }
        } else {
            merge(target, &json!({ key: value }));
        }
    }
}

fn strategic_metadata(meta: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        return;
    };
    if let Some(remove) = fields
        .get("$deleteFromPrimitiveList/finalizers")
        .and_then(Value::as_array)
        && let Some(list) = meta["finalizers"].as_array_mut()
    {
        list.retain(|f| !remove.contains(f));
    }
    for (key, value) in fields {
        match key.as_str() {
            k if k.starts_with("$deleteFromPrimitiveList/") => {}
            "finalizers" if value.is_array() => {
                let mut list = meta[key].as_array().cloned().unwrap_or_default();
                for item in value.as_array().into_iter().flatten() {
                    if !list.contains(item) {
                        list.push(item.clone());
                    }
                }
                meta[key] = Value::Array(list);
            }
            "ownerReferences" if value.is_array() => {
                let mut list = meta[key].as_array().cloned().unwrap_or_default();
                for item in value.as_array().into_iter().flatten() {
                    let same = |r: &Value| r["uid"] == item["uid"];
                    if item["$patch"] == "delete" {
                        list.retain(|r| !same(r));
                    } else if let Some(existing) = list.iter_mut().find(|r| same(r)) {
                        merge(existing, item);
                    } else {
                        list.push(item.clone());
                    }
                }
                meta[key] = Value::Array(list);
            }
            _ if value.is_object() => match value["$patch"].as_str() {
                Some("delete") => {
                    if let Some(m) = meta.as_object_mut() {
                        m.remove(key);
                    }
                }
                Some("replace") => {
                    let mut replaced = value.clone();
                    if let Some(r) = replaced.as_object_mut() {
                        r.remove("$patch");
                    }
                    meta[key] = replaced;
                }
                _ => merge(&mut meta[key], value),
            },
            _ => merge(meta, &json!({ key: value })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{merge, strategic_merge};
    use serde_json::json;

    #[test]
    fn strategic_merge_follows_object_meta_strategies() {
        let mut node = json!({"metadata": {
            "annotations": {"a": "1", "b": "2"},
            "labels": {"x": "1"},
            "finalizers": ["f1", "f2"],
            "ownerReferences": [{"uid": "u1", "name": "one"}, {"uid": "u2", "name": "two"}]
        }, "spec": {"podCIDR": "10.244.1.0/24"}});
        strategic_merge(
            &mut node,
            &json!({"metadata": {
                "annotations": {"a": null, "c": "3"},
                "labels": {"$patch": "replace", "y": "2"},
                "finalizers": ["f3", "f1"],
                "$deleteFromPrimitiveList/finalizers": ["f2"],
                "ownerReferences": [{"uid": "u1", "name": "uno"}, {"uid": "u2", "$patch": "delete"},
                                    {"uid": "u3", "name": "three"}]
            }}),
        );
        assert_eq!(
            node,
            json!({"metadata": {
                "annotations": {"b": "2", "c": "3"},
                "labels": {"y": "2"},
                "finalizers": ["f1", "f3"],
                "ownerReferences": [{"uid": "u1", "name": "uno"}, {"uid": "u3", "name": "three"}]
            }, "spec": {"podCIDR": "10.244.1.0/24"}})
        );
        strategic_merge(
            &mut node,
            &json!({"metadata": {"labels": {"$patch": "delete"}}}),
        );
        assert!(node["metadata"].get("labels").is_none());
        assert_eq!(
            super::unsupported_directive(&json!({"metadata": {"$setElementOrder/finalizers": []}})),
            Some("$setElementOrder/finalizers".to_string())
        );
        assert_eq!(
            super::unsupported_directive(&json!({"metadata": {"labels": {"$patch": "replace"}}})),
            None
        );
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
    }
}
