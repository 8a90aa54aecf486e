//! Role weights and quota: validated, written to the registry, then applied to the
//! allocator. They survive restarts because the registry holds them.

use cairn_api::Resources;
use cairn_api::internal::registry_operation::Operation;
use cairn_api::internal::{RoleQuota, RoleWeight, UpdateQuota, UpdateWeights};

use super::Leader;
use crate::allocator::Quota;
use crate::error::CallError;

/// Mesos' role name rules: path components that are not empty, `.` or `..`, do not
/// start with `-`, and hold no whitespace or control characters.
pub(crate) fn validate_role(role: &str) -> Result<(), CallError> {
    let bad = |why: &'static str| {
        Err(CallError::InvalidRole {
            role: role.to_owned(),
            why,
        })
    };
    if role.is_empty() {
        return bad("it is empty");
    }
    if role == "*" {
        return Ok(());
    }
    for part in role.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("a path component is empty, '.' or '..'");
        }
        if part.starts_with('-') {
            return bad("a path component starts with '-'");
        }
        if part
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '*')
        {
            return bad("it contains whitespace, a control character or '*'");
        }
    }
    Ok(())
}

fn parse_quota(q: &RoleQuota) -> Result<Quota, CallError> {
    let parse = |text: &str, part: &'static str| {
        Resources::parse(text).map_err(|error| CallError::UnparsableQuota {
            role: q.role.clone(),
            part,
            error,
        })
    };
    let guarantee = parse(&q.guarantee, "guarantee")?;
    let limit = if q.limit.is_empty() {
        None
    } else {
        Some(parse(&q.limit, "limit")?)
    };
    if let Some(limit) = &limit {
        for kind in ["cpus", "mem", "disk", "gpus"] {
            let (g, l) = (guarantee.scalar(kind), limit.scalar(kind));
            if l > 0.0 && g > l {
                return Err(CallError::QuotaAboveLimit {
                    role: q.role.clone(),
                    kind,
                    guarantee: g,
                    limit: l,
                });
            }
        }
    }
    Ok(Quota { guarantee, limit })
}

impl Leader {
    /// Applies the registry's weights and quotas to a fresh allocator.
    pub(super) fn load_roles(&mut self) {
        let state = self.registry.state();
        for (role, weight) in &state.weights {
            self.allocator.set_weight(role, *weight);
        }
        for q in state.quotas.values() {
            match parse_quota(q) {
                Ok(quota) => self.allocator.set_quota(&q.role, quota),
                Err(e) => tracing::error!(error = %e, "ignoring a stored quota"),
            }
        }
    }

    /// UPDATE_WEIGHTS: all or nothing, then a registry write, then the allocator.
    pub(super) async fn update_weights(
        &mut self,
        weights: Vec<RoleWeight>,
    ) -> Result<(), CallError> {
        for w in &weights {
            validate_role(&w.role)?;
            if !w.weight.is_finite() || w.weight <= 0.0 {
                return Err(CallError::InvalidWeight {
                    role: w.role.clone(),
                    weight: w.weight,
                });
            }
        }
        self.registry
            .propose(Operation::UpdateWeights(UpdateWeights {
                weights: weights.clone(),
            }))
            .await?;
        for w in weights {
            self.allocator.set_weight(&w.role, w.weight);
        }
        self.allocate();
        Ok(())
    }

    /// UPDATE_QUOTA: all or nothing, then a registry write, then the allocator.
    pub(super) async fn update_quota(&mut self, quotas: Vec<RoleQuota>) -> Result<(), CallError> {
        let mut parsed = Vec::new();
        for q in &quotas {
            validate_role(&q.role)?;
            if q.role == "*" {
                return Err(CallError::QuotaForDefaultRole);
            }
            parsed.push(parse_quota(q)?);
        }
        self.registry
            .propose(Operation::UpdateQuota(UpdateQuota {
                quotas: quotas.clone(),
            }))
            .await?;
        for (q, quota) in quotas.iter().zip(parsed) {
            self.allocator.set_quota(&q.role, quota);
        }
        self.allocate();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_follow_mesos_rules() {
        for good in ["*", "eng", "eng/batch", "a.b", "team_1/x-y"] {
            assert!(validate_role(good).is_ok(), "{good}");
        }
        for bad in [
            "", "eng/", "/eng", "eng//x", ".", "a/..", "-x", "a b", "a/*",
        ] {
            assert!(validate_role(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_guarantee_above_its_limit_is_refused() {
        let q = RoleQuota {
            role: "eng".into(),
            guarantee: "cpus:10".into(),
            limit: "cpus:5".into(),
        };
        assert_eq!(
            parse_quota(&q).unwrap_err().to_string(),
            "quota for role eng: guarantee cpus:10 exceeds limit cpus:5"
        );
    }
}
