//! The adaptive judge (`judge: adaptive`): canary against stable on a stream of bad events (5xx
//! errors, or requests slower than a latency bound), with a one-sided mixture sequential probability
//! ratio test whose evidence is carried across the rollout's steps.
//!
//! A step passes at the end of its interval unless the data point at harm: "waiting to prove not
//! worse" would make every good release wait, and a fixed threshold ignores the stable version. So
//! each analysis ends in one of three decisions:
//!
//! - **regression** (roll back) — the e-value reached `1/α`. By Ville's inequality this happens to a
//!   canary that is not worse than stable with probability ≤ α, however often it is looked at and
//!   however long a step is held, so the false-rollback bound covers the whole rollout;
//! - **hold** — at the last step before 100 %, (1) the likelihood ratio of a canary *twice as bad*
//!   as stable against equal rates, on the rollout's pooled counts, is at least `holdAbove` (once the
//!   step is held: at least a tenth of it, [`KEEP_HOLDING`]), and (2) holding can still settle it:
//!   had the canary been as bad as it looks (the canary/stable rate ratio seen so far, at least
//!   twice), the rest of `maxHold` at this step's traffic would bring the e-value to `1/α`. The
//!   step stays where it is and evidence keeps accumulating;
//! - **pass** — otherwise (or once the hold has lasted `maxHold`).
//!
//! Only the rollback needs the anytime-valid e-value: holding decides when to look again, costs
//! time and never a false rollback. Why a named alternative: the likelihood ratio at the best-fitting
//! worse canary exceeds any fixed level on a fixed share of good canaries however much traffic there
//! is, while the ratio "twice as bad vs equal" falls for a good canary and grows for a bad one as the
//! evidence grows, so a busy service rarely holds a good release. Where traffic is too thin for a
//! hold to establish anything (condition 2), holding would only cost time.
//!
//! Why pooled counts for the suspicion, when the e-value conditions on each step separately: the
//! e-value must stay valid if the stable rate changes between steps (both versions' errors rising
//! together), so it compares the canary with stable within each step; but then the stable errors of
//! the early steps (95 % and 75 % of the traffic) only serve the canary's few requests of those
//! steps. The suspicion only decides whether to look longer, so it may assume what is almost always
//! true over a few minutes — one stable rate for the whole rollout — and compare the canary's total
//! with all the stable errors seen: at 0.5 % errors and 100 rps that holds about a third fewer good
//! releases and misses about a third fewer 2× canaries (docs/analysis.md, tuning). If the stable
//! rate does drift, a step is held or passed when it should not be; nothing is rolled back on it.
//!
//! Why a held step keeps holding until the evidence turns (the ratio below a tenth of `holdAbove`)
//! rather than on the first analysis below `holdAbove`: a canary twice as bad dips below "twice as
//! bad fits at least as well as equal" now and then on its way to the bound, and passing it then
//! promotes a regression that a few more minutes would have established. A good release that is
//! held has already lost its on-time promotion; the release level only decides how long it waits.
//!
//! Pure and deterministic: `examples/judge_eval.rs` evaluates it on simulated traffic.

use serde::{Deserialize, Serialize};

use super::judge::{CondLik, Counts, log_sum_exp};

/// Scale of the half-normal prior on `u = ln(canary rate / stable rate)`, u ≥ 0. Tuned on
/// simulated traffic with seeds disjoint from the evaluation's (see examples/judge_eval.rs).
pub const PRIOR_SD: f64 = 1.0;
/// The rate ratio the hold is about: "twice as bad as stable".
pub const HOLD_RATIO: f64 = 2.0;
/// Default likelihood ratio ([`HOLD_RATIO`] against equal rates) from which the last step before
/// 100 % is held for more evidence instead of passing (tuned like [`PRIOR_SD`]).
pub const DEFAULT_HOLD_ABOVE: f64 = 1.0;
/// A held step keeps holding while the likelihood ratio is at least this share of `holdAbove` (and a
/// hold can still settle it, within `maxHold`): it is released when the evidence has turned towards
/// equal rates, not on the first dip below `holdAbove` (tuned like [`PRIOR_SD`]).
pub const KEEP_HOLDING: f64 = 0.1;
const GRID_MAX: f64 = 6.0;
const GRID_STEP: f64 = 0.01;

/// One step's counts of one stream (bad events: errors, or requests slower than the bound).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub canary: Counts,
    pub stable: Counts,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveConfig {
    /// This stream's share of the false-rollback bound.
    pub alpha: f64,
    /// Hold a step while the likelihood ratio of [`HOLD_RATIO`] against equal rates is at least
    /// this (and the e-value below `1/alpha`).
    pub hold_above: f64,
    /// How much more traffic holding this step can still see, as a multiple of the step's traffic
    /// so far (the rest of `maxHold` over the time the step has run); 0 when the step may not hold.
    /// Only the last step before 100 % holds: earlier steps pass unless the regression is
    /// established, and their evidence carries into the next step, where more canary traffic
    /// gathers it faster than holding would.
    pub hold_left: f64,
    /// Scale of the prior on ln(rate ratio) ([`PRIOR_SD`]).
    pub prior_sd: f64,
    /// Whether the previous analysis held this step for this stream: the hold then continues while
    /// the likelihood ratio is at least `hold_above ×` [`KEEP_HOLDING`].
    pub held: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdaptiveDecision {
    Regression,
    Hold,
    Pass,
}

/// Everything the test computed, for events, `lastAnalysis` and the next analysis' carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    pub decision: AdaptiveDecision,
    /// This step's counts.
    pub canary: Counts,
    pub stable: Counts,
    /// This step's bad-event rates in percent.
    pub canary_rate: f64,
    pub stable_rate: f64,
    /// The e-value against "canary not worse than stable" and the bounds it is compared with.
    pub e_value: f64,
    pub log_e: f64,
    /// The likelihood ratio of a canary [`HOLD_RATIO`] times as bad as stable against equal rates,
    /// on the counts of all steps so far pooled: the suspicion compared with `hold_from`.
    pub likelihood_ratio: f64,
    /// Whether the data lean towards harm: bad events seen, and `likelihood_ratio ≥ hold_from`.
    pub suspicious: bool,
    /// The likelihood ratio from which this analysis holds: `hold_above`, or `hold_above ×`
    /// [`KEEP_HOLDING`] while the step is already held.
    #[serde(default)]
    pub hold_from: f64,
    /// The e-value a hold for the rest of `maxHold` would reach if the canary were `hold_ratio`
    /// times as bad (this step's traffic, the stable rate seen so far); 0 when the step may not
    /// hold. A hold needs it to reach `bound`.
    pub hold_e_value: f64,
    /// The rate ratio that projection assumes: [`HOLD_RATIO`] or the canary/stable ratio observed
    /// over the rollout so far, whichever is larger.
    #[serde(default = "default_hold_ratio")]
    pub hold_ratio: f64,
    pub bound: f64,
    pub hold_above: f64,
    pub alpha: f64,
    /// Completed steps' counts (the evidence carried into this step).
    pub earlier: Vec<Block>,
}

fn default_hold_ratio() -> f64 {
    HOLD_RATIO
}

impl Evidence {
    /// The blocks to carry into the next step.
    pub fn carry(&self) -> Vec<Block> {
        let mut out = self.earlier.clone();
        out.push(Block { canary: self.canary, stable: self.stable });
        out
    }
}

/// The grid of u ≥ 0 the likelihoods are evaluated on.
fn grid() -> impl Iterator<Item = f64> {
    let n = (GRID_MAX / GRID_STEP).round() as usize + 1;
    (0..n).map(|i| i as f64 * GRID_STEP)
}

/// The half-normal prior's log-weights on the grid (summing to 1).
fn prior(sd: f64) -> Vec<f64> {
    let dens: Vec<f64> = grid().map(|x| -0.5 * (x / sd).powi(2)).collect();
    let norm = log_sum_exp(&dens);
    dens.iter().map(|d| d - norm).collect()
}

/// Per-step conditional likelihoods of the blocks with bad events on both versions' traffic.
fn likelihoods(blocks: &[Block]) -> Vec<CondLik> {
    blocks
        .iter()
        .filter(|b| b.canary.requests > 0.0 && b.stable.requests > 0.0 && b.canary.errors + b.stable.errors > 0.0)
        .map(|b| {
            CondLik::new(b.canary.errors.max(0.0), b.stable.errors.max(0.0), b.canary.requests / b.stable.requests)
        })
        .collect()
}

/// `Σ_b ln L_b(u)/L_b(0)` at every grid point u ≥ 0 (empty without bad events).
fn log_ratios(blocks: &[Block]) -> Vec<f64> {
    let liks = likelihoods(blocks);
    if liks.is_empty() {
        return vec![];
    }
    let at0: f64 = liks.iter().map(|l| l.at(0.0)).sum();
    grid().map(|u| liks.iter().map(|l| l.at(u)).sum::<f64>() - at0).collect()
}

/// ln of the mixture e-value `∫ Π_b L_b(u)/L_b(0) π(u) du` over u ≥ 0.
///
/// Conditional on a block's total number of bad events, each is a canary event with probability
/// `θ_b(u) = ρ_b e^u / (ρ_b e^u + 1)` (ρ_b = canary/stable requests in the block), whatever the
/// stable rate is. For any true u₀ ≤ 0 the per-event ratio `L(u)/L(0)` with u ≥ 0 has expectation
/// ≤ 1, so each `Π_b L_b(u)/L_b(0)` is a nonnegative supermartingale under the null "canary not
/// worse", and so is their mixture: it crosses `1/α` with probability ≤ α (Ville). Steps are
/// blocks with their own ρ; one mixture over all of them pays the prior's cost once per rollout.
pub fn log_e_value(blocks: &[Block], prior_sd: f64) -> f64 {
    mixture(&log_ratios(blocks), prior_sd)
}

fn mixture(lr: &[f64], prior_sd: f64) -> f64 {
    if lr.is_empty() {
        return 0.0;
    }
    let terms: Vec<f64> = lr.iter().zip(prior(prior_sd)).map(|(l, w)| l + w).collect();
    log_sum_exp(&terms)
}

/// All blocks' counts summed (those with traffic on both versions).
fn pooled(blocks: &[Block]) -> Block {
    blocks.iter().filter(|b| b.canary.requests > 0.0 && b.stable.requests > 0.0).fold(Block::default(), |a, b| Block {
        canary: Counts { requests: a.canary.requests + b.canary.requests, errors: a.canary.errors + b.canary.errors },
        stable: Counts { requests: a.stable.requests + b.stable.requests, errors: a.stable.errors + b.stable.errors },
    })
}

/// ln of the likelihood ratio of the rate ratio `ratio` against equal rates on the pooled counts of
/// all blocks, i.e. with one stable rate for the whole rollout (0 without bad events). Only the
/// hold uses it; the e-value conditions on each block.
fn log_lr_at(blocks: &[Block], ratio: f64) -> f64 {
    let u = ratio.ln();
    likelihoods(&[pooled(blocks)]).iter().map(|l| l.at(u) - l.at(0.0)).sum()
}

/// The stable bad-event rate over all blocks; half an event when none was seen, so a canary with
/// bad events against a clean stable can still be projected. `None` without stable traffic.
fn stable_rate(blocks: &[Block]) -> Option<f64> {
    let (bad, all) = blocks.iter().fold((0.0, 0.0), |(b, n), x| (b + x.stable.errors, n + x.stable.requests));
    (all > 0.0).then(|| bad.max(0.5) / all)
}

/// The rate ratio a hold is projected at: [`HOLD_RATIO`], or the canary/stable ratio observed over
/// all blocks when that is worse (capped at the grid's end). A canary seen 5× as bad is judged on
/// whether a hold could establish *that*, not the smaller 2×, which at low traffic never settles.
fn settle_ratio(blocks: &[Block]) -> f64 {
    let (bad, all) = blocks.iter().fold((0.0, 0.0), |(b, n), x| (b + x.canary.errors, n + x.canary.requests));
    match stable_rate(blocks) {
        Some(p) if all > 0.0 => (bad / all / p).clamp(HOLD_RATIO, GRID_MAX.exp()),
        _ => HOLD_RATIO,
    }
}

/// ln of the e-value that `hold_left` more of `current`'s traffic would bring if the canary's rate
/// were `ratio` times the stable rate seen so far (the expected counts, appended as a block).
fn log_e_after_hold(blocks: &[Block], current: Block, hold_left: f64, ratio: f64, prior_sd: f64) -> f64 {
    let Some(p) = stable_rate(blocks) else { return f64::NEG_INFINITY };
    if hold_left <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let (nc, ns) = (current.canary.requests * hold_left, current.stable.requests * hold_left);
    let more = Block {
        canary: Counts { requests: nc, errors: nc * (p * ratio).min(1.0) },
        stable: Counts { requests: ns, errors: ns * p },
    };
    let mut all_blocks = blocks.to_vec();
    all_blocks.push(more);
    log_e_value(&all_blocks, prior_sd)
}

/// Judge one stream: the evidence of completed steps (`earlier`) and of the current one.
pub fn evaluate(cfg: &AdaptiveConfig, earlier: &[Block], current: Block) -> Evidence {
    let mut blocks = earlier.to_vec();
    blocks.push(current);
    let log_e = log_e_value(&blocks, cfg.prior_sd);
    let log_lr = log_lr_at(&blocks, HOLD_RATIO);
    let log_bound = (1.0 / cfg.alpha).ln();
    let hold_ratio = settle_ratio(&blocks);
    let log_after_hold = if cfg.hold_left > 0.0 {
        log_e_after_hold(&blocks, current, cfg.hold_left, hold_ratio, cfg.prior_sd)
    } else {
        f64::NEG_INFINITY
    };
    let hold_from = if cfg.held { cfg.hold_above * KEEP_HOLDING } else { cfg.hold_above };
    // Without bad events (LR exactly 1) there is nothing to lean on, whatever `hold_above` is.
    let suspicious = !likelihoods(&blocks).is_empty() && log_lr >= hold_from.ln();
    let decision = if log_e >= log_bound {
        AdaptiveDecision::Regression
    } else if suspicious && log_after_hold >= log_bound {
        AdaptiveDecision::Hold
    } else {
        AdaptiveDecision::Pass
    };
    Evidence {
        decision,
        canary: current.canary,
        stable: current.stable,
        canary_rate: current.canary.rate() * 100.0,
        stable_rate: current.stable.rate() * 100.0,
        e_value: log_e.exp(),
        log_e,
        likelihood_ratio: log_lr.exp(),
        suspicious,
        hold_from,
        hold_e_value: log_after_hold.exp(),
        hold_ratio,
        bound: 1.0 / cfg.alpha,
        hold_above: cfg.hold_above,
        alpha: cfg.alpha,
        earlier: earlier.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(c: (f64, f64), s: (f64, f64)) -> Block {
        Block { canary: Counts { requests: c.0, errors: c.1 }, stable: Counts { requests: s.0, errors: s.1 } }
    }

    fn cfg() -> AdaptiveConfig {
        AdaptiveConfig { alpha: 0.01, hold_above: DEFAULT_HOLD_ABOVE, hold_left: 5.0, prior_sd: PRIOR_SD, held: false }
    }

    #[test]
    fn a_good_canary_passes_at_the_end_of_its_first_interval() {
        // 5 % of 6000 requests, both at 0.5 %: the canary is as good as stable.
        let ev = evaluate(&cfg(), &[], block((300.0, 1.0), (5700.0, 28.0)));
        assert_eq!(ev.decision, AdaptiveDecision::Pass, "{ev:?}");
        assert!(ev.e_value < 1.0);
        // No bad events at all: no evidence either way.
        let ev = evaluate(&cfg(), &[], block((300.0, 0.0), (5700.0, 0.0)));
        assert_eq!((ev.decision, ev.log_e), (AdaptiveDecision::Pass, 0.0));
    }

    #[test]
    fn a_clear_regression_is_established_at_once() {
        // 4 % vs 0.5 %.
        let ev = evaluate(&cfg(), &[], block((600.0, 24.0), (11400.0, 57.0)));
        assert_eq!(ev.decision, AdaptiveDecision::Regression, "{ev:?}");
        assert!(ev.e_value >= ev.bound);
        assert!((ev.canary_rate - 4.0).abs() < 1e-9 && (ev.stable_rate - 0.5).abs() < 1e-9);
    }

    #[test]
    fn suspicion_holds_the_step_until_max_hold() {
        // Twice the stable rate on little traffic: suspicious, not conclusive.
        let b = block((1500.0, 15.0), (4500.0, 22.0));
        let ev = evaluate(&cfg(), &[], b);
        assert_eq!(ev.decision, AdaptiveDecision::Hold, "{ev:?}");
        assert!(ev.likelihood_ratio >= DEFAULT_HOLD_ABOVE && ev.e_value < ev.bound, "{ev:?}");
        assert!(ev.hold_e_value >= ev.bound, "a hold can settle it: {ev:?}");
        let ev = evaluate(&AdaptiveConfig { hold_left: 0.0, ..cfg() }, &[], b);
        assert_eq!((ev.decision, ev.hold_e_value), (AdaptiveDecision::Pass, 0.0));
    }

    #[test]
    fn evidence_of_earlier_steps_is_carried() {
        let first = block((1500.0, 15.0), (4500.0, 22.0));
        let second = block((3000.0, 30.0), (3000.0, 15.0));
        let alone = evaluate(&cfg(), &[], second);
        assert_ne!(alone.decision, AdaptiveDecision::Regression);
        let two = evaluate(&cfg(), &[first], second);
        assert!(two.log_e > alone.log_e, "{two:?}");
        assert_eq!(two.carry(), vec![first, second]);
        let ev = evaluate(&cfg(), &two.carry(), second);
        assert_eq!(ev.decision, AdaptiveDecision::Regression, "{ev:?}");
        assert!(
            (ev.canary_rate - 1.0).abs() < 1e-9 && (ev.stable_rate - 0.5).abs() < 1e-9,
            "this step's rates: {ev:?}"
        );
    }

    #[test]
    fn suspicion_is_the_likelihood_ratio_of_a_canary_twice_as_bad() {
        // ρ = 1/3: a bad event is the canary's with probability 1/4 at equal rates, 2/5 at twice
        // the rate, so LR = 1.6^15 · 0.8^22.
        let ev = evaluate(&cfg(), &[], block((1500.0, 15.0), (4500.0, 22.0)));
        let by_hand = 15.0 * 1.6f64.ln() + 22.0 * 0.8f64.ln();
        assert!((ev.likelihood_ratio.ln() - by_hand).abs() < 1e-9, "{ev:?}");
        // Equal rates: below 1, and falling as the evidence grows.
        let small = evaluate(&cfg(), &[], block((3000.0, 14.0), (3000.0, 15.0)));
        let large = evaluate(&cfg(), &[], block((30000.0, 140.0), (30000.0, 150.0)));
        assert!(small.likelihood_ratio < DEFAULT_HOLD_ABOVE, "{small:?}");
        assert!(large.likelihood_ratio < small.likelihood_ratio * 1e-3, "{large:?}");
        assert_eq!((small.decision, large.decision), (AdaptiveDecision::Pass, AdaptiveDecision::Pass));
        // 1.6× the stable rate: suspicious, held.
        let ev = evaluate(&cfg(), &[], block((3000.0, 24.0), (3000.0, 15.0)));
        assert!(ev.likelihood_ratio >= DEFAULT_HOLD_ABOVE && ev.e_value < ev.bound, "{ev:?}");
        assert_eq!(ev.decision, AdaptiveDecision::Hold, "{ev:?}");
    }

    #[test]
    fn a_hold_that_could_not_establish_the_regression_is_not_made() {
        // 0.1 % errors at 50 % of 100 rps: 4 canary vs 2 stable errors leans towards harm, but five
        // more such minutes of a canary twice as bad (as bad as it looks) would not reach the
        // bound: pass now.
        let b = block((3000.0, 4.0), (3000.0, 2.0));
        let ev = evaluate(&cfg(), &[], b);
        assert_eq!(ev.hold_ratio, HOLD_RATIO, "{ev:?}");
        assert!(ev.likelihood_ratio >= DEFAULT_HOLD_ABOVE && ev.hold_e_value < ev.bound, "{ev:?}");
        assert_eq!(ev.decision, AdaptiveDecision::Pass, "{ev:?}");
        // With forty times the traffic still to come, holding can settle it.
        let ev = evaluate(&AdaptiveConfig { hold_left: 40.0, ..cfg() }, &[], b);
        assert_eq!(ev.decision, AdaptiveDecision::Hold, "{ev:?}");
    }

    #[test]
    fn a_canary_seen_far_worse_is_held_at_low_traffic() {
        // 0.5 % errors at 10 rps, one-minute steps of 5 / 25 / 50 %: the canary has 11 errors
        // against stable's 7, about 4.3× its rate over the rollout. Five more minutes of a canary twice as
        // bad would not settle it; of one as bad as it looks, they would.
        let earlier = [block((30.0, 0.0), (570.0, 3.0)), block((150.0, 3.0), (450.0, 2.0))];
        let current = block((300.0, 8.0), (300.0, 2.0));
        let ev = evaluate(&cfg(), &earlier, current);
        assert!((4.0..5.0).contains(&ev.hold_ratio), "{ev:?}");
        assert!(ev.e_value < ev.bound && ev.hold_e_value >= ev.bound, "{ev:?}");
        assert_eq!(ev.decision, AdaptiveDecision::Hold, "{ev:?}");
        let mut blocks = earlier.to_vec();
        blocks.push(current);
        let at_two = log_e_after_hold(&blocks, current, 5.0, HOLD_RATIO, PRIOR_SD);
        assert!(at_two < ev.bound.ln(), "ratio 2 could not settle it: {}", at_two.exp());
        // Stable without errors: the canary's errors are still projected (half a stable event).
        let ev = evaluate(&cfg(), &[], block((300.0, 3.0), (300.0, 0.0)));
        assert_eq!((ev.hold_ratio, ev.decision), (6.0, AdaptiveDecision::Hold), "{ev:?}");
    }

    #[test]
    fn a_good_canary_at_100_rps_still_passes() {
        // 0.5 % errors at 100 rps, one-minute steps of 5 / 25 / 50 %, canary as good as stable.
        let earlier = [block((300.0, 2.0), (5700.0, 28.0)), block((1500.0, 7.0), (4500.0, 23.0))];
        let ev = evaluate(&cfg(), &earlier, block((3000.0, 14.0), (3000.0, 16.0)));
        assert_eq!(ev.decision, AdaptiveDecision::Pass, "{ev:?}");
        assert!(!ev.suspicious && ev.hold_ratio == HOLD_RATIO, "{ev:?}");
    }

    #[test]
    fn suspicion_compares_the_canary_with_all_the_stable_errors_of_the_rollout() {
        // 0.5 % errors at 100 rps, one-minute steps of 5 / 25 / 50 %; the canary has 39 errors in
        // 4800 requests (0.81 %), stable 74 in 13200 (0.56 %), but stable happened to see 0.8 % in
        // this step. Step by step the canary looks no worse than stable; against the stable rate of
        // the whole rollout it looks 1.45× as bad: the last step holds for more evidence.
        let earlier = [block((300.0, 1.0), (5700.0, 28.0)), block((1500.0, 8.0), (4500.0, 22.0))];
        let current = block((3000.0, 30.0), (3000.0, 24.0));
        let ev = evaluate(&cfg(), &earlier, current);
        let by_step: f64 = earlier.iter().chain([&current]).map(|b| log_lr_at(&[*b], HOLD_RATIO)).sum();
        assert!(by_step < 0.0, "step by step: {}", by_step.exp());
        // ρ = 4800 / 13200: a bad event is the canary's with probability 4/15 at equal rates, 8/19 at
        // twice the rate.
        let (t0, t1) = (4.0f64 / 15.0, 8.0f64 / 19.0);
        let by_hand = 39.0 * (t1 / t0).ln() + 74.0 * ((1.0 - t1) / (1.0 - t0)).ln();
        assert!((ev.likelihood_ratio.ln() - by_hand).abs() < 1e-9, "{ev:?}");
        assert!(ev.likelihood_ratio >= DEFAULT_HOLD_ABOVE && ev.e_value < ev.bound, "{ev:?}");
        assert_eq!(ev.decision, AdaptiveDecision::Hold, "{ev:?}");
        // The rollback evidence still compares within each step.
        let mut blocks = earlier.to_vec();
        blocks.push(current);
        assert_eq!(ev.log_e, log_e_value(&blocks, PRIOR_SD));
    }

    #[test]
    fn a_held_step_keeps_holding_until_the_evidence_turns() {
        // 0.6 % vs 0.5 % at 50 % of 100 rps: "twice as bad" fits worse than "equal" (LR 0.41), so
        // a step that is not held passes; a held one keeps holding — a canary twice as bad dips
        // like this on its way to the bound.
        let dip = block((3000.0, 18.0), (3000.0, 15.0));
        let fresh = evaluate(&cfg(), &[], dip);
        assert!(fresh.likelihood_ratio < DEFAULT_HOLD_ABOVE, "{fresh:?}");
        assert_eq!((fresh.decision, fresh.hold_from), (AdaptiveDecision::Pass, DEFAULT_HOLD_ABOVE), "{fresh:?}");
        let held = AdaptiveConfig { held: true, ..cfg() };
        let ev = evaluate(&held, &[], dip);
        assert_eq!(ev.hold_from, DEFAULT_HOLD_ABOVE * KEEP_HOLDING);
        assert_eq!(ev.decision, AdaptiveDecision::Hold, "{ev:?}");
        // Half the stable rate: the evidence has turned, the hold ends.
        let ev = evaluate(&held, &[], block((3000.0, 10.0), (3000.0, 20.0)));
        assert!(ev.likelihood_ratio < DEFAULT_HOLD_ABOVE * KEEP_HOLDING, "{ev:?}");
        assert_eq!(ev.decision, AdaptiveDecision::Pass, "{ev:?}");
        // And maxHold still ends it.
        let ev = evaluate(&AdaptiveConfig { hold_left: 0.0, ..held }, &[], dip);
        assert_eq!(ev.decision, AdaptiveDecision::Pass, "{ev:?}");
    }

    #[test]
    fn a_better_canary_is_never_evidence_of_harm() {
        let ev = evaluate(&cfg(), &[], block((3000.0, 5.0), (3000.0, 30.0)));
        assert!(ev.log_e < 0.0, "{ev:?}");
        // Only stable traffic (or none): nothing to compare, no evidence.
        assert_eq!(log_e_value(&[block((0.0, 0.0), (3000.0, 30.0))], PRIOR_SD), 0.0);
    }

    /// Ville's inequality on the exact model: at 0.5 % errors for both versions, 50 looks at growing
    /// counts cross 1/α in well under α of the paths.
    #[test]
    fn peeking_every_interval_keeps_false_alarms_below_alpha() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (paths, mut crossed) = (400, 0);
        for _ in 0..paths {
            let mut b = block((0.0, 0.0), (0.0, 0.0));
            for _ in 0..50 {
                for _ in 0..1000 {
                    let canary = rng.random::<f64>() < 0.25;
                    let error = rng.random::<f64>() < 0.005;
                    let side = if canary { &mut b.canary } else { &mut b.stable };
                    side.requests += 1.0;
                    side.errors += f64::from(u8::from(error));
                }
                if log_e_value(&[b], PRIOR_SD) >= (1.0f64 / 0.01).ln() {
                    crossed += 1;
                    break;
                }
            }
        }
        assert!(crossed <= paths / 100 + 2, "{crossed} of {paths} crossed");
    }
}
