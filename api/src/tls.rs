//! Cairn's one crypto provider for rustls: ring. rustls deprecates its ring provider
//! for want of post-quantum key exchange; the provider that has it (aws-lc-rs) is a C
//! and cmake build about as long as the rest of the agent's. What TLS protects in
//! Cairn today is a download's integrity and secrecy now, which ring gives.
//!
//! reqwest is built with no provider of its own (its `rustls-no-provider` feature):
//! a process that makes an HTTP client without a TLS configuration of its own calls
//! [`install_default_provider`] first, or the client panics when it is built.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// rustls' provider on ring.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring this process's default provider; a no-op once one is installed.
pub fn install_default_provider() {
    if CryptoProvider::get_default().is_none() {
        // Two threads may race here; the loser's provider is the same one.
        let _ = Arc::unwrap_or_clone(provider()).install_default();
    }
}
