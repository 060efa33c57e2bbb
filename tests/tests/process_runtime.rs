//! The real `load_balancer` binary with the `process` runtime: real `server` children.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{
    alive, poll, process_balancer, rep_names, replaced, replicas, wait_healthy, Load, Service,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(30);

fn balancer(extra: &[&str]) -> Service {
    process_balancer(extra)
}

fn pids(lb: &Service) -> Vec<u32> {
    replicas(lb)
        .iter()
        .filter_map(|r| r["handle"].as_str()?.parse().ok())
        .collect()
}

/// `kill -9` of the second replica in `/status`; it and when it was killed.
fn kill_second_replica(lb: &Service) -> (Value, Instant) {
    let victim = replicas(lb)[1].clone();
    let pid = victim["handle"].as_str().unwrap().parse().unwrap();
    let killed_at = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    (victim, killed_at)
}

fn failure(message: &str) -> Value {
    json!({"message": format!("<Error> {message}"), "status": "failure"})
}

#[test]
fn boot_starts_three_replicas_named_server1_to_server3() {
    let lb = balancer(&[]);
    let rep = lb.get("/rep");
    assert_eq!(rep.status, 200);
    assert_eq!(
        rep.json(),
        json!({"message": {"N": 3, "replicas": ["Server1", "Server2", "Server3"]}, "status": "successful"})
    );
    assert!(pids(&lb).iter().all(|p| alive(*p)));
}

#[test]
fn home_is_forwarded_and_says_who_served_it() {
    let lb = balancer(&[]);
    let mut served = std::collections::HashSet::new();
    for _ in 0..200 {
        let r = lb.get("/home");
        assert_eq!(r.status, 200, "{}", r.body);
        let by = r.header("x-served-by").expect("X-Served-By").to_string();
        assert_eq!(
            r.json(),
            json!({"message": format!("Hello from Server: {by}"), "status": "successful"})
        );
        served.insert(by);
    }
    assert!(served.len() >= 2, "random ids reached only {served:?}");
}

#[test]
fn a_path_the_replicas_do_not_serve_is_a_400_with_the_specified_message() {
    let lb = balancer(&[]);
    let r = lb.get("/does/not/exist");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        failure("'/does/not/exist' endpoint does not exist in server replicas")
    );
}

#[test]
fn heartbeat_is_forwarded_too() {
    let lb = balancer(&[]);
    let r = lb.get("/heartbeat");
    assert_eq!(r.status, 200);
    assert!(r.header("x-served-by").is_some());
}

#[test]
fn add_starts_named_and_generated_replicas_and_rm_stops_them() {
    let lb = balancer(&[]);
    let r = lb.send("POST", "/add", Some(r#"{"n": 2, "hostnames": ["S5"]}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"message": {"N": 5, "replicas": ["Server1", "Server2", "Server3", "S5", "Server4"]}, "status": "successful"})
    );
    wait_healthy(&lb, 5, BOOT);
    let before = pids(&lb);

    let r = lb.send("DELETE", "/rm", Some(r#"{"n": 2, "hostnames": ["S5"]}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    let names = rep_names(&lb);
    assert_eq!(names.len(), 3);
    assert!(!names.contains(&"S5".to_string()));
    assert_eq!(r.json()["message"]["replicas"], json!(names));
    let after = pids(&lb);
    let gone: Vec<_> = before.iter().filter(|p| !after.contains(p)).collect();
    assert_eq!(gone.len(), 2);
    poll("removed processes to exit", Duration::from_secs(10), || {
        gone.iter().all(|p| !alive(**p)).then_some(())
    });
}

#[test]
fn every_bad_admin_request_is_refused_and_changes_nothing() {
    let lb = balancer(&[]);
    let big = format!(r#"{{"n": 1, "pad": "{}"}}"#, "x".repeat(70 * 1024));
    let long = "a".repeat(300);
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "POST",
            "/add",
            r#"{"n": 1, "hostnames": ["a", "b"]}"#.into(),
        ),
        (
            "DELETE",
            "/rm",
            r#"{"n": 1, "hostnames": ["a", "b"]}"#.into(),
        ),
        ("POST", "/add", "{not json".into()),
        ("POST", "/add", "".into()),
        ("POST", "/add", "[1, 2]".into()),
        ("POST", "/add", r#"{"hostnames": ["x"]}"#.into()),
        ("POST", "/add", r#"{"n": "2"}"#.into()),
        ("POST", "/add", r#"{"n": 1.5}"#.into()),
        ("POST", "/add", r#"{"n": 0}"#.into()),
        ("POST", "/add", r#"{"n": -3}"#.into()),
        ("POST", "/add", r#"{"n": 18446744073709551615}"#.into()),
        ("POST", "/add", r#"{"n": 1e30}"#.into()),
        ("POST", "/add", r#"{"n": 100}"#.into()),
        ("POST", "/add", r#"{"n": 1, "hostnames": "S9"}"#.into()),
        ("POST", "/add", r#"{"n": 1, "hostnames": [7]}"#.into()),
        (
            "POST",
            "/add",
            r#"{"n": 1, "hostnames": ["has space"]}"#.into(),
        ),
        ("POST", "/add", r#"{"n": 1, "hostnames": ["a/b"]}"#.into()),
        (
            "POST",
            "/add",
            r#"{"n": 1, "hostnames": ["$(reboot)"]}"#.into(),
        ),
        (
            "POST",
            "/add",
            r#"{"n": 1, "hostnames": ["sérveur"]}"#.into(),
        ),
        (
            "POST",
            "/add",
            format!(r#"{{"n": 1, "hostnames": ["{long}"]}}"#),
        ),
        (
            "POST",
            "/add",
            r#"{"n": 2, "hostnames": ["twin", "twin"]}"#.into(),
        ),
        (
            "POST",
            "/add",
            r#"{"n": 1, "hostnames": ["Server1"]}"#.into(),
        ),
        (
            "DELETE",
            "/rm",
            r#"{"n": 1, "hostnames": ["Nobody"]}"#.into(),
        ),
        ("DELETE", "/rm", r#"{"n": 4}"#.into()),
        ("DELETE", "/rm", r#"{"n": 0}"#.into()),
        ("POST", "/add", big),
    ];
    let pids_before = pids(&lb);
    for (method, path, body) in &cases {
        let r = lb.send(method, path, Some(body));
        assert!(
            (400..500).contains(&r.status),
            "{method} {path} {:.80}: {} {}",
            body,
            r.status,
            r.body
        );
        let v = r.json();
        assert_eq!(v["status"], "failure", "{}", r.body);
        assert!(
            v["message"].as_str().unwrap().starts_with("<Error> "),
            "{}",
            r.body
        );
    }
    assert_eq!(rep_names(&lb), ["Server1", "Server2", "Server3"]);
    assert_eq!(pids(&lb), pids_before);
}

#[test]
fn the_specified_messages_for_too_many_hostnames_are_exact() {
    let lb = balancer(&[]);
    let r = lb.send("POST", "/add", Some(r#"{"n": 1, "hostnames": ["a", "b"]}"#));
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            failure("Length of hostname list is more than newly added instances")
        )
    );
    let r = lb.send(
        "DELETE",
        "/rm",
        Some(r#"{"n": 1, "hostnames": ["a", "b"]}"#),
    );
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            failure("Length of hostname list is more than removable instances")
        )
    );
}

#[test]
fn status_shows_each_replica_and_the_hashing_in_use() {
    let lb = balancer(&["--hash-key", "header:x-user"]);
    let v = lb.get("/status").json();
    let m = &v["message"];
    assert_eq!(m["hash"], "quadratic");
    assert_eq!(m["hash_key"], "header:x-user");
    assert_eq!(m["runtime"], "process");
    for (i, r) in m["replicas"].as_array().unwrap().iter().enumerate() {
        assert_eq!(r["hostname"], format!("Server{}", i + 1));
        assert_eq!(r["id"], i + 1);
        assert_eq!(r["state"], "healthy");
        assert_eq!(r["restarts"], 0);
        assert!(r["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
}

#[test]
fn the_same_key_always_reaches_the_same_replica() {
    let lb = balancer(&["--hash-key", "header:x-user"]);
    for user in ["1", "42", "alice", "bob", "999999"] {
        let first = lb
            .try_send("GET", "/home", &[("x-user", user)], None)
            .unwrap();
        let owner = first.header("x-served-by").unwrap().to_string();
        for _ in 0..20 {
            let r = lb
                .try_send("GET", "/home", &[("x-user", user)], None)
                .unwrap();
            assert_eq!(r.header("x-served-by"), Some(owner.as_str()), "user {user}");
        }
    }
}

#[test]
fn a_killed_replica_is_replaced_under_the_same_name_while_traffic_keeps_flowing() {
    let lb = balancer(&[]);
    let load = Load::start(&lb.base, 1, Duration::from_secs(60));
    load.wait_for(20, Duration::from_secs(10));
    let (victim, killed_at) = kill_second_replica(&lb);
    let (name, handle) = (
        victim["hostname"].as_str().unwrap(),
        victim["handle"].as_str().unwrap(),
    );
    let back = poll(
        "the replacement to be healthy",
        Duration::from_secs(15),
        || replaced(&lb, name, handle),
    );
    eprintln!(
        "kill-to-healthy (process runtime): {:?}",
        killed_at.elapsed()
    );
    assert_eq!(back["id"], victim["id"]);
    assert_eq!(back["restarts"], 1);
    load.wait_for(20, Duration::from_secs(10));
    let (_, failed) = load.stop();
    assert_eq!(failed, 0, "requests failed during the kill");
    assert_eq!(rep_names(&lb), ["Server1", "Server2", "Server3"]);
}

#[test]
fn a_hung_replica_is_detected_by_heartbeats_and_replaced() {
    let lb = balancer(&[
        "--heartbeat-interval",
        "200ms",
        "--heartbeat-timeout",
        "200ms",
    ]);
    let victim = replicas(&lb)[0].clone();
    let (name, handle) = (
        victim["hostname"].as_str().unwrap(),
        victim["handle"].as_str().unwrap(),
    );
    let pid: i32 = handle.parse().unwrap();
    let stopped_at = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    poll(
        "the hung replica to be replaced",
        Duration::from_secs(15),
        || replaced(&lb, name, handle),
    );
    eprintln!("SIGSTOP-to-healthy: {:?}", stopped_at.elapsed());
    assert!(!alive(pid as u32), "the hung process was left running");
}

#[test]
fn sigterm_stops_the_balancer_cleanly_and_its_replicas_with_it() {
    let mut lb = balancer(&[]);
    let children = pids(&lb);
    let status = lb
        .stop_with(Signal::SIGTERM, Duration::from_secs(20))
        .expect("exited");
    assert!(status.success(), "{status:?}");
    poll("replicas to exit", Duration::from_secs(10), || {
        children.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn sigkill_of_the_balancer_takes_its_replicas_down_too() {
    let mut lb = balancer(&[]);
    let children = pids(&lb);
    lb.stop_with(Signal::SIGKILL, Duration::from_secs(10));
    poll("orphans to exit", Duration::from_secs(10), || {
        children.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn an_admin_token_guards_add_and_rm_but_not_reads() {
    let lb = balancer(&["--admin-token", "s3cret"]);
    let body = br#"{"n": 1}"#;
    let r = lb.try_send("POST", "/add", &[], Some(body)).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), failure("Missing or wrong admin token"));
    let wrong = [("authorization", "Bearer s3cre")];
    assert_eq!(
        lb.try_send("DELETE", "/rm", &wrong, Some(body))
            .unwrap()
            .status,
        401
    );
    assert_eq!(lb.get("/rep").status, 200);
    let right = [("authorization", "Bearer s3cret")];
    let r = lb.try_send("POST", "/add", &right, Some(body)).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(rep_names(&lb).len(), 4);
}

#[test]
fn the_ring_cap_refuses_replicas_that_do_not_fit() {
    let lb = balancer(&["--replicas", "1", "--slots", "20", "--virtual-nodes", "9"]);
    // floor(20 / 9) = 2 replicas fit.
    let r = lb.send("POST", "/add", Some(r#"{"n": 2}"#));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(lb.send("POST", "/add", Some(r#"{"n": 1}"#)).status, 200);
    assert_eq!(lb.send("POST", "/add", Some(r#"{"n": 1}"#)).status, 400);
    assert_eq!(rep_names(&lb).len(), 2);
}

#[test]
fn concurrent_adds_and_removes_are_applied_one_at_a_time() {
    let lb = Arc::new(balancer(&[]));
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let lb = lb.clone();
            std::thread::spawn(move || {
                if i % 3 == 2 {
                    lb.send("DELETE", "/rm", Some(r#"{"n": 1}"#)).status
                } else {
                    lb.send("POST", "/add", Some(r#"{"n": 1}"#)).status
                }
            })
        })
        .collect();
    let statuses: Vec<u16> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // 3 + 8 added - 4 removed.
    let names = rep_names(&lb);
    assert_eq!(names.len(), 7, "{names:?}");
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), 7);
    let live = pids(&lb);
    assert_eq!(live.len(), 7);
    assert!(live.iter().all(|p| alive(*p)));
    let ids: std::collections::HashSet<_> =
        replicas(&lb).iter().map(|r| r["id"].as_u64()).collect();
    assert_eq!(ids.len(), 7);
}

#[test]
fn a_replica_killed_during_a_slow_add_is_replaced_at_once() {
    // A wrapper around the server that makes the replica named "Slow" take 8 s to
    // start, and says when it began.
    let dir = std::env::temp_dir().join(format!("lb-slow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let started = dir.join("slow-started");
    let wrapper = dir.join("server");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$SERVER_ID\" = Slow ]; then touch '{}'; sleep 8; fi\nexec '{}' \"$@\"\n",
            started.display(),
            e2e::bin("server").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let lb = Arc::new(balancer(&["--server-bin", wrapper.to_str().unwrap()]));
    let adder = lb.clone();
    let add = std::thread::spawn(move || {
        adder.send("POST", "/add", Some(r#"{"n": 1, "hostnames": ["Slow"]}"#))
    });
    poll("the slow replica to begin starting", BOOT, || {
        started.exists().then_some(())
    });
    let (victim, killed_at) = kill_second_replica(&lb);
    let (name, handle) = (
        victim["hostname"].as_str().unwrap(),
        victim["handle"].as_str().unwrap(),
    );
    poll(
        "the replacement to be healthy",
        Duration::from_secs(15),
        || replaced(&lb, name, handle),
    );
    let took = killed_at.elapsed();
    eprintln!("kill-to-healthy during a slow /add: {took:?}");
    // Before, the death waited for the /add: about the 8 s of the slow start.
    assert!(took < Duration::from_secs(3), "replaced after {took:?}");
    assert!(!add.is_finished(), "the slow /add answered too early");
    let reply = add.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(rep_names(&lb), ["Server1", "Server2", "Server3", "Slow"]);
    let _ = std::fs::remove_dir_all(&dir);
}
