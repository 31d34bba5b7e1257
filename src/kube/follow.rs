//! Following one kind of Kubernetes object: a kube-runtime watcher (list, then watch from the
//! list's resourceVersion; resumes from the last seen resourceVersion when a watch drops;
//! re-lists on 410 Gone; backs off on errors) feeding a reflector cache.

use std::fmt::Debug;
use std::hash::Hash;

use futures::StreamExt as _;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// Follows `api` into a cache until `changes` has no receivers. After every change that
/// leaves the cache complete (the initial list done, then every added, modified or deleted
/// object) `changes` is bumped; it stays at 0 until the first complete list. `trim` runs on
/// every object before it is cached (drop what weft never reads).
pub async fn follow<K>(
    api: Api<K>,
    kind: &'static str,
    trim: fn(&mut K),
    store: reflector::store::Writer<K>,
    changes: watch::Sender<u64>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let stream = reflector::reflector(
        store,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(trim),
    );
    let mut stream = std::pin::pin!(stream);
    let mut synced = false;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = changes.closed() => return,
        };
        match next {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(kind, %error, "watch failed; retrying with backoff");
            }
            Some(Ok(event)) => {
                let complete = match event {
                    watcher::Event::Init | watcher::Event::InitApply(_) => false,
                    watcher::Event::InitDone => {
                        if !synced {
                            tracing::info!(kind, "initial list done");
                        }
                        synced = true;
                        true
                    }
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) => synced,
                };
                if complete {
                    changes.send_modify(|n| *n += 1);
                }
            }
        }
    }
}
