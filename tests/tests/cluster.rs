//! Several balancers, one view (`--cluster etcd`), end to end: three real
//! balancers on loopback sharing their replica set through a real etcd, the
//! replicas real containers on the real Docker engine.
//!
//! One test with steps, because each step builds on the cluster the one before
//! left. The times measured are printed (`cargo test -- --nocapture` shows them).

use std::time::{Duration, Instant};

use e2e::docker::{docker, Instance};
use e2e::etcd::Etcd;
use e2e::{poll, rep_names, replicas, wait_healthy, Service};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BOOT: Duration = Duration::from_secs(90);
const SOON: Duration = Duration::from_secs(30);
/// The issue's bound on a new leader after the old one is killed.
const FAILOVER: Duration = Duration::from_secs(5);

fn start(instance: &Instance, etcd: &Etcd) -> Service {
    let endpoint = etcd.endpoint();
    instance.balancer(&[
        "--cluster",
        "etcd",
        "--etcd-endpoints",
        &endpoint,
        "--leader-ttl",
        "2s",
        "--hash-key",
        "query:id",
        "--grpc-listen",
        "127.0.0.1:0",
        "--workers",
        "1",
    ])
}

/// This balancer's role in `/status` (`leader`, `follower`, `candidate`).
fn role(lb: &Service) -> String {
    let status = lb.get("/status").json();
    status["message"]["cluster"]["role"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

/// The replica each of `keys` goes to through `lb`.
fn routes(lb: &Service, keys: std::ops::Range<u32>) -> Vec<String> {
    keys.map(|k| {
        let reply = lb.get(&format!("/home?id={k}"));
        assert_eq!(reply.status, 200, "key {k} through {}", lb.base);
        reply.header("x-served-by").unwrap_or("").to_string()
    })
    .collect()
}

/// How many of the keys `0..keys` go to the same replica through every balancer.
fn agreement(lbs: &[&Service], keys: u32) -> usize {
    let through: Vec<Vec<String>> = lbs.iter().map(|lb| routes(lb, 0..keys)).collect();
    (0..keys as usize)
        .filter(|&k| through.iter().all(|t| t[k] == through[0][k]))
        .count()
}

/// Every balancer lists `names` (sorted) as its replicas, all healthy.
fn all_list(lbs: &[&Service], names: &[&str]) -> bool {
    lbs.iter().all(|lb| {
        let r = replicas(lb);
        let mut got: Vec<String> = r
            .iter()
            .map(|r| r["hostname"].as_str().unwrap_or("").to_string())
            .collect();
        got.sort();
        got == names && r.iter().all(|r| r["state"] == "healthy")
    })
}

fn restarts_of(lb: &Service, name: &str) -> Option<u64> {
    replicas(lb)
        .into_iter()
        .find(|r| r["hostname"] == name && r["state"] == "healthy")
        .and_then(|r| r["restarts"].as_u64())
}

#[test]
fn three_balancers_route_alike_and_survive_their_leader_and_etcd() {
    let Some(instance) = Instance::new("cluster") else {
        return;
    };
    let mut etcd = Etcd::start();
    let lbs: Vec<Service> = (0..3).map(|_| start(&instance, &etcd)).collect();
    for lb in &lbs {
        wait_healthy(lb, 3, BOOT);
    }
    let names = ["Server1", "Server2", "Server3"];
    let all: Vec<&Service> = lbs.iter().collect();
    poll("every balancer to list the same three", SOON, || {
        all_list(&all, &names).then_some(())
    });
    let running = instance.containers().len();
    assert_eq!(
        running, 3,
        "one container per replica, not one per balancer"
    );

    // The same key goes to the same replica through any balancer.
    let agree = agreement(&all, 1000);
    println!("routing agreement across 3 balancers: {agree}/1000 keys");
    assert_eq!(agree, 1000);

    let leader = poll("one balancer to lead", SOON, || {
        let leading: Vec<usize> = (0..3).filter(|&i| role(&lbs[i]) == "leader").collect();
        (leading.len() == 1 && (0..3).all(|i| role(&lbs[i]) != "candidate")).then(|| leading[0])
    });
    let follower = &lbs[(leader + 1) % 3];

    // /add through a follower is applied once, and reaches every balancer.
    let asked = Instant::now();
    let added = follower.send("POST", "/add", Some(r#"{"n": 1, "hostnames": ["S9"]}"#));
    let answered = asked.elapsed();
    assert_eq!(added.status, 200, "{}", added.body);
    let with_s9 = ["S9", "Server1", "Server2", "Server3"];
    poll("every balancer to list S9", SOON, || {
        all_list(&all, &with_s9).then_some(())
    });
    println!(
        "/add through a follower: answered in {answered:?}, on every balancer in {:?}",
        asked.elapsed()
    );
    let s9 = instance.container_name("S9");
    let named = |name: &str| {
        instance
            .containers()
            .iter()
            .filter(|c| c.name == name)
            .count()
    };
    assert_eq!(named(&s9), 1, "S9 started once");
    assert!(rep_names(follower).contains(&"S9".to_string()));

    // The leader dies: another leads within 5 s.
    let killed = Instant::now();
    kill(Pid::from_raw(lbs[leader].pid() as i32), Signal::SIGKILL).expect("kill -9 the leader");
    let rest: Vec<&Service> = (0..3).filter(|&i| i != leader).map(|i| &lbs[i]).collect();
    poll("another balancer to lead", FAILOVER * 2, || {
        rest.iter().any(|lb| role(lb) == "leader").then_some(())
    });
    let failover = killed.elapsed();
    println!("leader failover after SIGKILL: {failover:?} (lease TTL 2 s)");
    assert!(failover < FAILOVER, "took {failover:?}");
    poll("the new leader to keep every replica", SOON, || {
        all_list(&rest, &with_s9).then_some(())
    });
    assert_eq!(
        instance.containers().len(),
        4,
        "the new leader adopted, not started anew"
    );

    // A replica killed now is respawned exactly once, by the new leader alone.
    let victim = instance.container_name("Server2");
    docker(&["kill", &victim]);
    let died = Instant::now();
    poll("Server2 to be back on every balancer", SOON, || {
        rest.iter()
            .all(|lb| restarts_of(lb, "Server2") == Some(1))
            .then_some(())
    });
    println!(
        "Server2 respawned and healthy everywhere in {:?}",
        died.elapsed()
    );
    assert_eq!(named(&victim), 1, "one Server2 container");
    for lb in &rest {
        assert_eq!(restarts_of(lb, "Server2"), Some(1));
    }
    let follower = rest
        .iter()
        .find(|lb| role(lb) == "follower")
        .expect("a follower");
    assert_eq!(agreement(&rest, 300), 300, "the two left route alike");

    // etcd restarts: everyone recovers, and an /add through a follower still works.
    etcd.restart();
    let restarted = Instant::now();
    let again = poll("an /add through a follower to work again", SOON, || {
        let r = follower.send("POST", "/add", Some(r#"{"n": 1, "hostnames": ["S10"]}"#));
        (r.status == 200).then_some(r)
    });
    println!(
        "after an etcd restart, /add through a follower worked again in {:?}",
        restarted.elapsed()
    );
    assert_eq!(again.json()["status"], "successful");
    let five = ["S10", "S9", "Server1", "Server2", "Server3"];
    poll("both balancers to list S10", SOON, || {
        all_list(&rest, &five).then_some(())
    });
    assert_eq!(
        named(&instance.container_name("S10")),
        1,
        "S10 started once"
    );

    // A change reaches every balancer: disabling a replica through the leader.
    let leader = rest
        .iter()
        .find(|lb| role(lb) == "leader")
        .expect("a leader");
    let asked = Instant::now();
    let disabled = leader.send("POST", "/replicas/S10/disable", None);
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    poll("every balancer to show S10 disabled", SOON, || {
        rest.iter()
            .all(|lb| {
                replicas(lb)
                    .iter()
                    .any(|r| r["hostname"] == "S10" && r["state"] == "disabled")
            })
            .then_some(())
    });
    println!(
        "a change through the leader on every balancer in {:?}",
        asked.elapsed()
    );

    // A balancer that joins late, after replicas came and went, builds the same ring:
    // each replica is placed where the leader put it, not where this balancer's own
    // order of hearing would.
    let removed = follower.send(
        "DELETE",
        "/rm",
        Some(r#"{"n": 1, "hostnames": ["Server1"]}"#),
    );
    assert_eq!(removed.status, 200, "{}", removed.body);
    let late = start(&instance, &etcd);
    let four = ["S10", "S9", "Server2", "Server3"];
    let everyone: Vec<&Service> = rest.iter().copied().chain([&late]).collect();
    poll(
        "every balancer, the late one too, to list the four",
        SOON,
        || {
            everyone
                .iter()
                .all(|lb| {
                    let mut names = rep_names(lb);
                    names.sort();
                    names == four
                })
                .then_some(())
        },
    );
    poll(
        "the late balancer to see them healthy or disabled",
        SOON,
        || {
            replicas(&late)
                .iter()
                .all(|r| r["state"] == "healthy" || r["state"] == "disabled")
                .then_some(())
        },
    );
    let agree = agreement(&everyone, 1000);
    println!("routing agreement with a balancer that joined late: {agree}/1000 keys");
    assert_eq!(agree, 1000);
}
