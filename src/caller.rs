//! Who the CLI calls as: a principal and its secret (HTTP Basic, Mesos' way) or a
//! bearer token (`cairn tokens`), sent as the `Authorization` header over HTTP and as
//! the same metadata over gRPC.

use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;

#[derive(Args, Clone, Default)]
pub struct CallerFlags {
    /// Your principal, for HTTP Basic with its secret.
    #[arg(long, env = "CAIRN_PRINCIPAL")]
    pub principal: Option<String>,
    /// A file holding the principal's secret (else the CAIRN_SECRET variable).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// A file holding a bearer token to call the master with instead (`cairn tokens
    /// create`; else the CAIRN_TOKEN variable). Never on the command line, where every
    /// local user would see it.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl CallerFlags {
    /// The `Authorization` value to send, if any: Basic when a principal is given.
    pub fn authorization(&self) -> anyhow::Result<Option<String>> {
        Ok(match (&self.principal, self.token()?) {
            (Some(principal), _) => {
                let secret = self.secret()?;
                let pair = format!("{principal}:{secret}");
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                Some(format!("Basic {encoded}"))
            }
            (None, Some(token)) => Some(format!("Bearer {token}")),
            (None, None) => None,
        })
    }

    /// What an agent takes: HTTP Basic only (agents keep no tokens).
    pub fn basic_authorization(&self) -> anyhow::Result<Option<String>> {
        match &self.principal {
            Some(_) => self.authorization(),
            None => Ok(None),
        }
    }

    fn secret(&self) -> anyhow::Result<String> {
        match &self.secret_file {
            Some(f) => read_trimmed(f),
            None => std::env::var("CAIRN_SECRET")
                .context("--principal needs --secret-file or the CAIRN_SECRET variable"),
        }
    }

    fn token(&self) -> anyhow::Result<Option<String>> {
        match &self.token_file {
            Some(f) => read_trimmed(f).map(Some),
            None => Ok(std::env::var("CAIRN_TOKEN").ok().filter(|t| !t.is_empty())),
        }
    }
}

/// A file's text without its trailing newline.
fn read_trimmed(f: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(f)
        .with_context(|| format!("reading {}", f.display()))?
        .trim_end_matches(['\n', '\r'])
        .to_owned())
}
