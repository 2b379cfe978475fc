//! Machine transitions, store commit + flush, and restart (loading stored rollouts).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use vane::analysis::{AnalysisReport, Verdict};
use vane::fixtures;
use vane::rollout::machine::{self, Effect, Input};
use vane::rollout::{Event, Phase, Rollout};
use vane::store::Store;

const T0: u64 = 1_800_000_000_000;

fn new_rollout(service: &str) -> (Rollout, Vec<Event>) {
    let p = fixtures::policy("p", &[5, 25, 50, 100], Duration::from_secs(60), 5);
    let (r, out) = machine::create(ulid::Ulid::new().to_string(), &fixtures::request(service, "p"), p, "bench", T0);
    (r, out.events)
}

/// Drive one rollout to Succeeded, answering every effect at once; returns the number of inputs fed.
fn full_rollout() -> usize {
    let (mut r, _) = new_rollout("svc");
    let mut now = T0;
    let mut inputs = vec![Input::Tick];
    let mut n = 0;
    while let Some(input) = inputs.pop() {
        n += 1;
        let out = machine::step(&mut r, input, now).expect("valid");
        for e in out.effects {
            inputs.push(match e {
                Effect::SetWeight { op, .. } => Input::RouterDone { op, result: Ok(()) },
                Effect::Validate { op } | Effect::Preflight { op } => Input::StageDone { op, result: Ok(()) },
                Effect::CallHooks { op: Some(op), .. } => Input::StageDone { op, result: Ok(()) },
                Effect::Analyse { op } => Input::Analysis {
                    op,
                    report: AnalysisReport { at: now, verdict: Verdict::Pass, metrics: vec![], summary: String::new() },
                },
                _ => continue,
            });
        }
        if inputs.is_empty() && !r.is_terminal() {
            now = r.wake_at().unwrap_or(now);
            inputs.push(Input::Tick);
        }
    }
    assert_eq!(r.phase, Phase::Succeeded);
    n
}

fn machine_bench(c: &mut Criterion) {
    let n = full_rollout() as u64;
    let mut g = c.benchmark_group("machine");
    g.throughput(criterion::Throughput::Elements(n));
    g.bench_function("full 4-step rollout (transitions)", |b| b.iter(full_rollout));
    g.finish();
}

fn store_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let (mut r, events) = new_rollout("svc");
    rt.block_on(store.create(&mut r, events.clone(), None)).ok();
    c.bench_function("store/commit transition + event + flush", |b| {
        b.iter(|| {
            r.updated_at += 1;
            rt.block_on(store.commit(&mut r, events.clone())).expect("commit");
        })
    });

    let mut g = c.benchmark_group("store/restart");
    g.sample_size(10);
    // `cargo test --benches` runs this without --bench: keep that setup small.
    let n = if std::env::args().any(|a| a == "--bench") { 10_000 } else { 100 };
    {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("store");
            rt.block_on(async {
                for i in 0..n {
                    let (mut r, events) = new_rollout(&format!("svc-{i}"));
                    store.create(&mut r, events, None).await.expect("create");
                }
            });
        }
        g.bench_with_input(BenchmarkId::new("open + load active rollouts", n), &n, |b, &n| {
            b.iter(|| {
                let store = Store::open(dir.path()).expect("store");
                assert_eq!(store.active().expect("active").len(), n);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, machine_bench, store_bench);
criterion_main!(benches);
