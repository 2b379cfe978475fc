//! What the traffic allows: the power of the best possible test that a canary's bad-event rate is
//! `ratio` times the stable rate, against equal rates. Neyman–Pearson, with the stable rate known
//! exactly and a fixed number of canary requests — no judge with the same false-alarm level and the
//! same exposure catches more. `examples/judge_eval.rs` prints it next to the judges' results.

use statrs::distribution::{Binomial, Discrete, DiscreteCDF};

/// Power of the most powerful level-`alpha` test of X ~ Bin(n, p) against X ~ Bin(n, ratio·p),
/// ratio > 1 (X = the canary's bad events among its `n` requests): reject above a critical count,
/// at the critical count with the probability that spends α exactly (the randomised test, so this
/// is an upper bound for any non-randomised one). `None` for inputs that are no distribution.
pub fn best_power(n: u64, p: f64, ratio: f64, alpha: f64) -> Option<f64> {
    if !(ratio > 1.0 && alpha > 0.0 && alpha < 1.0) {
        return None;
    }
    let h0 = Binomial::new(p, n).ok()?;
    let h1 = Binomial::new((p * ratio).min(1.0), n).ok()?;
    // The smallest c with P0(X > c) ≤ α (`sf` is decreasing in c, and 0 at n).
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if h0.sf(mid) <= alpha { hi = mid } else { lo = mid + 1 }
    }
    let at_c = h0.pmf(lo);
    let gamma = if at_c > 0.0 { ((alpha - h0.sf(lo)) / at_c).clamp(0.0, 1.0) } else { 0.0 };
    Some(h1.sf(lo) + gamma * h1.pmf(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_matches_a_hand_computed_test() {
        // n = 2, p = 0.1 against 0.2, α = 5 %: P0(X = 2) = 0.01 ≤ α < P0(X ≥ 1) = 0.19, so reject
        // at X = 2 and at X = 1 with γ = 0.04 / 0.18; power = 0.04 + γ · 0.32 = 1/9.
        let power = best_power(2, 0.1, 2.0, 0.05).unwrap();
        assert!((power - 1.0 / 9.0).abs() < 1e-12, "{power}");
    }

    #[test]
    fn the_bound_grows_with_exposure_and_rejects_nonsense() {
        // 0.1 % errors, 4 800 canary requests (3 minutes at 5/25/50 % of 100 rps): 4.8 errors
        // expected, 9.6 at 2× — no α = 1 % test catches that often.
        let thin = best_power(4800, 0.001, 2.0, 0.01).unwrap();
        let busy = best_power(48_000, 0.001, 2.0, 0.01).unwrap();
        assert!(thin > 0.01 && thin < 0.5 && busy > 0.99, "{thin} {busy}");
        assert_eq!(best_power(10, 0.1, 1.0, 0.01), None);
        assert_eq!(best_power(10, f64::NAN, 2.0, 0.01), None);
    }
}
