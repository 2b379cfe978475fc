//! Namespace scopes: the glob lists that bound what a token may see and drive (`[server] tokens`'
//! `namespaces`) and what vane may touch in Kubernetes (`[kubernetes] namespaces`).
//!
//! A glob is a namespace name in which `*` stands for any run of characters (`ai-workflow-*`, `*-prod`,
//! `*`). Namespaces are DNS labels, so nothing else needs escaping; a glob with any other character is
//! refused when the configuration loads rather than silently matching nothing.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Namespaces(pub Vec<String>);

impl Default for Namespaces {
    /// Every namespace (`["*"]`).
    fn default() -> Self {
        Namespaces(vec!["*".into()])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace glob {glob:?}: {message}")]
pub struct GlobError {
    pub glob: String,
    pub message: &'static str,
}

impl Namespaces {
    pub fn all() -> Self {
        Namespaces::default()
    }

    /// Does any glob match `namespace`?
    pub fn allows(&self, namespace: &str) -> bool {
        self.0.iter().any(|g| glob_match(g.as_bytes(), namespace.as_bytes()))
    }

    /// True when every namespace is allowed (`*` is one of the globs).
    pub fn is_all(&self) -> bool {
        self.0.iter().any(|g| g == "*")
    }

    /// Each glob: 1–63 characters of `a-z 0-9 - *`.
    pub fn validate(&self) -> Result<(), GlobError> {
        for g in &self.0 {
            let err = |message| Err(GlobError { glob: g.clone(), message });
            if g.is_empty() || g.len() > 63 {
                return err("must be 1-63 characters");
            }
            if !g.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*') {
                return err("may only contain a-z, 0-9, '-' and '*'");
            }
        }
        Ok(())
    }

    /// The globs as people read them, for messages.
    pub fn describe(&self) -> String {
        if self.0.is_empty() { "none".into() } else { self.0.join(", ") }
    }
}

/// `*` matches any run (also empty); everything else matches itself. Iterative with one backtrack
/// point, so a hostile glob cannot make it exponential.
fn glob_match(glob: &[u8], s: &[u8]) -> bool {
    let (mut g, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if g < glob.len() && glob[g] == b'*' {
            star = Some((g, i));
            g += 1;
        } else if g < glob.len() && glob[g] == s[i] {
            g += 1;
            i += 1;
        } else if let Some((sg, si)) = star {
            g = sg + 1;
            i = si + 1;
            star = Some((sg, si + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(g: &[&str]) -> Namespaces {
        Namespaces(g.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn globs_match_whole_names() {
        let s = ns(&["ai-workflow-*", "payments"]);
        assert!(s.allows("ai-workflow-prod"));
        assert!(s.allows("ai-workflow-"));
        assert!(s.allows("payments"));
        assert!(!s.allows("payments-prod"));
        assert!(!s.allows("x-ai-workflow-prod"));
        assert!(ns(&["*-prod"]).allows("cart-prod") && !ns(&["*-prod"]).allows("cart-staging"));
        assert!(ns(&["a*b*c"]).allows("abc") && ns(&["a*b*c"]).allows("axxbyyc") && !ns(&["a*b*c"]).allows("axxbyy"));
        assert!(Namespaces::all().allows("anything") && Namespaces::all().is_all());
        assert!(!ns(&[]).allows("default"));
    }

    #[test]
    fn bad_globs_are_refused() {
        assert!(ns(&["ai-workflow-*", "*"]).validate().is_ok());
        assert!(ns(&["Prod"]).validate().is_err());
        assert!(ns(&["a/b"]).validate().is_err());
        assert!(ns(&[""]).validate().is_err());
        assert!(ns(&["prod?"]).validate().unwrap_err().to_string().contains("prod?"));
    }
}
