//! The shared view's keys and values, and what a change to the managed set writes.
//! Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backend::ServerId;
use crate::registry::{Change, Member};
use crate::ring::Ring;
use crate::snapshot::ReplicaState;

/// `/lb/<instance>/cluster/replicas/`: one key per managed replica.
pub fn replicas_prefix(instance: &str) -> String {
    format!("/lb/{instance}/cluster/replicas/")
}

/// `/lb/<instance>/cluster/leader`: the election's name (etcd keeps one key per
/// candidate under it; the oldest leads).
pub fn election_name(instance: &str) -> String {
    format!("/lb/{instance}/cluster/leader")
}

/// A managed replica as the leader writes it and every balancer reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: ServerId,
    pub state: ReplicaState,
    /// `host:port` it serves HTTP on, when running.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub grpc_address: Option<String>,
    #[serde(default)]
    pub restarts: u32,
    /// The runtime's handle (container id) of its current incarnation.
    #[serde(default)]
    pub handle: Option<String>,
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Where the leader that added it put its virtual nodes, so every balancer's
    /// ring agrees (`null` under a policy without a ring).
    #[serde(default)]
    pub placement: Option<Slots>,
}

/// A replica's ring slots under one scheme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    pub scheme: String,
    pub slots: Vec<usize>,
}

/// The leader's ring, rebuilt from what is written: it decides where a new
/// replica's virtual nodes go, as a single balancer's ring would.
pub struct Placer {
    pub scheme: &'static str,
    pub ring: Ring,
}

impl Placer {
    /// A placer for `scheme`'s ring, holding the placements already written for it.
    pub fn new(scheme: &'static str, mut ring: Ring, written: &BTreeMap<String, Entry>) -> Self {
        for e in written.values() {
            if let Some(p) = e.placement.as_ref().filter(|p| p.scheme == scheme) {
                if let Err(err) = ring.place(e.id, &p.slots) {
                    log::warn!(
                        "cluster: the written placement of replica {} does not fit: {err}",
                        e.id
                    );
                }
            }
        }
        Placer { scheme, ring }
    }

    /// Where `id` is, placing it now if it is new.
    fn slots(&mut self, id: ServerId) -> Option<Slots> {
        if !self.ring.contains(id) {
            self.ring.add(id).ok()?;
        }
        Some(Slots {
            scheme: self.scheme.to_string(),
            slots: self.ring.slots_of(id),
        })
    }
}

fn enabled() -> bool {
    true
}

/// What the leader's value in the election says: where to send `/add`, `/rm` and
/// replica controls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    /// The balancer's id (`<hostname>-<pid>`).
    pub id: String,
    /// `host:port` its admin calls are served on.
    pub admin: String,
}

impl Entry {
    /// The entry of a member as its source reports it.
    pub fn of(m: &Member) -> Entry {
        Entry {
            id: m.id,
            state: m.state,
            address: m.address.clone(),
            grpc_address: m.grpc_address.clone(),
            restarts: m.restarts,
            handle: m.handle.clone(),
            enabled: m.enabled,
            placement: None,
        }
    }
}

/// One write to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put { name: String, entry: Entry },
    Delete { name: String },
}

/// The writes a batch of the managed source's changes makes, given what is written
/// already (`written`, by name), which they update. A replica adopted by a new
/// leader is reported `starting` until its heartbeat answers, but it is the same
/// incarnation that was serving: writing that would take it out of every
/// balancer's ring for nothing, so it is not written.
pub fn writes(
    written: &mut BTreeMap<String, Entry>,
    mut placer: Option<&mut Placer>,
    changes: &[Change],
) -> Vec<Write> {
    let mut out = Vec::new();
    for change in changes {
        match change {
            Change::Upsert(m) => {
                let mut entry = Entry::of(m);
                let before = written.get(&m.hostname);
                entry.placement = before
                    .and_then(|b| b.placement.clone())
                    .or_else(|| placer.as_deref_mut().and_then(|p| p.slots(m.id)));
                let readopted = before.is_some_and(|b| {
                    entry.state == ReplicaState::Starting
                        && matches!(b.state, ReplicaState::Healthy | ReplicaState::Disabled)
                        && b.handle.is_some()
                        && b.handle == entry.handle
                });
                if readopted || before == Some(&entry) {
                    continue;
                }
                written.insert(m.hostname.clone(), entry.clone());
                out.push(Write::Put {
                    name: m.hostname.clone(),
                    entry,
                });
            }
            Change::Remove(id) => {
                let name = written
                    .iter()
                    .find(|(_, e)| e.id == *id)
                    .map(|(n, _)| n.clone());
                if let Some(name) = name {
                    written.remove(&name);
                    out.push(Write::Delete { name });
                }
                if let Some(p) = placer.as_deref_mut() {
                    p.ring.remove(*id);
                }
            }
            // The managed source decides no placements: the leader does, here.
            Change::Place(..) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::claims::Owner;

    fn member(name: &str, id: ServerId, state: ReplicaState, handle: &str) -> Member {
        Member {
            id,
            hostname: name.into(),
            state,
            address: Some(format!("127.0.0.1:{}", 6000 + id)),
            handle: Some(handle.into()),
            restarts: 0,
            backend: None,
            enabled: true,
            owner: Owner::Managed,
            grpc_address: None,
        }
    }

    #[test]
    fn an_entry_reads_back_as_written_and_old_fields_default() {
        let e = Entry::of(&member("S1", 1, ReplicaState::Healthy, "c1"));
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), e);
        let minimal: Entry = serde_json::from_str(r#"{"id": 4, "state": "down"}"#).unwrap();
        assert!(minimal.enabled && minimal.address.is_none());
        assert!(serde_json::from_str::<Entry>(r#"{"id": 4, "state": "gone"}"#).is_err());
    }

    #[test]
    fn changes_are_written_once_and_removals_delete_by_name() {
        let mut written = BTreeMap::new();
        let up = Change::Upsert(member("S1", 1, ReplicaState::Healthy, "c1"));
        assert_eq!(
            writes(&mut written, None, std::slice::from_ref(&up)).len(),
            1
        );
        assert!(
            writes(&mut written, None, &[up]).is_empty(),
            "unchanged: no write"
        );
        let gone = writes(&mut written, None, &[Change::Remove(1)]);
        assert_eq!(gone, [Write::Delete { name: "S1".into() }]);
        assert!(writes(&mut written, None, &[Change::Remove(1)]).is_empty());
    }

    #[test]
    fn a_new_leader_adopting_a_serving_replica_does_not_take_it_out_of_the_ring() {
        let mut written = BTreeMap::new();
        writes(
            &mut written,
            None,
            &[Change::Upsert(member("S1", 1, ReplicaState::Healthy, "c1"))],
        );
        let adopted = Change::Upsert(member("S1", 1, ReplicaState::Starting, "c1"));
        assert!(writes(&mut written, None, &[adopted]).is_empty());
        // A new incarnation starting is news.
        let respawn = Change::Upsert(member("S1", 1, ReplicaState::Starting, "c2"));
        assert_eq!(writes(&mut written, None, &[respawn]).len(), 1);
    }

    #[test]
    fn a_new_replica_is_placed_by_the_leaders_ring_and_keeps_its_slots_after() {
        let geometry = crate::ring::Geometry::DEFAULT;
        let scheme = crate::scheme::by_name("quadratic").unwrap();
        let mut written = BTreeMap::new();
        let mut placer = Placer::new("quadratic", Ring::new(geometry, scheme.clone()), &written);
        let ups: Vec<Change> = (1..=3)
            .map(|id| Change::Upsert(member(&format!("S{id}"), id, ReplicaState::Healthy, "c")))
            .collect();
        writes(&mut written, Some(&mut placer), &ups);
        // As a single balancer's ring places them.
        let mut alone = Ring::new(geometry, scheme.clone());
        for id in 1..=3 {
            alone.add(id).unwrap();
            let p = written[&format!("S{id}")].placement.clone().unwrap();
            assert_eq!(
                (p.scheme.as_str(), p.slots),
                ("quadratic", alone.slots_of(id))
            );
        }
        // A respawn keeps them; a new leader reads them back and places after them.
        let before = written["S2"].placement.clone();
        writes(
            &mut written,
            Some(&mut placer),
            &[Change::Upsert(member(
                "S2",
                2,
                ReplicaState::Starting,
                "c9",
            ))],
        );
        assert_eq!(written["S2"].placement, before);
        let mut next = Placer::new("quadratic", Ring::new(geometry, scheme), &written);
        assert_eq!(next.ring.slots(), alone.slots());
        alone.add(4).unwrap();
        assert_eq!(next.slots(4).unwrap().slots, alone.slots_of(4));
    }

    #[test]
    fn keys_live_under_the_instance() {
        assert_eq!(replicas_prefix("lb"), "/lb/lb/cluster/replicas/");
        assert_eq!(election_name("x"), "/lb/x/cluster/leader");
    }
}
