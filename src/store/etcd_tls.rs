//! How the etcd store connects: TLS (a CA, optionally a client certificate) and etcd's own users.
//! The password is read from a file or an environment variable at connect time and handed to the
//! client only; no error or log line carries it.

use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::config::EtcdConfig;
use crate::rollout::ports::StoreError;

fn read(what: &str, path: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Backend(format!("store.etcd.{what} {path}: {e}")))
}

/// The password of `cfg.username`, from `password_file` (trailing newline dropped) or `password_env`.
fn password(cfg: &EtcdConfig) -> Result<String, StoreError> {
    if !cfg.password_file.is_empty() {
        let raw = read("password_file", &cfg.password_file)?;
        let text = String::from_utf8(raw)
            .map_err(|_| StoreError::Backend(format!("store.etcd.password_file {}: not UTF-8", cfg.password_file)))?;
        return Ok(text.trim_end_matches(['\r', '\n']).to_string());
    }
    std::env::var(&cfg.password_env)
        .map_err(|_| StoreError::Backend(format!("store.etcd.password_env: {} is not set", cfg.password_env)))
}

/// The client options for `cfg`: timeouts, TLS when a CA or client certificate is configured, and the
/// user's credentials.
pub(crate) fn options(cfg: &EtcdConfig, timeout: Duration) -> Result<ConnectOptions, StoreError> {
    cfg.check().map_err(StoreError::Backend)?;
    let mut opts = ConnectOptions::new().with_timeout(timeout).with_connect_timeout(timeout);
    if !cfg.ca_file.is_empty() || !cfg.cert_file.is_empty() {
        let mut tls = TlsOptions::new();
        if !cfg.ca_file.is_empty() {
            tls = tls.ca_certificate(Certificate::from_pem(read("ca_file", &cfg.ca_file)?));
        }
        if !cfg.cert_file.is_empty() {
            let cert = read("cert_file", &cfg.cert_file)?;
            tls = tls.identity(Identity::from_pem(cert, read("key_file", &cfg.key_file)?));
        }
        opts = opts.with_tls(tls);
    }
    if !cfg.username.is_empty() {
        opts = opts.with_user(cfg.username.clone(), password(cfg)?);
    }
    Ok(opts)
}
