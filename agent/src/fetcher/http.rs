//! `http://` and `https://` URIs: streamed to disk, never held whole in memory, under the
//! fetcher's limits: a size cap (refused at once by `Content-Length`, else enforced
//! while streaming, the partial file removed), connect, stall and overall timeouts,
//! and a redirect limit. Redirects are followed here, not by the client, so that
//! every hop is checked against the address policy (see `net`) and counted, and a
//! download that began over TLS never continues in the clear.

use std::sync::Arc;

use reqwest::header::LOCATION;
use reqwest::{StatusCode, Url};
use tokio::io::AsyncWriteExt as _;

use super::net::{AddressPolicy, GuardedResolver, Refused};
use super::output::Target;
use super::{Cap, FetchError, FetcherConfig};

/// Downloads `target.uri` into `target`, at most `cap` bytes; returns how many.
pub(super) async fn fetch(
    target: &Target<'_>,
    config: &FetcherConfig,
    tls: &rustls::ClientConfig,
    cap: Cap,
) -> Result<u64, FetchError> {
    let policy = Arc::new(AddressPolicy::new(&config.allowed_networks));
    let client = client(config, tls, policy.clone()).map_err(|why| target.failed(why))?;
    let download = async {
        let response = follow(&client, target.uri, &policy, config)
            .await
            .map_err(|why| target.failed(why))?;
        save(response, target, config, cap).await
    };
    // Dropping the download on time-out drops its partial file too.
    tokio::time::timeout(config.timeout, download)
        .await
        .unwrap_or_else(|_| {
            Err(target.failed(format!(
                "not done within {} (--fetcher-timeout)",
                humantime::format_duration(config.timeout)
            )))
        })
}

/// A client for one task's downloads: its connections go nowhere else, and it
/// resolves names through the address policy.
fn client(
    config: &FetcherConfig,
    tls: &rustls::ClientConfig,
    policy: Arc<AddressPolicy>,
) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would connect on the fetcher's behalf, past the address checks.
        .no_proxy()
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.stall_timeout)
        .dns_resolver(GuardedResolver { policy })
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))
}

/// Sends the request and follows redirects (at most `max_redirects`), checking each
/// hop's address; returns the final, successful response.
async fn follow(
    client: &reqwest::Client,
    uri: &str,
    policy: &AddressPolicy,
    config: &FetcherConfig,
) -> Result<reqwest::Response, String> {
    let mut url = Url::parse(uri).map_err(|e| format!("not a URL: {e}"))?;
    let secure = url.scheme() == "https";
    let mut redirects = 0;
    loop {
        let hop = |why: String| match redirects {
            0 => why,
            _ => format!("redirected to {url}: {why}"),
        };
        match url.scheme() {
            "https" => {}
            "http" if !secure => {}
            "http" => return Err(hop("a download begun over https:// goes on over TLS".into())),
            _ => return Err(hop("only http:// and https:// are fetched here".into())),
        }
        policy
            .check_host(url.host_str().unwrap_or_default())
            .map_err(|e| hop(e.to_string()))?;
        let response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| hop(describe(&e, config)))?;
        let status = response.status();
        if !is_redirect(status) {
            if !status.is_success() {
                return Err(hop(format!("HTTP {status}")));
            }
            return Ok(response);
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| hop(format!("HTTP {status} without a Location")))?;
        let next = url
            .join(location)
            .map_err(|e| hop(format!("HTTP {status} to a bad Location {location:?}: {e}")))?;
        if redirects == config.max_redirects {
            return Err(format!(
                "more than {} redirects (--fetcher-max-redirects); the last from {url} to {next}",
                config.max_redirects
            ));
        }
        redirects += 1;
        url = next;
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Streams the body into a new file, at most `cap` bytes of it.
async fn save(
    mut response: reqwest::Response,
    target: &Target<'_>,
    config: &FetcherConfig,
    cap: Cap,
) -> Result<u64, FetchError> {
    let max = cap.bytes;
    if let Some(length) = response.content_length().filter(|l| *l > max) {
        return Err(target.failed(format!(
            "its Content-Length of {length} bytes is over {cap}"
        )));
    }
    let (file, partial) = target.create(0o644)?;
    let mut file = tokio::fs::File::from_std(file);
    let mut written = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| target.failed(describe(&e, config)))?
    {
        written += chunk.len() as u64;
        if written > max {
            return Err(target.failed(format!("the body is larger than {cap}")));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| target.failed(format!("writing {}: {e}", target.shown.display())))?;
    }
    file.flush()
        .await
        .map_err(|e| target.failed(format!("writing {}: {e}", target.shown.display())))?;
    partial.keep();
    Ok(written)
}

/// What went wrong with a request, in the fetcher's terms: a refused address says
/// which and why, a time-out names its flag, anything else is the error's chain.
fn describe(e: &reqwest::Error, config: &FetcherConfig) -> String {
    let mut chain = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return refused.to_string();
        }
        chain.push(err.to_string());
        source = err.source();
    }
    let flag = |what: &str, flag: &str, after| {
        format!(
            "{what} within {} ({flag})",
            humantime::format_duration(after)
        )
    };
    if e.is_timeout() && e.is_connect() {
        return flag(
            "could not connect",
            "--fetcher-connect-timeout",
            config.connect_timeout,
        );
    }
    if e.is_timeout() {
        return flag(
            "stalled: no data",
            "--fetcher-stall-timeout",
            config.stall_timeout,
        );
    }
    chain.dedup();
    chain.join(": ")
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
