//! The master's authentication flags, Mesos' names in kebab case.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

/// Who may call the master: principals and secrets, and which realms ask for them.
#[derive(Args, Clone, Default)]
pub(crate) struct AuthFlags {
    /// Principals and secrets, in Mesos' JSON (`{"credentials": [{"principal": …,
    /// "secret": …}]}`) or its text form (`principal secret` per line).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Schedulers (HTTP and gRPC) must authenticate, with HTTP Basic.
    #[arg(long, alias = "authenticate-http-frameworks", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    authenticate_frameworks: bool,
    /// Agents must authenticate to register (they send `--credential`).
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    authenticate_agents: bool,
    /// Operator calls (`/api/v1`) must authenticate.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    authenticate_http_readwrite: bool,
    /// Reads of state (`/state`, `/master/state`) must authenticate.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    authenticate_http_readonly: bool,
}

impl AuthFlags {
    pub(crate) fn authentication(&self) -> anyhow::Result<cairn_master::authn::Authentication> {
        let credentials = match &self.credentials {
            Some(path) => Some(cairn_master::authn::Credentials::load(path)?),
            None => None,
        };
        let realms = cairn_master::authn::Realms {
            frameworks: self.authenticate_frameworks,
            agents: self.authenticate_agents,
            readwrite: self.authenticate_http_readwrite,
            readonly: self.authenticate_http_readonly,
        };
        cairn_master::authn::Authentication::new(credentials, realms)
            .context("the master's authentication flags")
    }
}
