//! Who a caller is: Mesos' HTTP Basic authentication against the principals and
//! secrets of the `--credentials` file, per realm as Mesos' master has them
//! (`mesos-master-scheduler` for the scheduler API, `mesos-master-readwrite` for the
//! operator API, `mesos-master-readonly` for state; the agent's `mesos-agent-readonly`
//! for its state and sandboxes). Master and agent both use it. A realm whose
//! `--authenticate-*` flag is off asks no one: its callers have no principal, as in
//! Mesos. gRPC callers (schedulers, and agents registering, whose realm is Cairn's
//! `mesos-master-agent` where Mesos uses SASL) send the same `authorization` header
//! as metadata.
//!
//! A refusal is 401 with `WWW-Authenticate: Basic realm="…"` (what Mesos' basic
//! authenticator answers) and a body saying why. Secrets are compared in constant
//! time, so a caller cannot learn one a byte at a time from the answers' timing.

pub mod tokens;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

/// A credentials file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading the credentials file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the credentials file {path} is neither Mesos' JSON nor its text form: {why}")]
    Parse { path: PathBuf, why: String },
    #[error("the credentials file {path} names principal {principal:?} twice")]
    Duplicate { path: PathBuf, principal: String },
    #[error("{flag} is set, but no --credentials file names who may call")]
    NoCredentials { flag: &'static str },
}

/// The principals and their secrets.
#[derive(Default)]
pub struct Credentials {
    secrets: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets, in a log or a panic message.
        f.debug_struct("Credentials")
            .field("principals", &self.secrets.len())
            .finish()
    }
}

/// Mesos' JSON form: `{"credentials": [{"principal": "…", "secret": "…"}]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    credentials: Vec<Credential>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credential {
    principal: String,
    #[serde(default)]
    secret: String,
}

impl Credentials {
    /// Reads a credentials file in Mesos' JSON form, or its older text form (one
    /// `principal secret` pair per line).
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            Parsed::Invalid(why) => CredentialsError::Parse {
                path: path.to_owned(),
                why,
            },
            Parsed::Duplicate(principal) => CredentialsError::Duplicate {
                path: path.to_owned(),
                principal,
            },
        })
    }

    pub(crate) fn parse(text: &str) -> Result<Self, Parsed> {
        let pairs: Vec<(String, String)> = if text.trim_start().starts_with('{') {
            let file: CredentialsFile =
                serde_json::from_str(text).map_err(|e| Parsed::Invalid(e.to_string()))?;
            (file.credentials.into_iter())
                .map(|c| (c.principal, c.secret))
                .collect()
        } else {
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(
                    |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                        [principal, secret] => Ok((principal.to_owned(), secret.to_owned())),
                        _ => Err(Parsed::Invalid(format!(
                            "a line is not `principal secret`: {:?}",
                            line.split_whitespace().next().unwrap_or_default()
                        ))),
                    },
                )
                .collect::<Result<_, _>>()?
        };
        let mut secrets = HashMap::new();
        for (principal, secret) in pairs {
            if principal.is_empty() || principal.contains(':') {
                return Err(Parsed::Invalid(format!(
                    "principal {principal:?} is empty or holds a ':' (HTTP Basic cannot send it)"
                )));
            }
            if secret.is_empty() {
                // Anyone could call as it, with `principal:` alone.
                return Err(Parsed::Invalid(format!(
                    "principal {principal:?} has no secret"
                )));
            }
            if secrets
                .insert(principal.clone(), secret.into_bytes())
                .is_some()
            {
                return Err(Parsed::Duplicate(principal));
            }
        }
        Ok(Self { secrets })
    }

    /// Whether `secret` is the principal's, compared in constant time.
    fn check(&self, principal: &str, secret: &[u8]) -> bool {
        // An unknown principal costs the same comparison as a known one.
        let (known, expected) = match self.secrets.get(principal) {
            Some(s) => (true, s.as_slice()),
            None => (false, &[0u8; 32][..]),
        };
        let same_length = expected.len() == secret.len();
        let padded = if same_length { secret } else { expected };
        let equal: bool = expected.ct_eq(padded).into();
        known && same_length && equal
    }
}

pub(crate) enum Parsed {
    Invalid(String),
    Duplicate(String),
}

/// The master's and the agent's realms, named as Mesos names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realm {
    /// The scheduler API (`--authenticate-frameworks`).
    Scheduler,
    /// Agents registering (`--authenticate-agents`).
    Agent,
    /// The operator API and other calls that change state (`--authenticate-http-readwrite`).
    ReadWrite,
    /// State and metrics (`--authenticate-http-readonly`).
    ReadOnly,
    /// An agent's calls that change something (its `--authenticate-http-readwrite`).
    AgentReadWrite,
    /// An agent's state, metrics and sandboxes (its `--authenticate-http-readonly`).
    AgentReadOnly,
}

impl Realm {
    pub fn name(self) -> &'static str {
        match self {
            Realm::Scheduler => "mesos-master-scheduler",
            Realm::Agent => "mesos-master-agent",
            Realm::ReadWrite => "mesos-master-readwrite",
            Realm::ReadOnly => "mesos-master-readonly",
            Realm::AgentReadWrite => "mesos-agent-readwrite",
            Realm::AgentReadOnly => "mesos-agent-readonly",
        }
    }
}

/// Which realms ask who calls (Mesos' `--authenticate-*` flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct Realms {
    pub frameworks: bool,
    pub agents: bool,
    pub readwrite: bool,
    pub readonly: bool,
}

/// Which realms ask who calls, and whom they accept.
#[derive(Clone, Default)]
pub struct Authentication {
    credentials: Arc<Credentials>,
    realms: Realms,
    /// Where bearer tokens are found (the master's registry); none: Basic only.
    tokens: Option<Arc<dyn tokens::TokenBook>>,
}

impl std::fmt::Debug for Authentication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authentication")
            .field("credentials", &self.credentials)
            .field("realms", &self.realms)
            .field("tokens", &self.tokens.is_some())
            .finish()
    }
}

/// A caller that did not say who it is, or said it wrongly.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{why}")]
pub struct Unauthenticated {
    pub realm: Realm,
    pub why: String,
}

impl Unauthenticated {
    /// The `WWW-Authenticate` value of the 401, as Mesos' basic authenticator sends it.
    pub fn challenge(&self) -> String {
        format!("Basic realm=\"{}\"", self.realm.name())
    }
}

impl Authentication {
    /// The realms with their flags set ask for a principal of `credentials`; a flag
    /// set with no credentials is refused (no one could ever call).
    pub fn new(credentials: Option<Credentials>, realms: Realms) -> Result<Self, CredentialsError> {
        let flags = [
            (realms.frameworks, "--authenticate-frameworks"),
            (realms.agents, "--authenticate-agents"),
            (realms.readwrite, "--authenticate-http-readwrite"),
            (realms.readonly, "--authenticate-http-readonly"),
        ];
        if credentials.is_none()
            && let Some((_, flag)) = flags.iter().find(|(on, _)| *on)
        {
            return Err(CredentialsError::NoCredentials { flag });
        }
        Ok(Self {
            credentials: Arc::new(credentials.unwrap_or_default()),
            realms,
            tokens: None,
        })
    }

    /// Accepts bearer tokens found in `book` too, in every realm but the agents'.
    pub fn with_tokens(mut self, book: Arc<dyn tokens::TokenBook>) -> Self {
        self.tokens = Some(book);
        self
    }

    /// Whether callers of `realm` must say who they are.
    pub fn required(&self, realm: Realm) -> bool {
        match realm {
            Realm::Scheduler => self.realms.frameworks,
            Realm::Agent => self.realms.agents,
            Realm::ReadWrite | Realm::AgentReadWrite => self.realms.readwrite,
            Realm::ReadOnly | Realm::AgentReadOnly => self.realms.readonly,
        }
    }

    /// The caller's principal, from its `Authorization` header, for a call in
    /// `realm`: `None` where the realm asks no one.
    pub fn principal(
        &self,
        realm: Realm,
        authorization: Option<&[u8]>,
    ) -> Result<Option<String>, Unauthenticated> {
        if !self.required(realm) {
            return Ok(None);
        }
        let refuse = |why: &str| Unauthenticated {
            realm,
            why: why.to_owned(),
        };
        let header = authorization.ok_or_else(|| {
            refuse("this endpoint needs credentials: send HTTP Basic authentication")
        })?;
        if let Some(token) = bearer(header) {
            return match &self.tokens {
                Some(book) if realm != Realm::Agent => {
                    let principal =
                        tokens::verify(book.as_ref(), token, crate::now_secs()).map_err(refuse)?;
                    // A principal taken out of --credentials takes its tokens with it.
                    if !self.credentials.secrets.contains_key(&principal) {
                        return Err(refuse(
                            "the bearer token's principal is no longer in --credentials",
                        ));
                    }
                    Ok(Some(principal))
                }
                _ => Err(refuse("bearer tokens are not taken here: send HTTP Basic")),
            };
        }
        let (principal, secret) = basic(header).ok_or_else(|| {
            refuse("the Authorization header is not HTTP Basic with principal:secret in base64")
        })?;
        if !self.credentials.check(&principal, &secret) {
            return Err(refuse("the principal or its secret is wrong"));
        }
        Ok(Some(principal))
    }
}

/// The token of `Bearer <token>`, if the header is one.
pub fn bearer(header: &[u8]) -> Option<&str> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// `Basic base64(principal:secret)`, split at the first ':'.
fn basic(header: &[u8]) -> Option<(String, Vec<u8>)> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let principal = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((principal, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests;
