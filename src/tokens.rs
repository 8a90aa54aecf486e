//! `cairn tokens create|ls|revoke`: bearer tokens for the CLI and the web UI, minted by
//! the master for the principal that asks (see the master's `api/tokens.rs`).

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::caller::CallerFlags;

#[derive(Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    command: TokensCommand,
    #[command(flatten)]
    client: Client,
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Mint a token for your principal and print it (it is shown only once). Takes
    /// the principal's secret, not a token.
    Create {
        /// How long it lives (at most a year).
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// What it is for, to know it again in `cairn tokens ls`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List your tokens (never their secrets).
    Ls,
    /// Revoke one of your tokens: it is refused from now on.
    Revoke { id: String },
}

/// Who calls the master, and where it is.
#[derive(Args)]
struct Client {
    /// The master's address.
    #[arg(long, default_value = "127.0.0.1:5050", env = "CAIRN_MASTER")]
    master: String,
    #[command(flatten)]
    caller: CallerFlags,
}

impl Client {
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        cairn_api::tls::install_default_provider();
        let url = format!("http://{}{path}", self.master);
        let request = reqwest::Client::new().request(method, url);
        Ok(match self.caller.authorization()? {
            Some(value) => request.header(reqwest::header::AUTHORIZATION, value),
            None => request,
        })
    }
}

/// An expiry time as RFC 3339, whatever the master sent.
fn expiry(secs: Option<f64>) -> String {
    (secs.and_then(|s| Duration::try_from_secs_f64(s).ok()))
        .and_then(|d| std::time::UNIX_EPOCH.checked_add(d))
        .map_or_else(
            || "?".to_owned(),
            |t| humantime::format_rfc3339_seconds(t).to_string(),
        )
}

/// The body of a 2xx answer, or the master's refusal as the error.
async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body = response
        .text()
        .await
        .context("reading the master's answer")?;
    if !status.is_success() {
        bail!("the master refused: {status}: {}", body.trim());
    }
    Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub async fn run(args: TokensArgs) -> anyhow::Result<u8> {
    let c = &args.client;
    let post = reqwest::Method::POST;
    let sent = match &args.command {
        TokensCommand::Create { ttl, description } => c
            .request(post, "/api/v1/tokens")?
            .json(&json!({"ttl_seconds": ttl.as_secs_f64(), "description": description}))
            .send(),
        TokensCommand::Ls => c.request(reqwest::Method::GET, "/api/v1/tokens")?.send(),
        TokensCommand::Revoke { id } => c
            .request(reqwest::Method::DELETE, &format!("/api/v1/tokens/{id}"))?
            .send(),
    };
    let body = answer(
        sent.await
            .with_context(|| format!("calling {}", c.master))?,
    )
    .await?;
    match &args.command {
        TokensCommand::Create { .. } => {
            eprintln!("token {} for {}", body["id"], body["principal"]);
            println!("{}", body["token"].as_str().unwrap_or_default());
        }
        TokensCommand::Ls => {
            for t in body["tokens"].as_array().into_iter().flatten() {
                let state = if t["revoked"] == true {
                    "revoked"
                } else {
                    "valid"
                };
                println!(
                    "{}\t{}\t{state}\texpires {}\t{}",
                    t["id"].as_str().unwrap_or_default(),
                    t["principal"].as_str().unwrap_or_default(),
                    expiry(t["expires_at"].as_f64()),
                    t["description"].as_str().unwrap_or_default().escape_debug(),
                );
            }
        }
        TokensCommand::Revoke { id } => eprintln!("token {id} revoked"),
    }
    Ok(0)
}
