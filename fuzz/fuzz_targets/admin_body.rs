//! Arbitrary bytes as an `/add` or `/rm` body: `admin::parse` for both endpoints,
//! then, for what parses, `plan_add` and `plan_remove` against a fixed replica set.
//! Nothing may panic, and every plan must be one the balancer can carry out.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use load_balancer::admin::{self, Member, Op, ScaleRequest, MAX_BODY};
use load_balancer::error::ApiError;

/// The replicas the plans are made against: ids with a gap, generated and given names.
fn current() -> Vec<Member> {
    [("Server1", 1), ("Server3", 3), ("web-a", 4), ("S5", 7)]
        .into_iter()
        .map(|(h, id)| Member {
            hostname: h.to_string(),
            id,
        })
        .collect()
}

fn check_request(body: &[u8], op: Op, req: &ScaleRequest) {
    assert!(body.len() <= MAX_BODY);
    assert!(req.n >= 1, "n = 0 accepted");
    assert!(req.hostnames.len() <= req.n, "more names than n accepted");
    let mut seen = HashSet::new();
    for name in &req.hostnames {
        assert!(
            admin::validate_name(name).is_ok(),
            "{op:?}: invalid {name:?}"
        );
        assert!(seen.insert(name), "{op:?}: {name:?} twice");
    }
}

fn check_add(current: &[Member], req: &ScaleRequest, capacity: usize) {
    let in_use: HashSet<&str> = current.iter().map(|m| m.hostname.as_str()).collect();
    let used_ids: HashSet<u32> = current.iter().map(|m| m.id).collect();
    let too_many = req.n > capacity.saturating_sub(current.len());
    let taken = req.hostnames.iter().any(|h| in_use.contains(h.as_str()));
    match admin::plan_add(current, req, capacity) {
        Ok(plan) => {
            assert!(!too_many && !taken, "refusable add planned: {req:?}");
            assert_eq!(plan.len(), req.n);
            assert!(current.len() + plan.len() <= capacity);
            // The given names first, in order, then generated ones.
            for (m, h) in plan.iter().zip(&req.hostnames) {
                assert_eq!(&m.hostname, h);
            }
            let mut names = HashSet::new();
            let mut ids = HashSet::new();
            for m in &plan {
                assert!(admin::validate_name(&m.hostname).is_ok(), "{m:?}");
                assert!(!in_use.contains(m.hostname.as_str()), "{m:?} in use");
                assert!(names.insert(m.hostname.clone()), "{m:?} twice");
                assert!(m.id >= 1 && !used_ids.contains(&m.id), "{m:?} id in use");
                assert!(ids.insert(m.id), "{m:?} id twice");
            }
        }
        Err(ApiError::Conflict(_)) => assert!(taken && !too_many),
        Err(ApiError::BadRequest(_)) => assert!(too_many),
        Err(e) => panic!("unexpected error from plan_add: {e:?}"),
    }
}

fn check_remove(current: &[Member], req: &ScaleRequest) {
    let unknown = req
        .hostnames
        .iter()
        .any(|h| !current.iter().any(|m| &m.hostname == h));
    match admin::plan_remove(current, req) {
        Ok(plan) => {
            assert!(req.n <= current.len() && !unknown, "refusable rm planned");
            assert_eq!(plan.len(), req.n);
            for (m, h) in plan.iter().zip(&req.hostnames) {
                assert_eq!(&m.hostname, h);
            }
            let mut names = HashSet::new();
            for m in &plan {
                assert!(current.contains(m), "{m:?} is not a replica");
                assert!(names.insert(m.hostname.clone()), "{m:?} twice");
            }
        }
        Err(ApiError::BadRequest(_)) => assert!(req.n > current.len() || unknown),
        Err(e) => panic!("unexpected error from plan_remove: {e:?}"),
    }
}

fuzz_target!(|body: &[u8]| {
    let add = admin::parse(body, Op::Add);
    let rm = admin::parse(body, Op::Remove);
    // The endpoints differ only in their messages.
    match (&add, &rm) {
        (Ok(a), Ok(r)) => assert_eq!(a, r),
        (Err(a), Err(r)) => assert_eq!(
            std::mem::discriminant(a),
            std::mem::discriminant(r),
            "{a:?} vs {r:?}"
        ),
        _ => panic!("the endpoints disagree: {add:?} vs {rm:?}"),
    }
    if let Err(e) = &add {
        assert!(
            matches!(
                e,
                ApiError::BadRequest(_) | ApiError::PayloadTooLarge { .. }
            ),
            "{e:?}"
        );
        return;
    }
    let current = current();
    for (op, req) in [(Op::Add, add.unwrap()), (Op::Remove, rm.unwrap())] {
        check_request(body, op, &req);
        match op {
            Op::Add => {
                // The real ring's capacity, and one that is nearly reached.
                check_add(&current, &req, 56);
                check_add(&current, &req, current.len() + 2);
                check_add(&[], &req, 3);
            }
            Op::Remove => {
                check_remove(&current, &req);
                check_remove(&[], &req);
            }
        }
    }
});
