//! Bearer tokens, for the CLI and the web UI: `Authorization: Bearer cairn-<id>.<secret>`
//! stands for the principal that minted it, until it expires or is revoked. The master
//! keeps each token's id, principal and the SHA-256 of its secret in its registry,
//! never the secret: whoever reads the registry cannot call as anyone. Secrets are
//! compared in constant time.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::internal::TokenRecord;

const PREFIX: &str = "cairn-";

/// Where tokens are looked up: the master's registry.
pub trait TokenBook: Send + Sync {
    fn find(&self, id: &str) -> Option<TokenRecord>;
}

/// A token just minted: what its holder gets once, and what the registry keeps.
pub struct Minted {
    pub token: String,
    pub record: TokenRecord,
}

/// A new token for `principal`, valid from `now` (seconds since the epoch) to
/// `expires_at`.
pub fn mint(principal: &str, now: f64, expires_at: f64, description: &str) -> Minted {
    let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    // Two v4 uuids: 244 bits from the operating system's random source.
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    Minted {
        token: format!("{PREFIX}{id}.{secret}"),
        record: TokenRecord {
            id,
            principal: principal.to_owned(),
            secret_sha256: digest(&secret),
            created_at: now,
            expires_at,
            revoked: false,
            description: description.to_owned(),
            revoked_at: 0.0,
        },
    }
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// The id of a Cairn token (not a secret: it names the token in lists and logs).
pub fn id_of(token: &str) -> Option<&str> {
    Some(token.strip_prefix(PREFIX)?.split_once('.')?.0)
}

/// The id of the bearer token an `Authorization` header carries, if it does.
pub fn id_in_header(header: Option<&[u8]>) -> Option<String> {
    id_of(crate::authn::bearer(header?)?).map(str::to_owned)
}

/// The principal `token` stands for at `now`, or why it stands for no one.
pub fn verify(book: &dyn TokenBook, token: &str, now: f64) -> Result<String, &'static str> {
    let (id, secret) = token
        .strip_prefix(PREFIX)
        .and_then(|t| t.split_once('.'))
        .ok_or("the bearer token is not a Cairn token (cairn-<id>.<secret>)")?;
    let record = book.find(id).ok_or("the bearer token is unknown")?;
    if !bool::from(digest(secret).ct_eq(&record.secret_sha256)) {
        return Err("the bearer token is wrong");
    }
    if record.revoked {
        return Err("the bearer token was revoked");
    }
    if now >= record.expires_at {
        return Err("the bearer token has expired");
    }
    Ok(record.principal)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Book(HashMap<String, TokenRecord>);

    impl TokenBook for Book {
        fn find(&self, id: &str) -> Option<TokenRecord> {
            self.0.get(id).cloned()
        }
    }

    #[test]
    fn a_token_stands_for_its_principal_until_it_expires_or_is_revoked() {
        let minted = mint("alice", 100.0, 200.0, "laptop");
        let id = minted.record.id.clone();
        assert!(!format!("{:?}", minted.record).contains(&minted.token[22..]));
        let mut book = Book(HashMap::from([(id.clone(), minted.record)]));
        assert_eq!(verify(&book, &minted.token, 150.0), Ok("alice".to_owned()));
        assert_eq!(
            verify(&book, &minted.token, 200.0),
            Err("the bearer token has expired")
        );
        let mut wrong = minted.token.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(
            verify(&book, &wrong, 150.0),
            Err("the bearer token is wrong")
        );
        assert_eq!(
            verify(&book, "cairn-0000.abc", 150.0),
            Err("the bearer token is unknown")
        );
        assert!(verify(&book, "Basic abc", 150.0).is_err());
        book.0.get_mut(&id).unwrap().revoked = true;
        assert_eq!(
            verify(&book, &minted.token, 150.0),
            Err("the bearer token was revoked")
        );
    }

    #[test]
    fn every_token_is_new() {
        let a = mint("p", 0.0, 1.0, "");
        let b = mint("p", 0.0, 1.0, "");
        assert_ne!(a.record.id, b.record.id);
        assert_ne!(a.token, b.token);
    }
}
