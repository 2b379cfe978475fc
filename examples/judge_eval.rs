//! Evaluation of the judges on simulated traffic (results in docs/analysis.md).
//!
//! A 100 rps service, stable error rate 0.5 %, a canary at the policy's steps (5 → 25 → 50 → 100,
//! one analysis per minute, threshold 5, minRequests 50, progress deadline 10 minutes) with an error
//! rate of 0.5 % (no regression), 1 %, 2 % or 5 %. Each request is an independent Bernoulli trial
//! and is routed to the canary with the step's weight. The rollout follows vane's machine: a pass
//! advances a step, a fail is one failed check, `threshold` failed checks (or a sequential
//! regression, or the progress deadline) roll back.
//!
//! `cargo run --example judge_eval -- [--runs 2000] [--seed 7]`

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vane::analysis::judge::{self, Counts, SequentialConfig, SequentialDecision, SequentialInput};
use vane::analysis::{MetricVerdict, Verdict};

const RPS: f64 = 100.0;
const INTERVAL_S: f64 = 60.0;
/// Kayenta-style samples: the error rate of each 10-second bucket of the interval.
const BUCKETS: usize = 6;
const STABLE_ERROR: f64 = 0.005;
const STEPS: [u8; 4] = [5, 25, 50, 100];
const THRESHOLD: u32 = 5;
const MIN_REQUESTS: f64 = 50.0;
const MAX_ERROR_PCT: f64 = 1.0;
const DEADLINE_INTERVALS: u32 = 10;
const MAX_STEP_INTERVALS: u32 = 5;
const MWU_ALPHA: f64 = 0.01;
const ALPHA: f64 = 0.01;
const GIVE_UP: u32 = 120;

/// One interval of traffic: per bucket (canary requests, canary errors, stable requests, stable errors).
struct Interval {
    buckets: Vec<[f64; 4]>,
}

impl Interval {
    fn totals(&self) -> (Counts, Counts) {
        let mut c = Counts::default();
        let mut s = Counts::default();
        for b in &self.buckets {
            c.requests += b[0];
            c.errors += b[1];
            s.requests += b[2];
            s.errors += b[3];
        }
        (c, s)
    }
}

#[derive(Clone, Copy)]
enum Judge {
    Threshold,
    MannWhitney,
    Sequential { tolerance_pp: f64 },
}

impl Judge {
    fn name(&self) -> String {
        match self {
            Judge::Threshold => "threshold (Flagger: error rate ≤ 1 %, 5 failed checks)".into(),
            Judge::MannWhitney => "Kayenta-style Mann-Whitney (10 s rates, p < 0.01)".into(),
            Judge::Sequential { tolerance_pp } => format!("sequential (α = 1 %, tolerance {tolerance_pp} pp)"),
        }
    }
}

/// What a judge remembers within one rollout (the sequential judge's step counts and carry).
#[derive(Default)]
struct StepState {
    canary: Counts,
    stable: Counts,
    intervals: u32,
    carry: f64,
    last_block: f64,
}

fn decide(j: Judge, iv: &Interval, st: &mut StepState) -> Verdict {
    let (c, s) = iv.totals();
    st.canary.requests += c.requests;
    st.canary.errors += c.errors;
    st.stable.requests += s.requests;
    st.stable.errors += s.errors;
    st.intervals += 1;
    match j {
        Judge::Threshold => {
            if c.requests < MIN_REQUESTS {
                return Verdict::NoData;
            }
            match judge::threshold(Some(100.0 * c.rate()), None, Some(MAX_ERROR_PCT)) {
                MetricVerdict::Fail => Verdict::Fail,
                _ => Verdict::Pass,
            }
        }
        Judge::MannWhitney => {
            if c.requests < MIN_REQUESTS {
                return Verdict::NoData;
            }
            let rate = |n: f64, e: f64| if n > 0.0 { e / n } else { f64::NAN };
            let cr: Vec<f64> = iv.buckets.iter().map(|b| rate(b[0], b[1])).collect();
            let sr: Vec<f64> = iv.buckets.iter().map(|b| rate(b[2], b[3])).collect();
            match judge::mann_whitney_higher(&cr, &sr, MWU_ALPHA).0 {
                MetricVerdict::Fail => Verdict::Fail,
                MetricVerdict::Pass => Verdict::Pass,
                _ => Verdict::NoData,
            }
        }
        Judge::Sequential { tolerance_pp } => {
            if st.canary.requests < MIN_REQUESTS {
                return Verdict::NoData;
            }
            let cfg = SequentialConfig { alpha: ALPHA, tolerance_pp, blocks: (STEPS.len() - 1) as u32 };
            let input = SequentialInput {
                canary: st.canary,
                stable: st.stable,
                carry_log_e: st.carry,
                at_max_duration: st.intervals >= MAX_STEP_INTERVALS,
            };
            let out = judge::sequential(&cfg, &input);
            st.last_block = out.harm_log_e;
            match out.decision {
                SequentialDecision::Regression => Verdict::Rollback,
                SequentialDecision::NotWorse | SequentialDecision::NoHarm => Verdict::Pass,
                SequentialDecision::Continue => Verdict::Inconclusive,
            }
        }
    }
}

enum Outcome {
    Promoted(u32),
    RolledBack(u32),
    Undecided,
}

fn binomial(rng: &mut StdRng, n: f64, p: f64) -> f64 {
    if n <= 0.0 || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return n;
    }
    let var = n * p * (1.0 - p);
    if var > 200.0 {
        // Normal approximation for the large traffic splits (errors are always drawn exactly).
        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        return (n * p + z * var.sqrt()).round().clamp(0.0, n);
    }
    // Exact: count successes by jumping geometric gaps.
    let log_q = (1.0 - p).ln();
    let (mut pos, mut k) = (0.0f64, 0.0f64);
    loop {
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        pos += (u.ln() / log_q).floor() + 1.0;
        if pos > n {
            return k;
        }
        k += 1.0;
    }
}

fn traffic(rng: &mut StdRng, weight: u8, canary_error: f64) -> Interval {
    let per_bucket = RPS * INTERVAL_S / BUCKETS as f64;
    let buckets = (0..BUCKETS)
        .map(|_| {
            let nc = binomial(rng, per_bucket, f64::from(weight) / 100.0);
            let ns = per_bucket - nc;
            [nc, binomial(rng, nc, canary_error), ns, binomial(rng, ns, STABLE_ERROR)]
        })
        .collect();
    Interval { buckets }
}

fn rollout(rng: &mut StdRng, j: Judge, canary_error: f64) -> Outcome {
    let (mut step, mut failed, mut t, mut step_start) = (0usize, 0u32, 0u32, 0u32);
    let mut st = StepState::default();
    while t < GIVE_UP {
        t += 1;
        let iv = traffic(rng, STEPS[step], canary_error);
        match decide(j, &iv, &mut st) {
            Verdict::Pass => {
                step += 1;
                if STEPS[step] == 100 {
                    return Outcome::Promoted(t);
                }
                st = StepState { carry: st.carry + st.last_block, ..Default::default() };
                step_start = t;
            }
            Verdict::Fail => {
                failed += 1;
                if failed >= THRESHOLD {
                    return Outcome::RolledBack(t);
                }
            }
            Verdict::Rollback => return Outcome::RolledBack(t),
            Verdict::NoData | Verdict::Inconclusive => {}
        }
        if t - step_start >= DEADLINE_INTERVALS {
            return Outcome::RolledBack(t);
        }
    }
    Outcome::Undecided
}

struct Row {
    rolled_back: f64,
    median_rollback: Option<f64>,
    median_promote: Option<f64>,
}

/// The median of all runs, where runs that never got there count as infinitely late.
fn median_of(times: &mut [u32], runs: usize) -> Option<f64> {
    times.sort_unstable();
    let mid = runs / 2;
    (times.len() > mid).then(|| f64::from(times[mid]))
}

fn evaluate(j: Judge, canary_error: f64, runs: usize, seed: u64) -> Row {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut rb, mut pr) = (vec![], vec![]);
    for _ in 0..runs {
        match rollout(&mut rng, j, canary_error) {
            Outcome::RolledBack(t) => rb.push(t),
            Outcome::Promoted(t) => pr.push(t),
            Outcome::Undecided => {}
        }
    }
    Row {
        rolled_back: rb.len() as f64 / runs as f64,
        median_rollback: median_of(&mut rb, runs),
        median_promote: median_of(&mut pr, runs),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = arg("--runs", 2000) as usize;
    let seed = arg("--seed", 7);
    let judges = [
        Judge::Threshold,
        Judge::MannWhitney,
        Judge::Sequential { tolerance_pp: 0.0 },
        Judge::Sequential { tolerance_pp: 0.5 },
    ];
    let show = |m: Option<f64>| m.map_or("never (< 50 %)".to_string(), |v| format!("{v:.0} min"));
    println!("{runs} simulated rollouts per cell, seed {seed}; stable error rate 0.5 %, 100 rps, 1-minute intervals\n");
    println!(
        "| judge | false rollbacks (canary 0.5 %) | median time to promote (0.5 %) | median time to rollback: 1 % | 2 % | 5 % |"
    );
    println!("|---|---|---|---|---|---|");
    for j in judges {
        let ok = evaluate(j, 0.005, runs, seed);
        let cells: Vec<String> = [0.01, 0.02, 0.05]
            .iter()
            .map(|e| {
                let r = evaluate(j, *e, runs, seed);
                format!("{} ({:.0} % rolled back)", show(r.median_rollback), r.rolled_back * 100.0)
            })
            .collect();
        println!(
            "| {} | {:.2} % | {} | {} |",
            j.name(),
            ok.rolled_back * 100.0,
            show(ok.median_promote),
            cells.join(" | ")
        );
    }
}
