//! Outbound HTTP, built one way: rustls with ring (installed once), vane's user agent; and the
//! error text people see when a request fails.

use std::error::Error;

/// A reqwest client builder with the TLS provider installed and vane's user agent; callers add their
/// timeouts and redirect policy.
pub fn client_builder() -> reqwest::ClientBuilder {
    crate::install_crypto_provider();
    reqwest::Client::builder().user_agent(concat!("vane/", env!("CARGO_PKG_VERSION")))
}

/// An error and its sources, outermost first.
pub fn chain<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |e| (*e).source())
}

/// The innermost cause: reqwest's top-level error says "error sending request", the root says why.
pub fn root_cause(e: &(dyn Error + 'static)) -> String {
    chain(e).last().map(|e| e.to_string()).unwrap_or_default()
}

/// Every message of the chain, joined by `: `.
pub fn full_chain(e: &(dyn Error + 'static)) -> String {
    chain(e).map(|e| e.to_string()).collect::<Vec<_>>().join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chains_read_outermost_first() {
        let e = Outer(std::io::Error::other("refused"));
        assert_eq!(root_cause(&e), "refused");
        assert_eq!(full_chain(&e), "outer: refused");
    }
}
