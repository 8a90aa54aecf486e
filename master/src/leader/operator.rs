//! The operator's writes (Mesos' v1 operator API): each is checked against the
//! master's `--acls` for the calling principal before anything changes.

use cairn_api::internal::{RoleQuota, RoleWeight};

use super::Leader;
use crate::authz::{Action, Entity};
use crate::error::CallError;

/// One operator write.
#[derive(Debug)]
pub enum OperatorCall {
    UpdateWeights(Vec<RoleWeight>),
    UpdateQuota(Vec<RoleQuota>),
    /// TEARDOWN of any framework.
    Teardown {
        framework_id: String,
    },
    MarkAgentGone {
        agent_id: String,
    },
}

impl Leader {
    /// Does `call` for `principal` (none: its realm asks no one), if the ACLs allow it.
    pub(super) async fn operator_call(
        &mut self,
        call: OperatorCall,
        principal: Option<String>,
    ) -> Result<(), CallError> {
        let principal = principal.as_deref();
        let acls = self.config.acls.clone();
        match call {
            OperatorCall::UpdateWeights(weights) => {
                for w in &weights {
                    acls.check(principal, Action::UpdateWeights, &Entity::one(&w.role))?;
                }
                self.update_weights(weights).await
            }
            OperatorCall::UpdateQuota(quotas) => {
                for q in &quotas {
                    acls.check(principal, Action::UpdateQuota, &Entity::one(&q.role))?;
                }
                self.update_quota(quotas).await
            }
            OperatorCall::Teardown { framework_id } => {
                // Whether the caller may comes first: a refusal says nothing of
                // whether the framework exists.
                let state = self.registry.state();
                let owner = state
                    .frameworks
                    .get(&framework_id)
                    .map(|info| info.principal.clone());
                drop(state);
                let object = Entity::named_or_any(owner.as_deref().unwrap_or(""));
                acls.check(principal, Action::TeardownFrameworks, &object)?;
                if owner.is_none() {
                    return Err(CallError::UnknownFramework { framework_id });
                }
                self.teardown(&framework_id).await
            }
            OperatorCall::MarkAgentGone { agent_id } => {
                acls.check(principal, Action::MarkAgentGone, &Entity::ANY)?;
                self.mark_agent_gone(&agent_id).await
            }
        }
    }
}
