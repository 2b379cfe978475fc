//! Judges: pure functions from measurements to verdicts (no I/O, no clock), so they are tested
//! exactly and evaluated on simulated traffic (`examples/judge_eval.rs`, docs/analysis.md).
//!
//! - [`threshold`]: one value against fixed bounds (Flagger's semantics).
//! - [`sequential`]: canary errors against stable errors with an anytime-valid test.
//! - [`mann_whitney_higher`]: Kayenta-style rank test on per-bucket rates (the evaluation's baseline).
//! - [`combine`]: the analysis verdict from the metric verdicts and `onNoData`.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use statrs::stats_tests::Alternative;
use statrs::stats_tests::mannwhitneyu::{MannWhitneyUMethod, mannwhitneyu};

use super::{MetricVerdict, Verdict};
use crate::policy::OnNoData;

/// A value against `min`/`max`: below min or above max is a failure; no value, NaN or ±Inf is no data.
pub fn threshold(value: Option<f64>, min: Option<f64>, max: Option<f64>) -> MetricVerdict {
    let Some(v) = value.filter(|v| v.is_finite()) else { return MetricVerdict::NoData };
    if min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m) { MetricVerdict::Fail } else { MetricVerdict::Pass }
}

/// The analysis verdict from the metric verdicts (a sequential regression is decided by the caller):
/// any failure is one failed check; an error (bad query, ambiguous series) is never ignored and never
/// passes — when every metric errored the analysis is an error; no data holds unless
/// `onNoData: ignore` leaves it out; an open sequential test holds.
pub fn combine(results: &[MetricVerdict], on_no_data: OnNoData) -> Verdict {
    use MetricVerdict as M;
    if results.contains(&M::Fail) {
        return Verdict::Fail;
    }
    if !results.is_empty() && results.iter().all(|r| *r == M::Error) {
        return Verdict::Error;
    }
    if results.contains(&M::Error) {
        return Verdict::NoData;
    }
    let judged: Vec<M> =
        results.iter().copied().filter(|r| !(on_no_data == OnNoData::Ignore && *r == M::NoData)).collect();
    if judged.contains(&M::NoData) || (judged.is_empty() && !results.is_empty()) {
        return Verdict::NoData;
    }
    if judged.contains(&M::Inconclusive) {
        return Verdict::Inconclusive;
    }
    Verdict::Pass
}

/// Requests and 5xx errors of one version over a window (floats: Prometheus' `increase` extrapolates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: f64,
    pub errors: f64,
}

impl Counts {
    pub fn rate(&self) -> f64 {
        if self.requests > 0.0 { self.errors / self.requests } else { f64::NAN }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequentialConfig {
    /// Bound on the probability of rolling back a canary that is not worse than stable + tolerance.
    pub alpha: f64,
    /// Allowed increase of the error rate, in percentage points.
    pub tolerance_pp: f64,
    /// Steps whose evidence is multiplied together (the stable-rate bounds are split over them).
    pub blocks: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequentialInput {
    /// Counts since the current step started.
    pub canary: Counts,
    pub stable: Counts,
    /// ln of the harm e-value accumulated over earlier steps (0 at the first step).
    pub carry_log_e: f64,
    /// The step's maximum duration is reached.
    pub at_max_duration: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SequentialDecision {
    /// A regression beyond the tolerance is established: roll back.
    Regression,
    /// The canary is shown not worse than stable + tolerance: the step passes.
    NotWorse,
    /// The step's maximum duration is reached without evidence of harm: the step passes.
    NoHarm,
    /// Keep watching.
    Continue,
}

/// Everything the sequential test computed, for the rollout's events and `lastAnalysis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequentialStats {
    pub judge: String,
    pub decision: SequentialDecision,
    pub canary: Counts,
    pub stable: Counts,
    /// Error rates in percent and their difference in percentage points.
    pub canary_error_rate: f64,
    pub stable_error_rate: f64,
    pub difference_pp: f64,
    pub tolerance_pp: f64,
    pub alpha: f64,
    /// ln e-value against "no regression beyond tolerance": this step, earlier steps, and the bound.
    pub harm_log_e: f64,
    pub harm_log_e_carry: f64,
    pub not_worse_log_e: f64,
    pub log_bound: f64,
    /// Error-rate ratios (canary/stable) that bound the two null hypotheses.
    pub harm_null_ratio: f64,
    pub not_worse_null_ratio: f64,
    /// Anytime-valid bounds of the stable error rate in percent (tolerance > 0 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_rate_bounds: Option<(f64, f64)>,
}

impl SequentialStats {
    /// ln e-value to carry into the next step.
    pub fn carry_out(&self) -> f64 {
        self.harm_log_e_carry + self.harm_log_e
    }
}

/// Passing at the step's maximum duration needs the harm e-value below `bound^NO_HARM_FRACTION`.
const NO_HARM_FRACTION: f64 = 0.5;
const GRID_MAX: f64 = 6.0;
const GRID_STEP: f64 = 0.01;
/// Prior scales on u = ln(canary rate / stable rate).
const HARM_PRIOR_SD: f64 = 1.5;
const NOT_WORSE_PRIOR_SD: f64 = 1.0;

struct Grid {
    u: Vec<f64>,
    log_w: Vec<f64>,
}

/// Normal prior of scale `sd` on u in [lo, GRID_MAX], discretised (weights sum to 1).
fn grid(lo: f64, sd: f64) -> Grid {
    let n = ((GRID_MAX - lo) / GRID_STEP).round() as usize + 1;
    let u: Vec<f64> = (0..n).map(|i| lo + i as f64 * GRID_STEP).collect();
    let dens: Vec<f64> = u.iter().map(|x| -0.5 * (x / sd).powi(2)).collect();
    let norm = log_sum_exp(&dens);
    Grid { u, log_w: dens.iter().map(|d| d - norm).collect() }
}

static HARM_PRIOR: LazyLock<Grid> = LazyLock::new(|| grid(0.0, HARM_PRIOR_SD));
static NOT_WORSE_PRIOR: LazyLock<Grid> = LazyLock::new(|| grid(-GRID_MAX, NOT_WORSE_PRIOR_SD));

/// Canary vs stable error counts as two Poisson streams with rates `r·p` and `p`.
///
/// Conditional on the total number of errors, each error is a canary error with probability
/// `θ(r) = ρr/(ρr+1)` (ρ = canary/stable requests), whatever the stable rate `p` is, so the stable
/// rate drops out (Lindon et al., KDD 2022). The harm test's e-value is a mixture likelihood over
/// `u = ln r` (half-normal prior on u ≥ 0) divided by the likelihood maximised over the null
/// `r ≤ r₀`, where `r₀ = 1 + τ/p_lo` turns the tolerance τ (percentage points) into a ratio with an
/// anytime-valid lower bound `p_lo` of the stable rate (a beta-binomial confidence sequence). Under
/// the null this is dominated by a nonnegative martingale, so by Ville's inequality
/// `P(ever ≥ 1/α) ≤ α`: it may be looked at every interval. The not-worse test is the mirror image
/// (null `r ≥ 1 + τ/p_hi`). Steps multiply their e-values (`carry_log_e`).
pub fn sequential(cfg: &SequentialConfig, inp: &SequentialInput) -> SequentialStats {
    let (c, s) = (inp.canary, inp.stable);
    let tau = (cfg.tolerance_pp / 100.0).max(0.0);
    let (alpha_test, bounds) = if tau > 0.0 {
        let alpha_cs = cfg.alpha / 2.0 / f64::from(cfg.blocks.max(1));
        (cfg.alpha / 2.0, Some(beta_binomial_cs(s.errors, s.requests, alpha_cs)))
    } else {
        (cfg.alpha, None)
    };
    let (r0, r1) = match bounds {
        Some((lo, hi)) => {
            (if lo > 0.0 { 1.0 + tau / lo } else { f64::INFINITY }, 1.0 + tau / hi.max(f64::MIN_POSITIVE))
        }
        None => (1.0, 1.0),
    };
    let ll = CondLik::new(c.errors.max(0.0), s.errors.max(0.0), c.requests / s.requests);
    let harm_log_e = ll.log_mixture(&HARM_PRIOR) - ll.sup_below(r0.ln());
    let not_worse_log_e = ll.log_mixture(&NOT_WORSE_PRIOR) - ll.sup_above(r1.ln());
    let log_bound = (1.0 / alpha_test).ln();
    let total = inp.carry_log_e + harm_log_e;
    let decision = if total >= log_bound {
        SequentialDecision::Regression
    } else if not_worse_log_e >= log_bound {
        SequentialDecision::NotWorse
    } else if inp.at_max_duration && total < NO_HARM_FRACTION * log_bound {
        SequentialDecision::NoHarm
    } else {
        SequentialDecision::Continue
    };
    let (cr, sr) = (c.rate() * 100.0, s.rate() * 100.0);
    SequentialStats {
        judge: "sequential".into(),
        decision,
        canary: c,
        stable: s,
        canary_error_rate: cr,
        stable_error_rate: sr,
        difference_pp: cr - sr,
        tolerance_pp: cfg.tolerance_pp,
        alpha: cfg.alpha,
        harm_log_e,
        harm_log_e_carry: inp.carry_log_e,
        not_worse_log_e,
        log_bound,
        harm_null_ratio: r0,
        not_worse_null_ratio: r1,
        stable_rate_bounds: bounds.map(|(lo, hi)| (lo * 100.0, hi * 100.0)),
    }
}

/// The conditional (binomial) log-likelihood of x canary and y stable errors as a function of u = ln r.
pub(crate) struct CondLik {
    x: f64,
    y: f64,
    ln_rho: f64,
}

impl CondLik {
    pub(crate) fn new(x: f64, y: f64, rho: f64) -> CondLik {
        CondLik { x, y, ln_rho: rho.ln() }
    }

    pub(crate) fn at(&self, u: f64) -> f64 {
        let z = u + self.ln_rho;
        // ln θ = −softplus(−z), ln(1−θ) = −softplus(z); 0·(−∞) is 0 here (no errors on that side).
        let a = if self.x > 0.0 { -self.x * softplus(-z) } else { 0.0 };
        let b = if self.y > 0.0 { -self.y * softplus(z) } else { 0.0 };
        a + b
    }

    /// The maximum-likelihood u (±∞ when one side has no errors; NaN when neither has).
    fn u_hat(&self) -> f64 {
        match (self.x > 0.0, self.y > 0.0) {
            (true, true) => (self.x / self.y).ln() - self.ln_rho,
            (true, false) => f64::INFINITY,
            (false, true) => f64::NEG_INFINITY,
            (false, false) => f64::NAN,
        }
    }

    /// sup of the log-likelihood over u ≤ u0 (the likelihood is unimodal in u).
    fn sup_below(&self, u0: f64) -> f64 {
        let h = self.u_hat();
        if h.is_nan() || h <= u0 { self.at_limit(h) } else { self.at(u0) }
    }

    fn sup_above(&self, u1: f64) -> f64 {
        let h = self.u_hat();
        if h.is_nan() || h >= u1 { self.at_limit(h) } else { self.at(u1) }
    }

    /// The likelihood at the MLE, including the limits ±∞ (where it is 1: all errors on one side).
    fn at_limit(&self, h: f64) -> f64 {
        if h.is_finite() { self.at(h) } else { 0.0 }
    }

    fn log_mixture(&self, g: &Grid) -> f64 {
        let terms: Vec<f64> = g.u.iter().zip(&g.log_w).map(|(u, w)| self.at(*u) + w).collect();
        log_sum_exp(&terms)
    }
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

pub(crate) fn log_sum_exp(v: &[f64]) -> f64 {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// Anytime-valid bounds of a Bernoulli rate from `k` successes in `n` trials: the p where the
/// Beta(½,½)-mixture martingale against p stays below 1/α (Robbins' method of mixtures).
pub fn beta_binomial_cs(k: f64, n: f64, alpha: f64) -> (f64, f64) {
    let n = n.max(0.0);
    let k = k.clamp(0.0, n);
    let Ok(ln_mix) = statrs::function::beta::checked_ln_beta(0.5 + k, 0.5 + n - k)
        .and_then(|m| statrs::function::beta::checked_ln_beta(0.5, 0.5).map(|b| m - b))
    else {
        return (0.0, 1.0);
    };
    let bound = (1.0 / alpha).ln();
    // log M(p) = ln_mix − ln L(p) ≥ bound outside the interval; ln L is concave with its top at k/n.
    let outside = |p: f64| {
        let ll = if k > 0.0 { k * p.ln() } else { 0.0 } + if n - k > 0.0 { (n - k) * (1.0 - p).ln() } else { 0.0 };
        ln_mix - ll >= bound
    };
    let p_hat = if n > 0.0 { k / n } else { 0.5 };
    let bisect = |mut inside: f64, mut out: f64| {
        for _ in 0..100 {
            let mid = 0.5 * (inside + out);
            if outside(mid) { out = mid } else { inside = mid }
        }
        inside
    };
    let lo = if outside(0.0) { bisect(p_hat, 0.0) } else { 0.0 };
    let hi = if outside(1.0) { bisect(p_hat, 1.0) } else { 1.0 };
    (lo, hi)
}

/// Kayenta-style: is the canary's metric stochastically higher than stable's (one-sided
/// Mann-Whitney U on per-bucket values, p < alpha)? Returns the verdict and the p-value.
///
/// The normal approximation (with continuity correction) is used for every sample size: statrs
/// 0.19's exact one-sided p-value is inverted (a completely separated canary gets p ≈ 1).
pub fn mann_whitney_higher(canary: &[f64], stable: &[f64], alpha: f64) -> (MetricVerdict, f64) {
    let c: Vec<f64> = canary.iter().copied().filter(|v| v.is_finite()).collect();
    let s: Vec<f64> = stable.iter().copied().filter(|v| v.is_finite()).collect();
    match mannwhitneyu(&c, &s, MannWhitneyUMethod::AsymptoticInclContinuityCorrection, Alternative::Greater) {
        Ok((_, p)) if p < alpha => (MetricVerdict::Fail, p),
        Ok((_, p)) => (MetricVerdict::Pass, p),
        Err(_) => (MetricVerdict::NoData, f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MetricVerdict as M;

    #[test]
    fn threshold_follows_flagger() {
        assert_eq!(threshold(Some(99.5), Some(99.0), None), M::Pass);
        assert_eq!(threshold(Some(99.0), Some(99.0), None), M::Pass, "the bound itself passes");
        assert_eq!(threshold(Some(98.9), Some(99.0), None), M::Fail);
        assert_eq!(threshold(Some(501.0), None, Some(500.0)), M::Fail);
        assert_eq!(threshold(Some(5.0), Some(1.0), Some(10.0)), M::Pass);
        for v in [None, Some(f64::NAN), Some(f64::INFINITY), Some(f64::NEG_INFINITY)] {
            assert_eq!(threshold(v, Some(99.0), None), M::NoData, "{v:?} is no data, never a pass");
        }
    }

    #[test]
    fn combine_rules() {
        use OnNoData::*;
        assert_eq!(combine(&[], Hold), Verdict::Pass, "no metrics: time-based");
        assert_eq!(combine(&[M::Pass, M::Pass], Hold), Verdict::Pass);
        assert_eq!(combine(&[M::Pass, M::Fail, M::NoData], Hold), Verdict::Fail, "a failure is a failed check");
        assert_eq!(combine(&[M::Pass, M::NoData], Hold), Verdict::NoData);
        assert_eq!(combine(&[M::Pass, M::NoData], Fail), Verdict::NoData, "the machine turns it into a failure");
        assert_eq!(combine(&[M::Pass, M::NoData], Ignore), Verdict::Pass, "ignored metrics leave the others");
        assert_eq!(combine(&[M::NoData, M::NoData], Ignore), Verdict::NoData, "nothing left to judge");
        assert_eq!(combine(&[M::Pass, M::Error], Ignore), Verdict::NoData, "an error never passes");
        assert_eq!(combine(&[M::Pass, M::Inconclusive], Hold), Verdict::Inconclusive);
        for on_no_data in [Hold, Fail, Ignore] {
            assert_eq!(combine(&[M::Error, M::Error], on_no_data), Verdict::Error, "every query errored: an error");
        }
        assert_eq!(combine(&[M::Error, M::Fail], Ignore), Verdict::Fail, "a failure is still evidence");
    }

    fn cfg(tol: f64) -> SequentialConfig {
        SequentialConfig { alpha: 0.01, tolerance_pp: tol, blocks: 3 }
    }

    fn input(c: (f64, f64), s: (f64, f64)) -> SequentialInput {
        SequentialInput {
            canary: Counts { requests: c.0, errors: c.1 },
            stable: Counts { requests: s.0, errors: s.1 },
            carry_log_e: 0.0,
            at_max_duration: false,
        }
    }

    #[test]
    fn clear_regression_is_established() {
        // 5 % canary with 4 % errors vs 0.5 %: 600 vs 11400 requests.
        let st = sequential(&cfg(0.0), &input((600.0, 24.0), (11400.0, 57.0)));
        assert_eq!(st.decision, SequentialDecision::Regression, "{st:?}");
        assert!(st.harm_log_e >= st.log_bound);
        assert!((st.difference_pp - 3.5).abs() < 1e-9);
    }

    #[test]
    fn equal_rates_never_look_like_harm() {
        let st = sequential(&cfg(0.0), &input((3000.0, 15.0), (3000.0, 15.0)));
        assert_eq!(st.decision, SequentialDecision::Continue);
        assert!(st.harm_log_e < 0.0, "{st:?}");
        let st =
            sequential(&cfg(0.0), &SequentialInput { at_max_duration: true, ..input((3000.0, 15.0), (3000.0, 15.0)) });
        assert_eq!(st.decision, SequentialDecision::NoHarm);
    }

    #[test]
    fn tolerance_absorbs_a_small_increase_and_shows_not_worse() {
        // 0.6 % vs 0.5 % on lots of traffic: harm beyond 0 pp is established, beyond 0.5 pp it is not,
        // and "not worse by more than 0.5 pp" is shown.
        let data = input((600000.0, 3600.0), (600000.0, 3000.0));
        assert_eq!(sequential(&cfg(0.0), &data).decision, SequentialDecision::Regression);
        let st = sequential(&cfg(0.5), &data);
        assert_eq!(st.decision, SequentialDecision::NotWorse, "{st:?}");
        let (lo, hi) = st.stable_rate_bounds.unwrap();
        assert!(lo < 0.5 && 0.5 < hi, "{lo} {hi}");
    }

    #[test]
    fn evidence_carries_across_steps() {
        let data = input((300.0, 5.0), (5700.0, 28.0));
        let alone = sequential(&cfg(0.0), &data);
        assert_eq!(alone.decision, SequentialDecision::Continue, "{alone:?}");
        let carried = sequential(&cfg(0.0), &SequentialInput { carry_log_e: alone.log_bound - 0.5, ..data });
        assert_eq!(carried.decision, SequentialDecision::Regression);
        assert!((carried.carry_out() - (alone.log_bound - 0.5 + alone.harm_log_e)).abs() < 1e-12);
    }

    #[test]
    fn no_errors_anywhere_is_neutral_and_max_duration_passes() {
        let st =
            sequential(&cfg(0.0), &SequentialInput { at_max_duration: true, ..input((100.0, 0.0), (1900.0, 0.0)) });
        assert!(st.harm_log_e.abs() < 1e-9, "{st:?}");
        assert_eq!(st.decision, SequentialDecision::NoHarm);
        // Only canary errors, none on stable: a regression.
        let st = sequential(&cfg(0.0), &input((500.0, 30.0), (500.0, 0.0)));
        assert_eq!(st.decision, SequentialDecision::Regression);
    }

    #[test]
    fn beta_binomial_bounds_contain_the_estimate_and_shrink() {
        let (lo1, hi1) = beta_binomial_cs(5.0, 1000.0, 0.01);
        let (lo2, hi2) = beta_binomial_cs(50.0, 10000.0, 0.01);
        assert!(lo1 < 0.005 && 0.005 < hi1);
        assert!(lo2 > lo1 && hi2 < hi1, "{lo1} {hi1} {lo2} {hi2}");
        assert_eq!(beta_binomial_cs(0.0, 0.0, 0.01), (0.0, 1.0));
        let (lo, _) = beta_binomial_cs(0.0, 100.0, 0.01);
        assert_eq!(lo, 0.0);
    }

    #[test]
    fn mann_whitney_flags_a_clearly_higher_canary() {
        // No ties: the small-sample case where statrs' exact p-value would be wrong.
        let stable = [0.005, 0.004, 0.006, 0.0055, 0.0051, 0.0041];
        let canary = [0.03, 0.02, 0.04, 0.035, 0.025, 0.05];
        assert_eq!(mann_whitney_higher(&canary, &stable, 0.01).0, M::Fail);
        assert_eq!(mann_whitney_higher(&stable, &canary, 0.01).0, M::Pass);
        assert_eq!(mann_whitney_higher(&[], &stable, 0.01).0, M::NoData);
    }
}
