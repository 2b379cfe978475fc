//! Namespace globs of the configuration (`ai-workflow-*`): `*` matches any run of characters,
//! everything else itself.

/// Whether `name` matches `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether any of `patterns` matches `name`.
pub fn any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| matches(p, name))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn star_matches_any_run() {
        for (p, n, m) in [
            ("*", "", true),
            ("*", "prod", true),
            ("prod", "prod", true),
            ("prod", "prod2", false),
            ("ai-workflow-*", "ai-workflow-prod", true),
            ("ai-workflow-*", "ai-workflow", false),
            ("*-prod", "shop-prod", true),
            ("*-prod", "shop-prod-x", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
        ] {
            assert_eq!(matches(p, n), m, "{p} ~ {n}");
        }
    }
}
