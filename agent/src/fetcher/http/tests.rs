//! Downloads from real HTTP servers on loopback, each reply shaped by the test.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::fetcher::tests::{fetcher_in, listing, me, uri};
use crate::fetcher::{FetchError, FetcherConfig, fetch_all};

/// What the server answers.
#[derive(Clone)]
pub(super) enum Reply {
    /// A body, with or without a `Content-Length` (else it ends with the connection).
    Body {
        body: Vec<u8>,
        length: bool,
    },
    /// Bytes without end.
    Endless,
    /// Reads the request and never answers.
    Stall,
    /// A byte every 50 ms, without end.
    Trickle,
    Redirect(String),
    Status(u16),
}

pub(super) struct Server {
    addr: SocketAddr,
    scheme: &'static str,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
}

impl Server {
    pub(super) async fn start(
        ip: &str,
        reply: impl Fn(&str) -> Reply + Send + Sync + 'static,
    ) -> Server {
        Self::serve(ip, None, reply).await
    }

    /// A server that answers over TLS with `acceptor`'s certificate.
    pub(super) async fn serve(
        ip: &str,
        tls: Option<cairn_test_support::tls::TlsAcceptor>,
        reply: impl Fn(&str) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (count, reply) = (connections.clone(), Arc::new(reply));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (reply, tls) = (reply.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        // A handshake the client gives up on ends the connection.
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                answer(stream, &*reply).await
                            }
                        }
                        None => answer(stream, &*reply).await,
                    }
                });
            }
        });
        Server {
            addr,
            scheme,
            connections,
        }
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub(super) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn answer(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    reply: &(dyn Fn(&str) -> Reply + Send + Sync),
) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
    let head = |status: &str, extra: &str| {
        format!("HTTP/1.1 {status}\r\nConnection: close\r\n{extra}\r\n").into_bytes()
    };
    let _ = match reply(&path) {
        Reply::Body { body, length } => {
            let extra = match length {
                true => format!("Content-Length: {}\r\n", body.len()),
                false => String::new(),
            };
            let mut out = head("200 OK", &extra);
            out.extend_from_slice(&body);
            stream.write_all(&out).await
        }
        Reply::Endless => {
            let _ = stream.write_all(&head("200 OK", "")).await;
            let chunk = vec![b'x'; 8192];
            while stream.write_all(&chunk).await.is_ok() {}
            Ok(())
        }
        Reply::Stall => std::future::pending().await,
        Reply::Trickle => {
            let _ = stream.write_all(&head("200 OK", "")).await;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                if stream.write_all(b"x").await.is_err() {
                    break Ok(());
                }
            }
        }
        Reply::Redirect(to) => {
            let extra = format!("Location: {to}\r\nContent-Length: 0\r\n");
            stream.write_all(&head("302 Found", &extra)).await
        }
        Reply::Status(code) => {
            let status = reqwest::StatusCode::from_u16(code).unwrap();
            stream
                .write_all(&head(&status.to_string(), "Content-Length: 0\r\n"))
                .await
        }
    };
}

/// Limits small enough for a test: 1000 bytes, short timeouts; `allowed` networks.
pub(super) fn limits(allowed: &[&str]) -> FetcherConfig {
    FetcherConfig {
        max_size: 1000,
        connect_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(20),
        allowed_networks: allowed.iter().map(|n| n.parse().unwrap()).collect(),
        ..FetcherConfig::default()
    }
}

/// Fetches `url` into `sandbox` as `out`.
pub(super) async fn get(
    url: &str,
    sandbox: &Path,
    config: FetcherConfig,
) -> Result<(), FetchError> {
    let fetcher = fetcher_in(sandbox.parent().unwrap(), config);
    fetch_all(
        &[uri(url, Some("out"))],
        sandbox,
        &fetcher,
        false,
        &me(),
        1 << 30,
    )
    .await
    .map(drop)
}

pub(super) fn body(size: usize, length: bool) -> Reply {
    Reply::Body {
        body: vec![b'b'; size],
        length,
    }
}

#[tokio::test]
async fn a_body_is_streamed_into_the_sandbox() {
    let server = Server::start("127.0.0.1", |_| body(1000, false)).await;
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    get(&server.url("/m.wasm"), &sandbox, limits(&["127.0.0.0/8"]))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(sandbox.join("out")).unwrap(),
        vec![b'b'; 1000]
    );
}

#[tokio::test]
async fn a_body_over_the_size_cap_is_refused_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    let cases = [
        (body(1001, true), "its Content-Length of 1001 bytes is over"),
        (body(1001, false), "the body is larger than"),
        (Reply::Endless, "the body is larger than"),
    ];
    for (reply, why) in cases {
        let server = Server::start("127.0.0.1", move |_| reply.clone()).await;
        let url = server.url("/big");
        let err = get(&url, &sandbox, limits(&["127.0.0.0/8"]))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot fetch {url}: {why}")),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("the fetcher's limit of 1000 bytes (--fetcher-max-size)"),
            "{err}"
        );
        assert_eq!(listing(&sandbox), Vec::<String>::new(), "no partial file");
    }
}

#[tokio::test]
async fn a_stalled_server_hits_the_stall_timeout() {
    let server = Server::start("127.0.0.1", |_| Reply::Stall).await;
    let dir = tempfile::tempdir().unwrap();
    let config = FetcherConfig {
        stall_timeout: Duration::from_millis(300),
        ..limits(&["127.0.0.0/8"])
    };
    let err = get(&server.url("/x"), &dir.path().join("sandbox"), config)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot fetch {}: stalled: no data within 300ms (--fetcher-stall-timeout)",
            server.url("/x")
        )
    );
}

#[tokio::test]
async fn a_slow_download_hits_the_overall_timeout_and_is_removed() {
    // Never silent for long (no stall), never done.
    let server = Server::start("127.0.0.1", |_| Reply::Trickle).await;
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    let config = FetcherConfig {
        max_size: 1 << 20,
        timeout: Duration::from_millis(500),
        ..limits(&["127.0.0.0/8"])
    };
    let err = get(&server.url("/x"), &sandbox, config).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot fetch {}: not done within 500ms (--fetcher-timeout)",
            server.url("/x")
        )
    );
    assert_eq!(listing(&sandbox), Vec::<String>::new(), "no partial file");
}

#[tokio::test]
async fn a_redirect_loop_stops_at_the_limit() {
    let server = Server::start("127.0.0.1", |_| Reply::Redirect("/loop".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/loop");
    let err = get(&url, &dir.path().join("sandbox"), limits(&["127.0.0.0/8"]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot fetch {url}: more than 5 redirects (--fetcher-max-redirects); the last \
             from {url} to {url}"
        )
    );
    assert_eq!(server.connections(), 6, "the first request and 5 redirects");
}

#[tokio::test]
async fn a_redirect_to_a_refused_address_is_not_followed() {
    // Only 127.0.0.2 is allowed; the redirects lead to 127.0.0.1, by address and by name.
    let refused = Server::start("127.0.0.1", |_| body(10, true)).await;
    let to = [
        refused.url("/secret"),
        format!("http://localhost:{}/secret", refused.addr.port()),
    ];
    let hops = to.clone();
    let allowed = Server::start("127.0.0.2", move |path| {
        Reply::Redirect(hops[usize::from(path == "/by-name")].clone())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    let only = limits(&["127.0.0.2/32"]);
    let err = get(&allowed.url("/by-address"), &sandbox, only.clone())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot fetch {}: redirected to {}: 127.0.0.1 is a loopback address the fetcher \
             refuses (--fetcher-allowed-networks admits it)",
            allowed.url("/by-address"),
            to[0]
        )
    );
    let err = get(&allowed.url("/by-name"), &sandbox, only)
        .await
        .unwrap_err();
    let prefix = format!(
        "cannot fetch {}: redirected to {}: localhost resolves to ",
        allowed.url("/by-name"),
        to[1]
    );
    assert!(err.to_string().starts_with(&prefix), "{err}");
    assert!(
        err.to_string()
            .contains(", a loopback address the fetcher refuses"),
        "{err}"
    );
    assert_eq!(
        refused.connections(),
        0,
        "the refused server was never reached"
    );
    assert_eq!(allowed.connections(), 2);
    assert_eq!(listing(&sandbox), Vec::<String>::new());
}

#[tokio::test]
async fn loopback_link_local_and_unspecified_addresses_are_refused_by_default() {
    let server = Server::start("127.0.0.1", |_| body(10, true)).await;
    let port = server.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    let cases = [
        (
            format!("http://127.0.0.1:{port}/x"),
            "127.0.0.1 is a loopback",
        ),
        (format!("http://[::1]:{port}/x"), "::1 is a loopback"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/x"),
            "127.0.0.1 is a loopback",
        ),
        (
            format!("http://0.0.0.0:{port}/x"),
            "0.0.0.0 is an unspecified",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "169.254.169.254 is a link-local",
        ),
        ("http://[fe80::1]/x".into(), "fe80::1 is a link-local"),
        (
            "http://[fd00:ec2::254]/x".into(),
            "fd00:ec2::254 is a cloud metadata",
        ),
    ];
    for (url, what) in cases {
        let err = get(&url, &sandbox, FetcherConfig::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot fetch {url}: "))
                && err.to_string().ends_with(&format!(
                    "{what} address the fetcher refuses (--fetcher-allowed-networks admits it)"
                )),
            "{err}"
        );
    }
    let by_name = format!("http://localhost:{port}/x");
    let err = get(&by_name, &sandbox, FetcherConfig::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("localhost resolves to "), "{err}");
    assert_eq!(server.connections(), 0);
    // Allowed, the same server is reached.
    get(&by_name, &sandbox, limits(&["127.0.0.0/8", "::1"]))
        .await
        .unwrap();
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn the_agent_s_own_addresses_are_refused() {
    let own: Vec<IpAddr> = crate::fetcher::net::own_addresses()
        .into_iter()
        .filter(|a| !a.is_loopback() && !matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect();
    let policy = crate::fetcher::net::AddressPolicy::new(&[]);
    let Some(addr) = own.first() else {
        // A machine with loopback alone: the rule, on a made-up address.
        let made_up: IpAddr = "10.9.8.7".parse().unwrap();
        assert_eq!(
            policy.refusal(made_up, &[made_up]),
            Some("this agent's own")
        );
        return;
    };
    let server = Server::start(&addr.to_string(), |_| body(10, true)).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/x", server.addr);
    let err = get(&url, &dir.path().join("sandbox"), limits(&["127.0.0.0/8"]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "{addr} is this agent's own address the fetcher refuses"
        )),
        "{err}"
    );
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn an_http_error_status_fails_the_fetch() {
    let server = Server::start("127.0.0.1", |_| Reply::Status(404)).await;
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    let url = server.url("/missing");
    let err = get(&url, &sandbox, limits(&["127.0.0.0/8"]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot fetch {url}: HTTP 404 Not Found")
    );
    assert_eq!(listing(&sandbox), Vec::<String>::new());
}
