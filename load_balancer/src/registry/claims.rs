//! Names and ids across sources. Every backend, whichever source it comes from
//! (managed, registered, etcd), needs a name no other has and an id that places it
//! on the ring: the smallest positive one not in use, as SPEC.md says. Sources claim
//! both here before they tell the registry, so two sources can never hand out the
//! same id, and the ring's capacity counts every backend.
//!
//! A mutex, but one the request path never touches: sources take it for a few
//! microseconds while planning, never across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::admin::{self, Member, ScaleRequest};
use crate::backend::ServerId;
use crate::error::ApiError;

/// Who claimed a name and id: the source a backend comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    /// Replicas the balancer runs.
    Managed,
    /// Backends that registered themselves (gRPC or HTTP).
    Registered,
    /// Backends found in etcd.
    Discovered,
}

/// The claims of every source; cheap to clone, shared.
#[derive(Debug, Clone)]
pub struct Claims {
    inner: Arc<Mutex<BTreeMap<ServerId, (String, Owner)>>>,
    capacity: usize,
}

impl Claims {
    /// No claims; at most `capacity` at once (the ring's).
    pub fn new(capacity: usize) -> Self {
        Claims {
            inner: Arc::default(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<ServerId, (String, Owner)>> {
        // A panic elsewhere while holding it leaves the map consistent: every
        // change below is one insert or remove.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn members(map: &BTreeMap<ServerId, (String, Owner)>) -> Vec<Member> {
        map.iter()
            .map(|(id, (hostname, _))| Member {
                id: *id,
                hostname: hostname.clone(),
            })
            .collect()
    }

    /// Plans an `/add` against every source's names and ids, and claims the plan's.
    pub fn plan_add(&self, owner: Owner, req: &ScaleRequest) -> Result<Vec<Member>, ApiError> {
        let mut map = self.lock();
        let plan = admin::plan_add(&Self::members(&map), req, self.capacity)?;
        for m in &plan {
            map.insert(m.id, (m.hostname.clone(), owner));
        }
        Ok(plan)
    }

    /// Claims a name with a known id (a replica adopted after a restart); false if
    /// either is taken or the id is outside the ring.
    pub fn claim_as(&self, owner: Owner, hostname: &str, id: ServerId) -> bool {
        let mut map = self.lock();
        let taken = id == 0
            || id as usize > self.capacity
            || map.contains_key(&id)
            || map.values().any(|(h, _)| h == hostname);
        if !taken {
            map.insert(id, (hostname.to_string(), owner));
        }
        !taken
    }

    /// Claims a name with the smallest free id: the id it already has if `owner`
    /// holds the name, an error if another source holds it or the ring is full.
    pub fn claim(&self, owner: Owner, hostname: &str) -> Result<ServerId, ApiError> {
        let mut map = self.lock();
        if let Some((id, (_, by))) = map.iter().find(|(_, (h, _))| h == hostname) {
            return if *by == owner {
                Ok(*id)
            } else {
                Err(ApiError::Conflict(format!(
                    "Hostname '{hostname}' is already in use"
                )))
            };
        }
        let req = ScaleRequest {
            n: 1,
            hostnames: vec![hostname.to_string()],
        };
        let plan = admin::plan_add(&Self::members(&map), &req, self.capacity)?;
        let id = plan[0].id;
        map.insert(id, (hostname.to_string(), owner));
        Ok(id)
    }

    /// Gives an id (and its name) back.
    pub fn release(&self, id: ServerId) {
        self.lock().remove(&id);
    }

    /// Who holds `hostname`, and its id.
    #[cfg(test)]
    pub fn holder(&self, hostname: &str) -> Option<(ServerId, Owner)> {
        self.lock()
            .iter()
            .find(|(_, (h, _))| h == hostname)
            .map(|(id, (_, owner))| (*id, *owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_share_the_smallest_free_ids_and_never_the_same_one() {
        let claims = Claims::new(56);
        let req = ScaleRequest {
            n: 2,
            hostnames: vec![],
        };
        let plan = claims.plan_add(Owner::Managed, &req).unwrap();
        assert_eq!(plan.iter().map(|m| m.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(claims.claim(Owner::Registered, "b1").unwrap(), 3);
        claims.release(1);
        assert_eq!(claims.claim(Owner::Registered, "b2").unwrap(), 1);
        let more = claims.plan_add(Owner::Managed, &req).unwrap();
        assert_eq!(more.iter().map(|m| m.id).collect::<Vec<_>>(), [4, 5]);
    }

    #[test]
    fn a_name_is_one_sources_and_claiming_it_again_keeps_its_id() {
        let claims = Claims::new(56);
        let id = claims.claim(Owner::Registered, "b1").unwrap();
        assert_eq!(claims.claim(Owner::Registered, "b1").unwrap(), id);
        assert!(matches!(
            claims.claim(Owner::Discovered, "b1"),
            Err(ApiError::Conflict(_))
        ));
        let req = ScaleRequest {
            n: 1,
            hostnames: vec!["b1".into()],
        };
        assert!(claims.plan_add(Owner::Managed, &req).is_err());
        assert_eq!(claims.holder("b1"), Some((id, Owner::Registered)));
        assert!(!claims.claim_as(Owner::Managed, "b1", 9));
        assert!(!claims.claim_as(Owner::Managed, "other", id));
        assert!(claims.claim_as(Owner::Managed, "other", 9));
    }

    #[test]
    fn a_full_ring_refuses_one_more_from_any_source() {
        let claims = Claims::new(2);
        claims.claim(Owner::Registered, "a").unwrap();
        claims.claim(Owner::Discovered, "b").unwrap();
        assert!(claims.claim(Owner::Registered, "c").is_err());
        let req = ScaleRequest {
            n: 1,
            hostnames: vec![],
        };
        assert!(claims.plan_add(Owner::Managed, &req).is_err());
    }
}
