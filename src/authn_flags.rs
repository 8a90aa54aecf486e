//! The master's authentication and authorization flags, Mesos' names in kebab case.

use std::path::PathBuf;
use std::sync::Arc;

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
    /// What each principal may do, in Mesos' ACL JSON with Cairn's actions beside
    /// Mesos' (see docs/security.md); without it, everything is allowed.
    #[arg(long)]
    acls: Option<PathBuf>,
    /// How fast each principal's schedulers may call, in Mesos' RateLimits JSON
    /// (`limits` of `principal`, `qps`, `capacity`; `aggregate_default_qps`,
    /// `aggregate_default_capacity`). Calls over the rate wait; past the capacity they
    /// are refused with 429. Without --authenticate-frameworks every caller counts
    /// against the aggregate.
    #[arg(long)]
    rate_limits: Option<PathBuf>,
}

impl AuthFlags {
    /// The `--rate-limits` file, read and checked; no limits when none is given.
    pub(crate) fn rate_limits(&self) -> anyhow::Result<cairn_master::rate_limits::RateLimits> {
        if self.rate_limits.is_some() && !self.authenticate_frameworks {
            tracing::warn!(
                "--rate-limits without --authenticate-frameworks: no caller is anyone, so \
                 every call counts against the aggregate default (Mesos would use each \
                 framework's claimed principal)"
            );
        }
        Ok(match &self.rate_limits {
            Some(path) => cairn_master::rate_limits::RateLimits::load(path)?,
            None => Default::default(),
        })
    }

    /// The `--acls` file, read and checked; permissive when none is given.
    pub(crate) fn acls(&self) -> anyhow::Result<Arc<cairn_api::authz::Acls>> {
        if self.acls.is_some() && !self.authenticate_frameworks {
            tracing::warn!(
                "--acls without --authenticate-frameworks: a framework's principal is \
                 whatever its FrameworkInfo claims, so its grants hold only against \
                 honest frameworks"
            );
        }
        load_acls(self.acls.as_deref())
    }

    pub(crate) fn authentication(&self) -> anyhow::Result<cairn_api::authn::Authentication> {
        let credentials = match &self.credentials {
            Some(path) => Some(cairn_api::authn::Credentials::load(path)?),
            None => None,
        };
        let realms = cairn_api::authn::Realms {
            frameworks: self.authenticate_frameworks,
            agents: self.authenticate_agents,
            readwrite: self.authenticate_http_readwrite,
            readonly: self.authenticate_http_readonly,
        };
        cairn_api::authn::Authentication::new(credentials, realms)
            .context("the master's authentication flags")
    }
}

/// Who may call an agent's HTTP API, and what each may see (Mesos' agent flags).
#[derive(Args, Clone, Default)]
pub(crate) struct AgentAuthFlags {
    /// Principals and secrets for the agent's HTTP API, in Mesos' JSON or text form
    /// (Mesos' agent `--http_credentials`).
    #[arg(long)]
    http_credentials: Option<PathBuf>,
    /// Reads of the agent's state, metrics and sandboxes must authenticate.
    #[arg(long = "authenticate-http-readonly", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    readonly: bool,
    /// What each principal may see here (`view_tasks`, `view_frameworks`,
    /// `access_sandboxes`), in Mesos' ACL JSON; without it, everything.
    #[arg(long = "acls")]
    acls: Option<PathBuf>,
}

impl AgentAuthFlags {
    pub(crate) fn authentication(&self) -> anyhow::Result<cairn_api::authn::Authentication> {
        let credentials = match &self.http_credentials {
            Some(path) => Some(cairn_api::authn::Credentials::load(path)?),
            None => None,
        };
        let realms = cairn_api::authn::Realms {
            readonly: self.readonly,
            ..Default::default()
        };
        cairn_api::authn::Authentication::new(credentials, realms)
            .context("the agent's authentication flags")
    }

    pub(crate) fn acls(&self) -> anyhow::Result<Arc<cairn_api::authz::Acls>> {
        load_acls(self.acls.as_deref())
    }
}

fn load_acls(path: Option<&std::path::Path>) -> anyhow::Result<Arc<cairn_api::authz::Acls>> {
    let Some(path) = path else {
        return Ok(Arc::default());
    };
    let acls = cairn_api::authz::Acls::load(path)?;
    for action in acls.unchecked_actions() {
        tracing::warn!(
            action,
            "--acls: Cairn has no calls this Mesos action governs"
        );
    }
    Ok(Arc::new(acls))
}
