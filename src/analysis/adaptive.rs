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
//! - **hold** — at the last step before 100 %, the likelihood ratio at the observed rate ratio
//!   (best-fitting worse canary against equal rates) is at least `holdAbove`: the data lean towards
//!   harm without establishing it, so the step stays where it is and evidence keeps accumulating,
//!   for at most `maxHold`;
//! - **pass** — otherwise (or once the hold has lasted `maxHold`).
//!
//! Only the rollback needs the anytime-valid e-value: holding decides when to look again, costs
//! time and never a false rollback, so suspicion is the plain likelihood ratio — it reacts to what
//! the data say now, where the mixture e-value also pays its prior's cost.
//!
//! Pure and deterministic: `examples/judge_eval.rs` evaluates it on simulated traffic.

use serde::{Deserialize, Serialize};

use super::judge::{CondLik, Counts, log_sum_exp};

/// Scale of the half-normal prior on `u = ln(canary rate / stable rate)`, u ≥ 0. Tuned on
/// simulated traffic with seeds disjoint from the evaluation's (see examples/judge_eval.rs).
pub const PRIOR_SD: f64 = 1.0;
/// Default likelihood ratio (at the observed rate ratio, against equal rates) from which the last
/// step before 100 % is held for more evidence instead of passing (tuned like [`PRIOR_SD`]).
pub const DEFAULT_HOLD_ABOVE: f64 = 2.0;
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
    /// Hold a step while the likelihood ratio at the observed rate ratio is at least this (and
    /// the e-value below `1/alpha`).
    pub hold_above: f64,
    /// Whether this step may be held: the last step before 100 %, held for less than `maxHold`.
    /// Earlier steps pass unless the regression is established: their evidence carries into the
    /// next step, where more canary traffic gathers it faster than holding would.
    pub may_hold: bool,
    /// Scale of the prior on ln(rate ratio) ([`PRIOR_SD`]).
    pub prior_sd: f64,
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
    /// The likelihood ratio at the observed rate ratio (u ≥ 0) against equal rates: the suspicion
    /// compared with `hold_above`.
    pub likelihood_ratio: f64,
    pub bound: f64,
    pub hold_above: f64,
    pub alpha: f64,
    /// Completed steps' counts (the evidence carried into this step).
    pub earlier: Vec<Block>,
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

/// Judge one stream: the evidence of completed steps (`earlier`) and of the current one.
pub fn evaluate(cfg: &AdaptiveConfig, earlier: &[Block], current: Block) -> Evidence {
    let mut blocks = earlier.to_vec();
    blocks.push(current);
    let lr = log_ratios(&blocks);
    let log_e = mixture(&lr, cfg.prior_sd);
    // The likelihood ratio at the maximum-likelihood u ≥ 0 (1 when the canary looks no worse). Not
    // an e-value: it only decides whether to hold.
    let log_lr = lr.into_iter().fold(0.0, f64::max);
    let log_bound = (1.0 / cfg.alpha).ln();
    let decision = if log_e >= log_bound {
        AdaptiveDecision::Regression
    } else if cfg.may_hold && log_lr >= cfg.hold_above.ln() {
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
        AdaptiveConfig { alpha: 0.01, hold_above: DEFAULT_HOLD_ABOVE, may_hold: true, prior_sd: PRIOR_SD }
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
        let ev = evaluate(&AdaptiveConfig { may_hold: false, ..cfg() }, &[], b);
        assert_eq!(ev.decision, AdaptiveDecision::Pass);
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
    fn suspicion_is_the_likelihood_ratio_at_the_observed_rate_ratio() {
        // A canary no worse than stable: the best-fitting u ≥ 0 is 0, a ratio of exactly 1.
        let ev = evaluate(&cfg(), &[], block((3000.0, 14.0), (3000.0, 15.0)));
        assert_eq!(ev.likelihood_ratio, 1.0, "{ev:?}");
        // A worse one: at least the mixture (an average of the same ratios over the prior), and
        // suspicious well before the regression is established.
        let ev = evaluate(&cfg(), &[], block((3000.0, 24.0), (3000.0, 15.0)));
        assert!(ev.likelihood_ratio >= ev.e_value && ev.likelihood_ratio >= DEFAULT_HOLD_ABOVE, "{ev:?}");
        assert_eq!(ev.decision, AdaptiveDecision::Hold, "{ev:?}");
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
