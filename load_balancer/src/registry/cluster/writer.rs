//! The shared view, written: while this balancer leads, its managed source's
//! batches go to etcd instead of its own registry, and come back to every
//! balancer's registry (its own too) through the mirror.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use futures_util::stream::{BoxStream, StreamExt};

use super::entries::{writes, Entry, Placer, Write};
use crate::registry::etcd::entries::backoff;
use crate::registry::etcd::{bounded, SessionError};
use crate::registry::{Batch, Change};
use crate::ring::{Geometry, Ring};
use crate::snapshot::{SharedSnapshot, Snapshot};

/// How long an `/add` or `/rm` answer waits for the mirror to bring the change
/// back into this balancer's own snapshot, so that its body shows it.
const ECHO_WAIT: Duration = Duration::from_secs(3);

/// Writes every batch of `batches` under `prefix` until the stream ends (the
/// managed source stopped). A write that fails is retried until it succeeds: the
/// managed source's view must reach etcd whole and in order. A replica new to
/// etcd is placed on a ring of `geometry` holding those written before it, under
/// the policy in force when this balancer was elected, and keeps those slots.
pub async fn write(
    mut client: Client,
    prefix: String,
    mut batches: BoxStream<'static, Batch>,
    snapshot: SharedSnapshot,
    geometry: Geometry,
) {
    let mut written = loop {
        match list(&mut client, &prefix).await {
            Ok(w) => break w,
            Err(e) => {
                log::warn!("cluster: cannot read {prefix}: {e}; retrying");
                tokio::time::sleep(backoff(1)).await;
            }
        }
    };
    let mut placer = placer(&snapshot.load(), geometry, &written);
    while let Some(batch) = batches.next().await {
        for w in writes(&mut written, placer.as_mut(), &batch.changes) {
            let mut failures = 0;
            while let Err(e) = apply(&mut client, &prefix, &w).await {
                failures += 1;
                log::warn!("cluster: writing {w:?} failed ({e}); retrying");
                tokio::time::sleep(backoff(failures)).await;
            }
        }
        if let Some(then) = batch.then {
            echoed(&snapshot, &batch.changes).await;
            then();
        }
    }
}

/// The leader's ring for placing new replicas, when its policy has one.
fn placer(
    snap: &Snapshot,
    geometry: Geometry,
    written: &BTreeMap<String, Entry>,
) -> Option<Placer> {
    let scheme = crate::scheme::by_name(snap.settings.policy)?;
    Some(Placer::new(
        snap.settings.policy,
        Ring::new(geometry, scheme),
        written,
    ))
}

async fn list(client: &mut Client, prefix: &str) -> Result<BTreeMap<String, Entry>, SessionError> {
    let all = Some(GetOptions::new().with_prefix());
    let listing = bounded("listing the cluster's replicas", client.get(prefix, all)).await?;
    Ok(listing
        .kvs()
        .iter()
        .filter_map(|kv| {
            let name = kv.key_str().ok()?.strip_prefix(prefix)?.to_string();
            Some((name, serde_json::from_slice(kv.value()).ok()?))
        })
        .collect())
}

async fn apply(client: &mut Client, prefix: &str, w: &Write) -> Result<(), SessionError> {
    match w {
        Write::Put { name, entry } => {
            let value = serde_json::to_string(entry).expect("an entry serializes");
            let put = client.put(format!("{prefix}{name}"), value, None);
            bounded("writing a replica", put).await.map(drop)
        }
        Write::Delete { name } => {
            let delete = client.delete(format!("{prefix}{name}"), None);
            bounded("deleting a replica", delete).await.map(drop)
        }
    }
}

/// Waits (a little) until this balancer's snapshot shows `changes`.
async fn echoed(snapshot: &SharedSnapshot, changes: &[Change]) {
    let deadline = Instant::now() + ECHO_WAIT;
    while Instant::now() < deadline && !shows(&snapshot.load(), changes) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn shows(snap: &Snapshot, changes: &[Change]) -> bool {
    changes.iter().all(|c| match c {
        Change::Upsert(m) => snap
            .replicas
            .iter()
            .any(|r| r.id == m.id && r.handle == m.handle),
        Change::Remove(id) => snap.replicas.iter().all(|r| r.id != *id),
        Change::Place(..) => true,
    })
}
