//! Ring lookup and candidate iteration: the per-request cost of routing.
//!
//! `cargo bench -p load_balancer --bench ring`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use load_balancer::hashkey::key_to_id;
use load_balancer::ring::{Geometry, Ring};
use load_balancer::scheme::Quadratic;

fn ring_with(n: u32) -> Ring {
    let mut ring = Ring::new(Geometry::DEFAULT, Arc::new(Quadratic));
    for id in 1..=n {
        ring.add(id).unwrap();
    }
    ring
}

// Results are unwrapped before `black_box`: an `Option<u32>` stored as two halves and
// reloaded whole stalls store forwarding, which would time the harness, not the lookup.
fn lookups(c: &mut Criterion) {
    // What the loop below costs with no lookup in it, to read the others against.
    let mut r = 100_000u64;
    c.bench_function("harness floor (key step only)", |b| {
        b.iter(|| {
            r = r.wrapping_add(7919);
            black_box(black_box(r))
        })
    });
    for n in [3u32, 56] {
        let table = ring_with(n).table(|_| true);
        let mut r = 100_000u64;
        c.bench_function(&format!("owner (first candidate), {n} servers"), |b| {
            b.iter(|| {
                r = r.wrapping_add(7919);
                black_box(table.owner(black_box(r)).unwrap_or(0))
            })
        });
        c.bench_function(
            &format!("first of the candidate iterator, {n} servers"),
            |b| {
                b.iter(|| {
                    r = r.wrapping_add(7919);
                    black_box(table.candidates(black_box(r)).next().unwrap_or(0))
                })
            },
        );
        c.bench_function(&format!("all candidates, {n} servers"), |b| {
            b.iter(|| {
                r = r.wrapping_add(7919);
                black_box(table.candidates(black_box(r)).count())
            })
        });
    }
    c.bench_function("table rebuild, 56 servers", |b| {
        let ring = ring_with(56);
        b.iter(|| black_box(ring.table(|id| id % 7 != 0)))
    });
    c.bench_function("non-numeric key to id", |b| {
        b.iter(|| black_box(key_to_id(black_box("user-8d3f2a"))))
    });
}

criterion_group!(benches, lookups);
criterion_main!(benches);
