//! The etcd task without etcd: what it does with puts, deletes and listings.

use super::*;

const PREFIX: &str = "/lb/t/backends/";

fn task() -> (EtcdTask, Claims, mpsc::UnboundedReceiver<Batch>) {
    let (changes, rx) = mpsc::unbounded_channel();
    let claims = Claims::new(56);
    let settings = EtcdSettings {
        endpoints: vec!["http://127.0.0.1:1".into()],
        instance: "t".into(),
    };
    let task = EtcdTask::new(
        settings,
        "lb-1",
        claims.clone(),
        Arc::new(Metrics::new()),
        changes,
    );
    (task, claims, rx)
}

fn key(name: &str) -> Vec<u8> {
    format!("{PREFIX}{name}").into_bytes()
}

fn value(http: &str, load: u32, available: bool) -> Vec<u8> {
    format!(r#"{{"address": "127.0.0.1:7000", "http_address": "{http}", "load": {load}, "available": {available}}}"#)
        .into_bytes()
}

fn put(t: &mut EtcdTask, name: &str, value: &[u8]) {
    let key = key(name);
    t.on_events([Event::Put(&key, value)]);
}

fn delete(t: &mut EtcdTask, name: &str) {
    let key = key(name);
    t.on_events([Event::Delete(&key)]);
}

fn next(rx: &mut mpsc::UnboundedReceiver<Batch>) -> Vec<Change> {
    rx.try_recv().expect("a batch").changes
}

fn upserted(change: &Change) -> &Member {
    match change {
        Change::Upsert(m) => m,
        other => panic!("{other:?}, not upserted"),
    }
}

#[test]
fn the_balancers_own_key_is_under_the_balancers_prefix() {
    let (t, _, _) = task();
    assert_eq!(t.me_key, "/lb/t/balancers/lb-1");
    assert_eq!(t.backends, PREFIX);
}

#[test]
fn a_put_joins_a_backend_the_data_plane_routes_to_and_a_delete_releases_its_id() {
    let (mut t, claims, mut rx) = task();
    put(&mut t, "b1", &value("127.0.0.1:8001", 2, true));
    let changes = next(&mut rx);
    let m = upserted(&changes[0]);
    assert_eq!(m.hostname, "b1");
    assert_eq!(m.address.as_deref(), Some("127.0.0.1:8001"));
    assert_eq!(m.grpc_address.as_deref(), Some("127.0.0.1:7000"));
    assert_eq!(
        (m.owner, m.state, m.enabled),
        (Owner::Discovered, ReplicaState::Healthy, true)
    );
    assert_eq!(m.backend.as_ref().unwrap().reported_load(), 2);
    assert_eq!(claims.holder("b1"), Some((m.id, Owner::Discovered)));
    let id = m.id;
    delete(&mut t, "b1");
    assert!(matches!(next(&mut rx)[..], [Change::Remove(gone)] if gone == id));
    assert_eq!(claims.holder("b1"), None);
    assert!(t.held.is_empty());
}

#[test]
fn a_backend_without_an_http_address_is_only_for_look_aside_clients() {
    let (mut t, _, mut rx) = task();
    put(&mut t, "g1", br#"{"address": "127.0.0.1:7001"}"#);
    let changes = next(&mut rx);
    let m = upserted(&changes[0]);
    assert_eq!(m.address, None);
    assert_eq!(m.grpc_address.as_deref(), Some("127.0.0.1:7001"));
}

#[test]
fn a_rewrite_with_a_new_load_is_a_report_and_sends_no_batch() {
    let (mut t, _, mut rx) = task();
    put(&mut t, "b1", &value("127.0.0.1:8001", 0, true));
    next(&mut rx);
    put(&mut t, "b1", &value("127.0.0.1:8001", 7, false));
    put(&mut t, "b1", &value("127.0.0.1:8001", 7, false));
    assert!(rx.try_recv().is_err());
    let b = &t.held["b1"].backend;
    assert_eq!((b.reported_load(), b.available()), (7, false));
}

#[test]
fn a_backend_at_a_new_address_keeps_its_id_under_a_new_backend() {
    let (mut t, _, mut rx) = task();
    put(&mut t, "b1", &value("127.0.0.1:8001", 0, true));
    let first = upserted(&next(&mut rx)[0]).id;
    put(&mut t, "b1", &value("127.0.0.1:9001", 0, true));
    let changes = next(&mut rx);
    let moved = upserted(&changes[0]);
    assert_eq!(moved.id, first);
    assert_eq!(moved.address.as_deref(), Some("127.0.0.1:9001"));
}

#[test]
fn a_malformed_value_or_name_is_skipped_and_what_was_known_stays() {
    let (mut t, _, mut rx) = task();
    put(&mut t, "b1", &value("127.0.0.1:8001", 0, true));
    next(&mut rx);
    put(&mut t, "b1", b"{not json");
    put(&mut t, "b2", br#"{"http_address": "nowhere"}"#);
    put(&mut t, "a/b", &value("127.0.0.1:8002", 0, true));
    put(&mut t, "-x", &value("127.0.0.1:8003", 0, true));
    assert!(rx.try_recv().is_err());
    assert_eq!(t.held.keys().collect::<Vec<_>>(), ["b1"]);
    assert_eq!(
        t.held["b1"].announced.http_address.as_deref(),
        Some("127.0.0.1:8001")
    );
    assert_eq!(t.quiet.len(), 4, "{:?}", t.quiet);
}

#[test]
fn a_name_another_source_holds_is_skipped_and_stays_theirs() {
    let (mut t, claims, mut rx) = task();
    let theirs = claims.claim(Owner::Managed, "Server1").unwrap();
    put(&mut t, "Server1", &value("127.0.0.1:8001", 0, true));
    put(&mut t, "Server1", &value("127.0.0.1:8001", 1, true));
    assert!(rx.try_recv().is_err());
    assert!(t.held.is_empty());
    assert_eq!(claims.holder("Server1"), Some((theirs, Owner::Managed)));
    // Its delete does not touch the other source's backend either.
    delete(&mut t, "Server1");
    assert!(rx.try_recv().is_err());
    assert_eq!(claims.holder("Server1"), Some((theirs, Owner::Managed)));
}

#[test]
fn a_resync_removes_the_vanished_updates_the_changed_and_joins_the_new_in_one_batch() {
    let (mut t, claims, mut rx) = task();
    put(&mut t, "a", &value("127.0.0.1:8001", 0, true));
    put(&mut t, "b", &value("127.0.0.1:8002", 0, true));
    let a = t.held["a"].id;
    let b = t.held["b"].id;
    while rx.try_recv().is_ok() {}
    let (kb, vb) = (key("b"), value("127.0.0.1:9002", 0, true));
    let (kc, vc) = (key("c"), value("127.0.0.1:8003", 0, true));
    t.resync([(&kb[..], &vb[..]), (&kc[..], &vc[..])]);
    let changes = next(&mut rx);
    assert!(matches!(changes[0], Change::Remove(id) if id == a));
    assert_eq!(upserted(&changes[1]).id, b);
    assert_eq!(
        upserted(&changes[1]).address.as_deref(),
        Some("127.0.0.1:9002")
    );
    // The id `a` freed is the smallest free one again.
    assert_eq!(
        (
            upserted(&changes[2]).hostname.as_str(),
            upserted(&changes[2]).id
        ),
        ("c", a)
    );
    assert_eq!(claims.holder("a"), None);
    // Nothing changed since: an identical listing sends nothing.
    t.resync([(&kb[..], &vb[..]), (&kc[..], &vc[..])]);
    assert!(rx.try_recv().is_err());
}

#[test]
fn a_resync_forgets_the_warnings_of_keys_that_are_gone() {
    let (mut t, _, _) = task();
    put(&mut t, "b1", b"bad");
    assert!(t.quiet.contains_key(&format!("{PREFIX}b1")));
    t.resync(std::iter::empty());
    assert!(t.quiet.is_empty());
}
