//! vane: a progressive-delivery controller.
//!
//! The rollout logic lives in [`rollout::machine`], a pure state machine. Everything else is an
//! adapter: [`rollout::driver`] runs it per rollout, [`store`] persists it, [`traffic`] moves traffic,
//! [`analysis`] judges SLOs, [`notify`] tells people, [`api`] lets them act.

pub mod analysis;
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod demo_app;
#[cfg(any(test, feature = "test-util"))]
#[doc(hidden)]
pub mod fixtures;
pub mod ha;
pub mod hooks;
pub mod http;
pub mod human;
pub mod notify;
pub mod policy;
pub mod redact;
pub mod rollout;
pub mod scope;
pub mod sign;
pub mod store;
pub mod telemetry;
pub mod traffic;
pub mod workload;

use std::future::Future;
use std::pin::Pin;

/// A boxed future, for the async methods of the adapter traits (which are used as `dyn`).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Install ring as the process-wide rustls provider (one TLS provider, no aws-lc, no OpenSSL).
/// Idempotent; [`http::client_builder`] calls it.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
