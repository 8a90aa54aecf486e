//! Per-executor tokens (Mesos' `MESOS_EXECUTOR_AUTHENTICATION_TOKEN`): an executor
//! process proves to its agent which executor it is with a token the agent gave it at
//! launch, beside the check that it is the very process the agent started (its pid
//! and start time, from the socket's peer credentials). The token is a MAC under the
//! agent's key of the executor's identity: the agent keeps nothing per executor, an
//! agent that restarts checks the tokens of the executors it re-attaches, and no
//! executor can make another's token, holding no key.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The agent's key, as a maker and checker of executor tokens.
pub struct ExecutorTokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for ExecutorTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExecutorTokens")
    }
}

impl ExecutorTokens {
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    fn mac(&self, framework_id: &str, executor_id: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        // Apart from the artifacts' MACs under the same key.
        mac.update(b"executor-token\0");
        mac.update(framework_id.as_bytes());
        mac.update(b"\0");
        mac.update(executor_id.as_bytes());
        mac
    }

    /// The token of framework `framework_id`'s executor `executor_id`.
    pub fn token(&self, framework_id: &str, executor_id: &str) -> String {
        hex::encode(self.mac(framework_id, executor_id).finalize().into_bytes())
    }

    /// Whether `token` is that executor's, compared in constant time.
    pub fn verify(&self, framework_id: &str, executor_id: &str, token: &str) -> bool {
        hex::decode(token).is_ok_and(|tag| {
            self.mac(framework_id, executor_id)
                .verify_slice(&tag)
                .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_its_executors_and_no_one_elses() {
        let tokens = ExecutorTokens::new(vec![7; 32]);
        let t = tokens.token("fw", "ex");
        assert!(tokens.verify("fw", "ex", &t));
        assert!(!tokens.verify("fw", "other", &t));
        assert!(!tokens.verify("fw2", "ex", &t));
        // The separator keeps ("f", "w\0ex") apart from ("fw", "ex").
        assert!(!tokens.verify("f", "wex", &t));
        assert!(!tokens.verify("fw", "ex", ""));
        assert!(!tokens.verify("fw", "ex", "zz"));
        let other_agent = ExecutorTokens::new(vec![8; 32]);
        assert!(!other_agent.verify("fw", "ex", &t));
    }
}
