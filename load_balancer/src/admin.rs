//! The `/add` and `/rm` requests: parsing, validation and planning, with no I/O.
//!
//! A request is checked whole against the current replica set before anything is
//! started or stopped, so a refused request changes nothing.

use std::collections::HashSet;

use rand::seq::SliceRandom;
use serde_json::Value;

use crate::backend::ServerId;
use crate::error::ApiError;

/// The largest body the admin endpoints read.
pub const MAX_BODY: usize = 64 * 1024;

/// The longest replica name: Docker's container-name limit.
pub const MAX_NAME_LEN: usize = 63;

/// Which endpoint a request came to; the two word their errors differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Remove,
}

/// A parsed `{"n": …, "hostnames": […]}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleRequest {
    pub n: usize,
    pub hostnames: Vec<String>,
}

/// A replica as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub hostname: String,
    pub id: ServerId,
}

/// Parses and validates a body, on its own (not yet against the replica set).
pub fn parse(body: &[u8], op: Op) -> Result<ScaleRequest, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::PayloadTooLarge { limit: MAX_BODY });
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("Request body is not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::bad("Request body must be a JSON object"))?;
    let n = match obj.get("n") {
        None => return Err(ApiError::bad("Field 'n' is missing")),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::bad("Field 'n' must be a positive integer"))?,
    };
    let hostnames = match obj.get("hostnames") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad("Field 'hostnames' must be a list of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::bad("Field 'hostnames' must be a list of strings")),
    };
    if hostnames.len() as u64 > n {
        return Err(ApiError::bad(match op {
            Op::Add => "Length of hostname list is more than newly added instances",
            Op::Remove => "Length of hostname list is more than removable instances",
        }));
    }
    let mut seen = HashSet::new();
    for name in &hostnames {
        validate_name(name)?;
        if !seen.insert(name.as_str()) {
            return Err(ApiError::bad(format!("Hostname '{name}' is given twice")));
        }
    }
    // `n` fits in usize once it is no larger than the ring's capacity, which the
    // planners check; saturate rather than truncate on the way.
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    Ok(ScaleRequest { n, hostnames })
}

/// Checks that `name` is a valid Docker container name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`,
/// at most 63 characters. Names reach `docker` and logs, so nothing else gets through.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let shown: String = name.chars().take(MAX_NAME_LEN + 1).collect();
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if name.len() > MAX_NAME_LEN {
        Err(ApiError::bad(format!(
            "Hostname '{shown}…' is longer than {MAX_NAME_LEN} characters"
        )))
    } else if !ok_first || !ok_rest {
        Err(ApiError::bad(format!(
            "Hostname {shown:?} is not valid: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )))
    } else {
        Ok(())
    }
}

/// The replicas an `/add` creates: the given names first, then generated
/// `Server<k>` names, each with the smallest free id. `capacity` is the most
/// replicas the balancer may hold.
pub fn plan_add(
    current: &[Member],
    req: &ScaleRequest,
    capacity: usize,
) -> Result<Vec<Member>, ApiError> {
    if req.n > capacity.saturating_sub(current.len()) {
        return Err(ApiError::bad(format!(
            "Cannot add {} replicas: {} are running and at most {capacity} fit",
            req.n,
            current.len()
        )));
    }
    let used: HashSet<&str> = current.iter().map(|m| m.hostname.as_str()).collect();
    if let Some(taken) = req.hostnames.iter().find(|h| used.contains(h.as_str())) {
        return Err(ApiError::Conflict(format!(
            "Hostname '{taken}' is already in use"
        )));
    }
    let mut names: Vec<String> = req.hostnames.clone();
    let mut k = 1;
    while names.len() < req.n {
        let candidate = format!("Server{k}");
        if !used.contains(candidate.as_str()) && !names.contains(&candidate) {
            names.push(candidate);
        }
        k += 1;
    }
    let ids = free_ids(current.iter().map(|m| m.id), req.n);
    Ok(names
        .into_iter()
        .zip(ids)
        .map(|(hostname, id)| Member { hostname, id })
        .collect())
}

/// The replicas an `/rm` removes: the named ones, then others chosen at random.
pub fn plan_remove(current: &[Member], req: &ScaleRequest) -> Result<Vec<Member>, ApiError> {
    if req.n > current.len() {
        return Err(ApiError::bad(format!(
            "Cannot remove {} replicas: only {} exist",
            req.n,
            current.len()
        )));
    }
    let mut chosen = Vec::with_capacity(req.n);
    for name in &req.hostnames {
        let member = current
            .iter()
            .find(|m| &m.hostname == name)
            .ok_or_else(|| ApiError::bad(format!("Hostname '{name}' is not a replica")))?;
        chosen.push(member.clone());
    }
    let mut others: Vec<&Member> = current
        .iter()
        .filter(|m| !req.hostnames.contains(&m.hostname))
        .collect();
    others.shuffle(&mut rand::thread_rng());
    chosen.extend(others.into_iter().take(req.n - chosen.len()).cloned());
    Ok(chosen)
}

/// The `count` smallest positive ids not in `used`.
pub fn free_ids(used: impl IntoIterator<Item = ServerId>, count: usize) -> Vec<ServerId> {
    let used: HashSet<ServerId> = used.into_iter().collect();
    (1..).filter(|id| !used.contains(id)).take(count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[(&str, ServerId)]) -> Vec<Member> {
        names
            .iter()
            .map(|(h, id)| Member {
                hostname: h.to_string(),
                id: *id,
            })
            .collect()
    }

    fn msg(e: ApiError) -> String {
        e.to_string()
    }

    #[test]
    fn a_well_formed_body_parses() {
        let r = parse(br#"{"n": 2, "hostnames": ["S5", "S4"]}"#, Op::Add).unwrap();
        assert_eq!(r.n, 2);
        assert_eq!(r.hostnames, vec!["S5", "S4"]);
        assert_eq!(parse(br#"{"n": 1}"#, Op::Add).unwrap().hostnames.len(), 0);
    }

    #[test]
    fn more_hostnames_than_n_gives_the_specified_messages() {
        let body = br#"{"n": 1, "hostnames": ["a", "b"]}"#;
        assert_eq!(
            msg(parse(body, Op::Add).unwrap_err()),
            "Length of hostname list is more than newly added instances"
        );
        assert_eq!(
            msg(parse(body, Op::Remove).unwrap_err()),
            "Length of hostname list is more than removable instances"
        );
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        let cases: &[&[u8]] = &[
            b"",
            b"{",
            b"[1]",
            b"\"n\"",
            br#"{"hostnames": []}"#,
            br#"{"n": 0}"#,
            br#"{"n": -1}"#,
            br#"{"n": 1.5}"#,
            br#"{"n": "2"}"#,
            br#"{"n": null}"#,
            br#"{"n": 1, "hostnames": "S1"}"#,
            br#"{"n": 1, "hostnames": [1]}"#,
            br#"{"n": 2, "hostnames": ["a", "a"]}"#,
            br#"{"n": 99999999999999999999999}"#,
        ];
        for body in cases {
            let err = parse(body, Op::Add).unwrap_err();
            assert!(
                matches!(err, ApiError::BadRequest(_)),
                "{:?}: {err:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_body_over_64_kib_is_refused_before_parsing() {
        let body = vec![b' '; MAX_BODY + 1];
        assert_eq!(
            parse(&body, Op::Add).unwrap_err(),
            ApiError::PayloadTooLarge { limit: MAX_BODY }
        );
    }

    #[test]
    fn names_docker_would_refuse_are_refused() {
        let long = "a".repeat(300);
        for bad in [
            "",
            "a b",
            "a/b",
            "$(reboot)",
            "-a",
            ".a",
            "_a",
            "Ünï",
            "a\nb",
            "a;b",
            &long,
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["S1", "server-1", "a.b_c-d", "9", &"a".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn added_replicas_take_given_names_then_generated_ones_and_the_smallest_free_ids() {
        let current = members(&[("Server1", 1), ("Server3", 3)]);
        let req = ScaleRequest {
            n: 3,
            hostnames: vec!["Server2".into()],
        };
        let plan = plan_add(&current, &req, 56).unwrap();
        assert_eq!(
            plan,
            members(&[("Server2", 2), ("Server4", 4), ("Server5", 5)])
        );
    }

    #[test]
    fn adding_a_name_in_use_or_past_capacity_is_refused() {
        let current = members(&[("Server1", 1)]);
        let taken = ScaleRequest {
            n: 1,
            hostnames: vec!["Server1".into()],
        };
        assert!(matches!(
            plan_add(&current, &taken, 56),
            Err(ApiError::Conflict(_))
        ));
        let too_many = ScaleRequest {
            n: 56,
            hostnames: vec![],
        };
        assert!(plan_add(&current, &too_many, 56).is_err());
        assert!(plan_add(
            &current,
            &ScaleRequest {
                n: usize::MAX,
                hostnames: vec![]
            },
            56
        )
        .is_err());
    }

    #[test]
    fn removal_takes_named_replicas_then_random_others() {
        let current = members(&[("A", 1), ("B", 2), ("C", 3), ("D", 4)]);
        let req = ScaleRequest {
            n: 3,
            hostnames: vec!["C".into()],
        };
        let plan = plan_remove(&current, &req).unwrap();
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[0].hostname, "C");
        let names: HashSet<_> = plan.iter().map(|m| m.hostname.clone()).collect();
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn removing_an_unknown_name_or_more_than_exist_is_refused() {
        let current = members(&[("A", 1)]);
        let unknown = ScaleRequest {
            n: 1,
            hostnames: vec!["Z".into()],
        };
        assert!(plan_remove(&current, &unknown).is_err());
        let many = ScaleRequest {
            n: 2,
            hostnames: vec![],
        };
        assert!(plan_remove(&current, &many).is_err());
    }

    #[test]
    fn free_ids_fill_gaps_first() {
        assert_eq!(free_ids([1, 2, 4], 3), vec![3, 5, 6]);
        assert_eq!(free_ids([], 2), vec![1, 2]);
    }
}
