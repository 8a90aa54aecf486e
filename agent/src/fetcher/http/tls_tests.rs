//! `https://` downloads from real TLS servers on loopback, with certificates from a
//! CA each test makes.

use std::path::{Path, PathBuf};

use cairn_test_support::tls::TestCa;

use super::tests::{Reply, Server, body, get, limits};
use crate::fetcher::tests::listing;
use crate::fetcher::{FetcherConfig, tls};

/// A CA, written to `dir/ca.pem`, and a server certificate for 127.0.0.1 it signed.
struct Pki {
    ca_file: PathBuf,
    acceptor: cairn_test_support::tls::TlsAcceptor,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = TestCa::new("fetcher test CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            ca_file,
            acceptor: ca.acceptor("127.0.0.1"),
        }
    }

    async fn server(&self, reply: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
        Server::serve("127.0.0.1", Some(self.acceptor.clone()), reply).await
    }

    /// The test limits, trusting this CA.
    fn trusted(&self) -> FetcherConfig {
        FetcherConfig {
            ca_file: Some(self.ca_file.clone()),
            ..limits(&["127.0.0.0/8"])
        }
    }
}

#[tokio::test]
async fn an_https_body_from_a_server_the_ca_file_trusts_is_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let server = pki.server(|_| body(1000, true)).await;
    let sandbox = dir.path().join("sandbox");
    get(&server.url("/m.wasm"), &sandbox, pki.trusted())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(sandbox.join("out")).unwrap(),
        vec![b'b'; 1000]
    );
}

#[tokio::test]
async fn an_https_server_no_trusted_root_signed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let server = pki.server(|_| body(10, true)).await;
    let sandbox = dir.path().join("sandbox");
    let url = server.url("/m.wasm");
    let err = get(&url, &sandbox, limits(&["127.0.0.0/8"]))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot fetch {url}: "))
            && err
                .to_string()
                .contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert_eq!(listing(&sandbox), Vec::<String>::new());
}

#[tokio::test]
async fn https_is_held_to_the_address_policy_and_the_size_cap() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let server = pki.server(|_| body(1001, false)).await;
    let sandbox = dir.path().join("sandbox");
    let url = server.url("/big");
    let refused = FetcherConfig {
        ca_file: Some(pki.ca_file.clone()),
        ..limits(&[])
    };
    let err = get(&url, &sandbox, refused).await.unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    assert_eq!(
        server.connections(),
        0,
        "a refused address is never reached"
    );
    let err = get(&url, &sandbox, pki.trusted()).await.unwrap_err();
    assert!(
        err.to_string().contains(
            "the body is larger than the fetcher's limit of 1000 bytes (--fetcher-max-size)"
        ),
        "{err}"
    );
    assert_eq!(listing(&sandbox), Vec::<String>::new(), "no partial file");
}

#[tokio::test]
async fn a_redirect_from_https_to_http_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let clear = Server::start("127.0.0.1", |_| body(10, true)).await;
    let to = clear.url("/m.wasm");
    let server = pki.server(move |_| Reply::Redirect(to.clone())).await;
    let sandbox = dir.path().join("sandbox");
    let err = get(&server.url("/m.wasm"), &sandbox, pki.trusted())
        .await
        .unwrap_err();
    assert!(
        err.to_string().ends_with(&format!(
            "redirected to {}: a download begun over https:// goes on over TLS",
            clear.url("/m.wasm")
        )),
        "{err}"
    );
    assert_eq!(clear.connections(), 0);
    assert_eq!(listing(&sandbox), Vec::<String>::new());
}

#[test]
fn a_ca_file_that_holds_no_certificate_stops_the_fetcher() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let err = tls::client_config(Some(&ca_file)).unwrap_err();
    assert_eq!(
        err,
        format!(
            "--fetcher-ca-file {} holds no PEM certificate",
            ca_file.display()
        )
    );
    let missing = dir.path().join("missing.pem");
    let err = tls::client_config(Some(&missing)).unwrap_err();
    assert!(
        err.starts_with(&format!(
            "reading --fetcher-ca-file {}: ",
            missing.display()
        )),
        "{err}"
    );
    // The fetcher itself refuses to start on it.
    let config = FetcherConfig {
        ca_file: Some(ca_file),
        ..FetcherConfig::default()
    };
    assert!(crate::fetcher::Fetcher::new(dir.path().join("cache"), config).is_err());
}
