//! `cairn tokens create|ls|revoke`: bearer tokens for the CLI and the web UI, minted by
//! the master for the principal that asks (see the master's `api/tokens.rs`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

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
    /// Your principal, for HTTP Basic with its secret.
    #[arg(long, env = "CAIRN_PRINCIPAL")]
    principal: Option<String>,
    /// A file holding the principal's secret (else the CAIRN_SECRET variable).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// A bearer token to call with instead of a principal and secret.
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    token: Option<String>,
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
        Ok(match (&self.principal, &self.token) {
            (Some(principal), _) => {
                let secret = match &self.secret_file {
                    Some(f) => std::fs::read_to_string(f)
                        .with_context(|| format!("reading {}", f.display()))?
                        .trim_end_matches(['\n', '\r'])
                        .to_owned(),
                    None => std::env::var("CAIRN_SECRET")
                        .context("--principal needs --secret-file or CAIRN_SECRET")?,
                };
                request.basic_auth(principal, Some(secret))
            }
            (None, Some(token)) => request.bearer_auth(token),
            (None, None) => request,
        })
    }
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
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + Duration::from_secs_f64(t["expires_at"].as_f64().unwrap_or(0.0))
                    ),
                    t["description"].as_str().unwrap_or_default(),
                );
            }
        }
        TokensCommand::Revoke { id } => eprintln!("token {id} revoked"),
    }
    Ok(0)
}
