//! Evaluation of the judges on simulated traffic (results in docs/analysis.md).
//!
//! A canary at `canary-default`'s steps (5 → 25 → 50 → 100, one analysis per minute, threshold 5,
//! `minRequests` 50 per step, progress deadline 10 minutes) with an error-rate SLO (≤ 1 %) and a
//! latency SLO (p95 ≤ 500 ms). Each request is routed to the canary with the step's weight and is
//! independently an error and/or slower than 500 ms. The grid: stable error rate 0.1/0.5/1/2/5 %,
//! traffic 1/10/100/1000 rps, canary error rate 1×/1.5×/2×/4×/10× stable; then latency regressions
//! (the share of requests slower than the bound, stable 1 %). The rollout follows vane's machine: a
//! pass advances, a fail is one failed check, 5 failed checks / an established regression / the
//! progress deadline roll back, a step still collecting its `minRequests` extends.
//!
//! `cargo run --release --example judge_eval -- [--runs 300] [--seed 20261202]`
//! `cargo run --release --example judge_eval -- --tune --seed 1` compares settings of the adaptive
//! judge on a few cells; the evaluation's seed is not used for tuning.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vane::analysis::adaptive::{self, AdaptiveConfig, AdaptiveDecision, Block};
use vane::analysis::judge::{self, Counts, SequentialConfig, SequentialDecision, SequentialInput};
use vane::analysis::power;
use vane::analysis::{MetricVerdict, Verdict};

const INTERVAL_S: f64 = 60.0;
/// Kayenta-style samples: the error rate of each 10-second bucket of the interval.
const BUCKETS: usize = 6;
const STEPS: [u8; 4] = [5, 25, 50, 100];
const THRESHOLD: u32 = 5;
const MIN_REQUESTS: f64 = 50.0;
const MAX_ERROR_PCT: f64 = 1.0;
/// p95 ≤ bound ⇔ at most 5 % of requests slower than the bound.
const MAX_SLOW_SHARE: f64 = 0.05;
const DEADLINE_INTERVALS: u32 = 10;
const MAX_STEP_INTERVALS: u32 = 5;
const MWU_ALPHA: f64 = 0.01;
const ALPHA: f64 = 0.01;
const GIVE_UP: u32 = 240;
const STABLE_SLOW: f64 = 0.01;

#[derive(Clone, Copy)]
struct Scenario {
    rps: f64,
    stable_error: f64,
    error_ratio: f64,
    stable_slow: f64,
    slow_ratio: f64,
}

/// Requests, errors and slow requests of one version.
#[derive(Clone, Copy, Default)]
struct Tally {
    requests: f64,
    errors: f64,
    slow: f64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.slow += o.slow;
    }
    fn errors(&self) -> Counts {
        Counts { requests: self.requests, errors: self.errors }
    }
    fn slow(&self) -> Counts {
        Counts { requests: self.requests, errors: self.slow }
    }
}

#[derive(Clone, Copy)]
enum Judge {
    Threshold,
    MannWhitney,
    Sequential,
    /// `max_hold`: intervals the last step before 100 % may be held (`maxHold`).
    Adaptive {
        prior_sd: f64,
        hold_above: f64,
        max_hold: u32,
    },
}

const ADAPTIVE: Judge =
    Judge::Adaptive { prior_sd: adaptive::PRIOR_SD, hold_above: adaptive::DEFAULT_HOLD_ABOVE, max_hold: 5 };

impl Judge {
    fn name(&self) -> String {
        match self {
            Judge::Threshold => "threshold (Flagger: error rate ≤ 1 %, p95 ≤ 500 ms)".into(),
            Judge::MannWhitney => "Kayenta-style Mann-Whitney (10 s error rates, p < 0.01) + p95 bound".into(),
            Judge::Sequential => "sequential (α = 1 %, tolerance 0, maxStepDuration 5 intervals) + p95 bound".into(),
            Judge::Adaptive { prior_sd, hold_above, max_hold } => format!(
                "adaptive (α = 1 %, prior sd {prior_sd}, hold before 100 % while LR(2× : 1×) on the pooled counts ≥ {hold_above}, once held ≥ {}, and a hold can settle it, ≤ {max_hold} intervals) + p95 guard",
                hold_above * adaptive::KEEP_HOLDING
            ),
        }
    }
}

/// What the analyzer sees and keeps within one rollout.
#[derive(Default)]
struct State {
    canary: Tally,
    stable: Tally,
    /// Per 10-second bucket of the step: (canary, stable).
    buckets: Vec<(Tally, Tally)>,
    intervals: u32,
    last_canary_requests: f64,
    seq_carry: f64,
    seq_block: f64,
    earlier_errors: Vec<Block>,
    earlier_slow: Vec<Block>,
    held: u32,
    /// Whether the last analysis held the step for the error / slow-request stream.
    held_errors: bool,
    held_slow: bool,
}

impl State {
    fn next_step(&mut self) {
        self.earlier_errors.push(Block { canary: self.canary.errors(), stable: self.stable.errors() });
        self.earlier_slow.push(Block { canary: self.canary.slow(), stable: self.stable.slow() });
        *self = State {
            seq_carry: self.seq_carry + self.seq_block,
            earlier_errors: std::mem::take(&mut self.earlier_errors),
            earlier_slow: std::mem::take(&mut self.earlier_slow),
            ..State::default()
        };
    }
}

/// The verdict of one analysis (`None`: the step is still collecting its minRequests → extends).
fn decide(j: Judge, step: usize, interval: &[(Tally, Tally)], st: &mut State) -> Option<Verdict> {
    let (mut c, mut s) = (Tally::default(), Tally::default());
    for (bc, bs) in interval {
        c.add(bc);
        s.add(bs);
    }
    st.canary.add(&c);
    st.stable.add(&s);
    st.buckets.extend_from_slice(interval);
    st.intervals += 1;
    if st.canary.requests < MIN_REQUESTS {
        let grew = st.canary.requests > st.last_canary_requests;
        st.last_canary_requests = st.canary.requests;
        return if grew { None } else { Some(Verdict::NoData) };
    }
    // Bounds over the interval, or over the step when the interval alone is below minRequests.
    let (wc, ws, buckets) =
        if c.requests >= MIN_REQUESTS { (c, s, interval.to_vec()) } else { (st.canary, st.stable, st.buckets.clone()) };
    let _ = ws;
    let over = |v: f64, max: f64| judge::threshold(Some(v), None, Some(max)) == MetricVerdict::Fail;
    let latency_fails = over(wc.slow / wc.requests, MAX_SLOW_SHARE);
    let errors_fail = over(100.0 * wc.errors / wc.requests, MAX_ERROR_PCT);
    Some(match j {
        Judge::Threshold => {
            if errors_fail || latency_fails {
                Verdict::Fail
            } else {
                Verdict::Pass
            }
        }
        Judge::MannWhitney => {
            let rate = |t: &Tally| if t.requests > 0.0 { t.errors / t.requests } else { f64::NAN };
            let cr: Vec<f64> = buckets.iter().map(|b| rate(&b.0)).collect();
            let sr: Vec<f64> = buckets.iter().map(|b| rate(&b.1)).collect();
            match judge::mann_whitney_higher(&cr, &sr, MWU_ALPHA).0 {
                MetricVerdict::Fail => Verdict::Fail,
                _ if latency_fails => Verdict::Fail,
                MetricVerdict::Pass => Verdict::Pass,
                _ => Verdict::NoData,
            }
        }
        Judge::Sequential => {
            let cfg = SequentialConfig { alpha: ALPHA, tolerance_pp: 0.0, blocks: (STEPS.len() - 1) as u32 };
            let input = SequentialInput {
                canary: st.canary.errors(),
                stable: st.stable.errors(),
                carry_log_e: st.seq_carry,
                at_max_duration: st.intervals >= MAX_STEP_INTERVALS,
            };
            let out = judge::sequential(&cfg, &input);
            st.seq_block = out.harm_log_e;
            match out.decision {
                SequentialDecision::Regression => Verdict::Rollback,
                _ if latency_fails => Verdict::Fail,
                SequentialDecision::NotWorse | SequentialDecision::NoHarm => Verdict::Pass,
                SequentialDecision::Continue => Verdict::Inconclusive,
            }
        }
        Judge::Adaptive { prior_sd, hold_above, max_hold } => {
            // Two streams (errors, slow requests) share α; the last step before 100 % may hold for
            // the rest of maxHold, in units of the step's traffic so far.
            let last_step = step + 2 == STEPS.len();
            let hold_left =
                if last_step { f64::from(max_hold.saturating_sub(st.held)) / f64::from(st.intervals) } else { 0.0 };
            let cfg = AdaptiveConfig { alpha: ALPHA / 2.0, hold_above, hold_left, prior_sd, held: false };
            let e = adaptive::evaluate(
                &AdaptiveConfig { held: st.held_errors, ..cfg },
                &st.earlier_errors,
                Block { canary: st.canary.errors(), stable: st.stable.errors() },
            );
            let l = adaptive::evaluate(
                &AdaptiveConfig { held: st.held_slow, ..cfg },
                &st.earlier_slow,
                Block { canary: st.canary.slow(), stable: st.stable.slow() },
            );
            let ds = [e.decision, l.decision];
            st.held_errors = e.decision == AdaptiveDecision::Hold;
            st.held_slow = l.decision == AdaptiveDecision::Hold;
            if ds.contains(&AdaptiveDecision::Regression) {
                Verdict::Rollback
            } else if latency_fails {
                Verdict::Fail
            } else if ds.contains(&AdaptiveDecision::Hold) {
                st.held += 1;
                Verdict::Inconclusive
            } else {
                Verdict::Pass
            }
        }
    })
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
        // Normal approximation for large counts.
        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        return (n * p + z * var.sqrt()).round().clamp(0.0, n);
    }
    if p > 0.5 {
        return n - binomial(rng, n, 1.0 - p);
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

fn traffic(rng: &mut StdRng, weight: u8, sc: &Scenario) -> Vec<(Tally, Tally)> {
    let per_bucket = (sc.rps * INTERVAL_S / BUCKETS as f64).round();
    let ce = (sc.stable_error * sc.error_ratio).min(1.0);
    let cs = (sc.stable_slow * sc.slow_ratio).min(1.0);
    (0..BUCKETS)
        .map(|_| {
            let nc = binomial(rng, per_bucket, f64::from(weight) / 100.0);
            let ns = per_bucket - nc;
            let c = Tally { requests: nc, errors: binomial(rng, nc, ce), slow: binomial(rng, nc, cs) };
            let s = Tally {
                requests: ns,
                errors: binomial(rng, ns, sc.stable_error),
                slow: binomial(rng, ns, sc.stable_slow),
            };
            (c, s)
        })
        .collect()
}

fn rollout(rng: &mut StdRng, j: Judge, sc: &Scenario) -> Outcome {
    let (mut step, mut failed, mut t, mut progress) = (0usize, 0u32, 0u32, 0u32);
    let mut st = State::default();
    while t < GIVE_UP {
        t += 1;
        let iv = traffic(rng, STEPS[step], sc);
        match decide(j, step, &iv, &mut st) {
            None => progress = t,
            Some(Verdict::Pass) => {
                step += 1;
                if STEPS[step] == 100 {
                    return Outcome::Promoted(t);
                }
                st.next_step();
                progress = t;
            }
            Some(Verdict::Fail) => {
                failed += 1;
                if failed >= THRESHOLD {
                    return Outcome::RolledBack(t);
                }
            }
            Some(Verdict::Rollback) => return Outcome::RolledBack(t),
            Some(_) => {}
        }
        if t - progress >= DEADLINE_INTERVALS {
            return Outcome::RolledBack(t);
        }
    }
    Outcome::Undecided
}

struct Cell {
    runs: usize,
    rolled_back: Vec<u32>,
    promoted: Vec<u32>,
}

impl Cell {
    fn share_rolled_back(&self) -> f64 {
        100.0 * self.rolled_back.len() as f64 / self.runs as f64
    }
    fn share_rolled_back_within(&self, t: u32) -> f64 {
        100.0 * self.rolled_back.iter().filter(|x| **x <= t).count() as f64 / self.runs as f64
    }
    fn quantile(v: &[u32], q: f64) -> Option<u32> {
        let mut v = v.to_vec();
        v.sort_unstable();
        (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * q).round() as usize])
    }
}

/// Set by `--tune`: one seed per rollout (see `evaluate`); the tables draw one stream per cell.
static PER_RUN_SEEDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn evaluate(j: Judge, sc: &Scenario, runs: usize, seed: u64) -> Cell {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cell = Cell { runs, rolled_back: vec![], promoted: vec![] };
    let per_run = PER_RUN_SEEDS.load(std::sync::atomic::Ordering::Relaxed);
    for i in 0..runs {
        if per_run {
            // Common random numbers: each rollout draws from its own seed, so the settings that
            // `--tune` compares see the same traffic until their decisions differ.
            rng = StdRng::seed_from_u64(cell_seed(seed, &[i as u64]));
        }
        match rollout(&mut rng, j, sc) {
            Outcome::RolledBack(t) => cell.rolled_back.push(t),
            Outcome::Promoted(t) => cell.promoted.push(t),
            Outcome::Undecided => {}
        }
    }
    cell
}

/// A distinct, reproducible seed per cell.
fn cell_seed(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), |h, p| {
        (h ^ p.wrapping_add(0x632B_E59B_D9B4_E019)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
    })
}

fn minutes(t: Option<u32>) -> String {
    t.map_or("–".into(), |t| t.to_string())
}

/// 1×: "false rollbacks % · median (p90) minutes to promote"; k×: "caught % · median minutes to rollback".
fn cell_text(ratio: f64, c: &Cell) -> String {
    if ratio == 1.0 {
        format!(
            "{:.1} % · {} ({})",
            c.share_rolled_back(),
            minutes(Cell::quantile(&c.promoted, 0.5)),
            minutes(Cell::quantile(&c.promoted, 0.9))
        )
    } else {
        format!("{:.0} % · {}", c.share_rolled_back(), minutes(Cell::quantile(&c.rolled_back, 0.5)))
    }
}

const RATIOS: [f64; 5] = [1.0, 1.5, 2.0, 4.0, 10.0];
const ERROR_RATES: [f64; 5] = [0.001, 0.005, 0.01, 0.02, 0.05];

/// One table row: the cells for every regression ratio of `scenario(ratio)`.
fn row(j: Judge, runs: usize, seed: u64, tag: [u64; 3], scenario: impl Fn(f64) -> Scenario) -> String {
    let cells: Vec<String> = RATIOS
        .iter()
        .enumerate()
        .map(|(ki, k)| {
            let n = if *k == 1.0 { runs * 2 } else { runs };
            cell_text(*k, &evaluate(j, &scenario(*k), n, cell_seed(seed, &[tag[0], tag[1], tag[2], ki as u64])))
        })
        .collect();
    cells.join(" | ")
}

fn error_scenario(rps: f64, stable_error: f64, error_ratio: f64) -> Scenario {
    Scenario { rps, stable_error, error_ratio, stable_slow: STABLE_SLOW, slow_ratio: 1.0 }
}

fn error_grid(j: Judge, runs: usize, seed: u64) {
    println!("\n#### {}\n", j.name());
    println!("| stable errors | rps | 1× (no regression) | 1.5× | 2× | 4× | 10× |");
    println!("|---|---|---|---|---|---|---|");
    for (ei, p) in ERROR_RATES.iter().enumerate() {
        for (ri, rps) in [1.0, 10.0, 100.0, 1000.0].iter().enumerate() {
            let cells = row(j, runs, seed, [1, ei as u64, ri as u64], |k| error_scenario(*rps, *p, k));
            println!("| {} % | {rps} | {cells} |", p * 100.0);
        }
    }
}

fn latency_grid(judges: &[Judge], runs: usize, seed: u64) {
    println!("\n#### Latency: share of requests slower than the bound (stable 1 %, errors 0.5 % both)\n");
    println!("| judge | rps | 1× (no regression) | 1.5× | 2× | 4× | 10× |");
    println!("|---|---|---|---|---|---|---|");
    for (ji, j) in judges.iter().enumerate() {
        for (ri, rps) in [10.0, 100.0, 1000.0].iter().enumerate() {
            let cells = row(*j, runs, seed, [2, ji as u64, ri as u64], |k| Scenario {
                slow_ratio: k,
                ..error_scenario(*rps, 0.005, 1.0)
            });
            let short = j.name().split(' ').next().unwrap_or_default().to_string();
            println!("| {short} | {rps} | {cells} |");
        }
    }
}

/// Canary requests in the first `intervals` intervals of the rollout at `rps` (steps × weights).
fn exposure(rps: f64, intervals: usize) -> u64 {
    let share: f64 = STEPS[..intervals].iter().map(|w| f64::from(*w) / 100.0).sum();
    (rps * INTERVAL_S * share).round() as u64
}

/// The best possible test's power (%) for `ratio`× the stable error rate `p` with the exposure of
/// the first `intervals` intervals: stable rate known, α = 1 % (see `vane::analysis::power`).
fn best(p: f64, ratio: f64, intervals: usize) -> String {
    power::best_power(exposure(100.0, intervals), p, ratio, ALPHA)
        .map_or("–".into(), |b| format!("{:.1} %", 100.0 * b))
}

/// The targets at 100 rps, per stable error rate, with what the traffic allows any test.
fn targets(judges: &[Judge], runs: usize, seed: u64) {
    println!("\n#### Targets at 100 rps\n");
    println!(
        "| judge | stable errors | false rollbacks | good release promoted in 3 min | 2× caught before 100 % | best possible | 4× rolled back within 2 min | best possible |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (ji, j) in judges.iter().enumerate() {
        for (ei, p) in ERROR_RATES.iter().enumerate() {
            let at = |k: f64, tag: u64, n: usize| {
                evaluate(*j, &error_scenario(100.0, *p, k), n, cell_seed(seed, &[3, tag, ji as u64, ei as u64]))
            };
            let good = at(1.0, 0, runs * 2);
            let in_3 = 100.0 * good.promoted.iter().filter(|t| **t <= 3).count() as f64 / good.runs as f64;
            let short = j.name().split(' ').next().unwrap_or_default().to_string();
            println!(
                "| {short} | {} % | {:.1} % | {in_3:.1} % | {:.1} % | {} | {:.1} % | {} |",
                p * 100.0,
                good.share_rolled_back(),
                at(2.0, 1, runs).share_rolled_back(),
                best(*p, 2.0, STEPS.len() - 1),
                at(4.0, 2, runs).share_rolled_back_within(2),
                best(*p, 4.0, 2),
            );
        }
    }
}

/// Settings of the adaptive judge compared by `--tune`: (prior sd, holdAbove, maxHold).
const TUNE: [(f64, f64, u32); 6] =
    [(1.0, 0.5, 5), (1.0, 0.7, 5), (1.0, 1.0, 5), (1.0, 2.0, 5), (1.0, 1.0, 8), (0.75, 1.0, 5)];

/// The targets at 100 rps for each setting of the adaptive judge, on the tuning seed.
fn tune(runs: usize, seed: u64) {
    PER_RUN_SEEDS.store(true, std::sync::atomic::Ordering::Relaxed);
    println!(
        "| prior sd | hold above (LR 2× : 1×) | max hold | max false rollbacks 0.1–5 % | promoted in 3 min (0.1/0.5/1/2/5 %) | promote p90 (0.5 %) | 2× caught (0.1/0.5/1/2 %) | 4× ≤ 2 intervals (0.1/0.5 %) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let sc = |p: f64, k: f64| error_scenario(100.0, p, k);
    for (sd, hold, max_hold) in TUNE {
        let j = Judge::Adaptive { prior_sd: sd, hold_above: hold, max_hold };
        let mut worst: f64 = 0.0;
        let (mut in_3, mut p90) = (vec![], String::new());
        for (i, p) in ERROR_RATES.iter().enumerate() {
            let c = evaluate(j, &sc(*p, 1.0), runs * 2, cell_seed(seed, &[9, i as u64]));
            worst = worst.max(c.share_rolled_back());
            in_3.push(format!("{:.1}", 100.0 * c.promoted.iter().filter(|t| **t <= 3).count() as f64 / c.runs as f64));
            if *p == 0.005 {
                p90 = minutes(Cell::quantile(&c.promoted, 0.9));
            }
        }
        let caught: Vec<String> = ERROR_RATES[..4]
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!("{:.1}", evaluate(j, &sc(*p, 2.0), runs, cell_seed(seed, &[10, i as u64])).share_rolled_back())
            })
            .collect();
        let four: Vec<String> = [0.001, 0.005]
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let c = evaluate(j, &sc(*p, 4.0), runs, cell_seed(seed, &[11, i as u64]));
                format!("{:.1}", c.share_rolled_back_within(2))
            })
            .collect();
        println!(
            "| {sd} | {hold} | {max_hold} | {worst:.2} % | {} | {p90} | {} | {} |",
            in_3.join(" / "),
            caught.join(" / "),
            four.join(" / ")
        );
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
    let runs = arg("--runs", 300) as usize;
    let seed = arg("--seed", 20261202);
    if args.iter().any(|a| a == "--tune") {
        return tune(runs, seed);
    }
    println!(
        "{runs} simulated rollouts per cell ({} without regression), seed {seed}; steps 5/25/50/100, 1-minute intervals",
        runs * 2
    );
    println!(
        "cells: 1× = false rollbacks · median (p90) minutes to promote; k× = share rolled back before 100 % · median minutes to rollback"
    );
    let judges = [Judge::Threshold, Judge::MannWhitney, Judge::Sequential, ADAPTIVE];
    targets(&judges, runs, seed);
    for j in judges {
        error_grid(j, runs, seed);
    }
    latency_grid(&judges, runs, seed);
}
