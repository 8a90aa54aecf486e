//! The fetcher's TLS for `https://`: rustls with ring, trusting the system's roots
//! (`/etc/ssl/certs`, as Mesos' fetcher does through libcurl) and the PEM file
//! `--fetcher-ca-file` names (a private mirror's CA, or a test's). Made once, when the
//! agent starts: a CA file that cannot be read stops the agent then, not a task later.

use std::path::Path;

use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// A TLS client configuration for the fetcher's downloads.
pub(super) fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    // A system store with an unreadable or malformed file still gives the rest; a
    // machine with no store at all trusts only `--fetcher-ca-file`.
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::warn!(%error, "a system root certificate could not be loaded");
    }
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca_file {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("reading --fetcher-ca-file {shown}: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "--fetcher-ca-file {shown} holds no PEM certificate"
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("--fetcher-ca-file {shown}: {e}"))?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(cairn_api::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The fetcher's client speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
