//! How numbers read for people (analysis summaries, Slack messages).

/// At most 3 decimals, no trailing zeros: `99`, `99.5`, `0.123`.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_naturally() {
        assert_eq!(number(99.0), "99");
        assert_eq!(number(99.5), "99.5");
        assert_eq!(number(97.2), "97.2");
        assert_eq!(number(0.123456), "0.123");
        assert_eq!(number(1e20), "100000000000000000000");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
