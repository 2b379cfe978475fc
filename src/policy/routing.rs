//! The policy fields that shape routing beyond the weights: `canaryMatch` (requests that always reach
//! the canary) and `mirror` (shadow traffic before the first step). The routers write them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, Policy, Strategy};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// Percent of the requests copied to the canary (1–100).
    pub percent: u8,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub duration: Duration,
}

/// One `canaryMatch` alternative: exact header matches, all of which must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryMatch {
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Limits of `canaryMatch` (the routers' own limits are larger: Gateway API allows 16 header matches).
pub const MAX_CANARY_MATCHES: usize = 8;
pub const MAX_MATCH_HEADERS: usize = 8;
const MAX_HEADER_VALUE: usize = 256;

/// A lowercase HTTP header name (RFC 9110 token; Istio wants lowercase names), at most 128 bytes.
fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Policy {
    pub(super) fn validate_mirror(&self) -> Result<(), FieldError> {
        let Some(m) = &self.mirror else { return Ok(()) };
        if self.strategy != Strategy::Canary {
            return Err(FieldError::new("mirror", "only canary policies mirror before the first step"));
        }
        if !(1..=100).contains(&m.percent) {
            return Err(FieldError::new("mirror.percent", "must be 1 to 100"));
        }
        if m.duration < self.interval {
            return Err(FieldError::new("mirror.duration", "must be at least one interval (one analysis)"));
        }
        if m.duration >= self.progress_deadline {
            return Err(FieldError::new("mirror.duration", "must be shorter than progressDeadline"));
        }
        Ok(())
    }

    pub(super) fn validate_canary_match(&self) -> Result<(), FieldError> {
        if self.canary_match.is_empty() {
            return Ok(());
        }
        if self.strategy != Strategy::Canary {
            return Err(FieldError::new(
                "canaryMatch",
                "only canary policies route matching requests to the new version (blue-green: use preflight)",
            ));
        }
        if self.canary_match.len() > MAX_CANARY_MATCHES {
            return Err(FieldError::new("canaryMatch", format!("at most {MAX_CANARY_MATCHES} entries")));
        }
        for (i, m) in self.canary_match.iter().enumerate() {
            let f = format!("canaryMatch[{i}].headers");
            if m.headers.is_empty() || m.headers.len() > MAX_MATCH_HEADERS {
                return Err(FieldError::new(f, format!("give 1 to {MAX_MATCH_HEADERS} headers")));
            }
            for (name, value) in &m.headers {
                if !is_header_name(name) {
                    return Err(FieldError::new(
                        format!("{f}.{name}"),
                        "must be a lowercase HTTP header name (a-z, 0-9 and !#$%&'*+-.^_`|~, at most 128)",
                    ));
                }
                if value.is_empty() || value.len() > MAX_HEADER_VALUE || value.chars().any(char::is_control) {
                    return Err(FieldError::new(
                        format!("{f}.{name}"),
                        format!("must be a non-empty value without control characters (at most {MAX_HEADER_VALUE})"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn p(src: &str) -> Result<Policy, crate::policy::PolicyFileError> {
        crate::policy::parse(Path::new("p.yaml"), src)
    }

    #[test]
    fn canary_match_is_checked_and_located() {
        let ok =
            p("name: x\nstrategy: canary\nsteps: [5, 100]\ncanaryMatch:\n  - headers: {canary: \"true\"}\n").unwrap();
        assert_eq!(ok.canary_match[0].headers.get("canary").map(String::as_str), Some("true"));
        let e = p("name: x\nstrategy: canary\nsteps: [5, 100]\ncanaryMatch:\n  - headers: {Canary: \"true\"}\n")
            .unwrap_err();
        assert!(e.message.contains("canaryMatch[0].headers.Canary") && e.message.contains("lowercase"), "{e}");
        assert_eq!(e.line, 5, "{e}");
        let e = p("name: x\nstrategy: canary\nsteps: [5, 100]\ncanaryMatch:\n  - headers: {}\n").unwrap_err();
        assert!(e.message.contains("give 1 to"), "{e}");
        let e = p("name: x\nstrategy: blue-green\ncanaryMatch:\n  - headers: {canary: \"true\"}\n").unwrap_err();
        assert!(e.message.starts_with("canaryMatch: only canary policies"), "{e}");
        let e = p("name: x\nstrategy: canary\nsteps: [100]\ncanaryMatch:\n  - header: {a: b}\n").unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn mirror_is_checked() {
        let base = "name: x\nstrategy: canary\nsteps: [5, 100]\ninterval: 1m\n";
        let ok = p(&format!("{base}mirror: {{percent: 50, duration: 5m}}\n")).unwrap();
        assert_eq!(ok.mirror, Some(Mirror { percent: 50, duration: Duration::from_secs(300) }));
        let e = p(&format!("{base}mirror: {{percent: 0, duration: 5m}}\n")).unwrap_err();
        assert!(e.message.starts_with("mirror.percent"), "{e}");
        let e = p(&format!("{base}mirror: {{percent: 10, duration: 10s}}\n")).unwrap_err();
        assert!(e.message.contains("at least one interval"), "{e}");
        let e = p(&format!("{base}mirror: {{percent: 10, duration: 10m}}\n")).unwrap_err();
        assert!(e.message.contains("progressDeadline"), "{e}");
        let e = p("name: x\nstrategy: blue-green\nmirror: {percent: 10, duration: 5m}\n").unwrap_err();
        assert!(e.message.starts_with("mirror: only canary"), "{e}");
    }
}
