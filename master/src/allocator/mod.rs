//! The allocator: hierarchical weighted DRF over roles, with quota (guarantees and
//! limits), offer filters and suppression. It is a plain struct fed events with an
//! explicit `now`: it owns no clock, no I/O and no offers, only the accounting of what
//! each agent has allocated to which framework and role, and `allocate` returns the
//! grants the leader turns into offers.
//!
//! As in Mesos, "allocated" means offered or in use by tasks: resources stay allocated
//! to a framework until [`Allocator::recover`] gives them back (offer declined,
//! rescinded or partly unused, task terminal).

mod order;
mod quantities;
mod roles;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_api::Resources;

use order::Declines;
pub use order::{DECLINE_YIELD, MAX_DECLINE_YIELD, MAX_LAPSE_BACKOFF};
pub use quantities::Quantities;
use roles::RoleTree;

/// A role's quota: what it is guaranteed, and what it may never exceed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quota {
    pub guarantee: Resources,
    pub limit: Option<Resources>,
}

/// Resources of one agent, allocated to one framework under one role.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub framework_id: String,
    pub agent_id: String,
    pub role: String,
    pub resources: Resources,
}

struct AgentSlot {
    id: String,
    total: Resources,
    available: Resources,
    /// `available`'s scalars, kept in step with it: the hot path never re-reads them.
    available_q: Quantities,
    active: bool,
    /// (framework slot, role node) -> what is allocated to it here.
    allocations: HashMap<(u32, u32), Resources>,
    /// Frameworks that declined all they were offered here, lately.
    declines: Declines,
}

struct FrameworkSlot {
    id: String,
    roles: Vec<u32>,
    active: bool,
    /// Roles (nodes) this framework wants no offers for.
    suppressed: std::collections::HashSet<u32>,
    /// agent slot -> no offers of it to this framework until then.
    filters: HashMap<u32, Instant>,
    /// role node -> allocated to this framework under that role.
    allocated: HashMap<u32, Quantities>,
    /// Offers it let lapse in a row, and until when it gets no more (see `order.rs`).
    backoff: Option<(u32, Instant)>,
}

pub struct Allocator {
    agents: Vec<Option<AgentSlot>>,
    free_agent_slots: Vec<u32>,
    agent_index: HashMap<String, u32>,
    frameworks: Vec<Option<FrameworkSlot>>,
    free_framework_slots: Vec<u32>,
    framework_index: HashMap<String, u32>,
    roles: RoleTree,
    /// Sum of active agents' totals: the denominator of every share.
    total: Quantities,
    rng: u64,
}

impl Default for Allocator {
    fn default() -> Self {
        Self::new(0x9e37_79b9_7f4a_7c15)
    }
}

impl Allocator {
    /// `seed` fixes the order agents are visited in (shuffled every cycle, as in Mesos).
    pub fn new(seed: u64) -> Self {
        Self {
            agents: Vec::new(),
            free_agent_slots: Vec::new(),
            agent_index: HashMap::new(),
            frameworks: Vec::new(),
            free_framework_slots: Vec::new(),
            framework_index: HashMap::new(),
            roles: RoleTree::new(),
            total: Quantities::default(),
            rng: seed | 1,
        }
    }

    // ---- agents ----

    /// Adds an agent with what its running tasks already use, as (framework, role,
    /// resources). A known agent is replaced.
    pub fn add_agent(
        &mut self,
        id: &str,
        total: Resources,
        used: Vec<(String, String, Resources)>,
    ) {
        self.remove_agent(id);
        let slot = free_slot(&mut self.agents, &mut self.free_agent_slots);
        self.agent_index.insert(id.to_owned(), slot);
        self.agents[slot as usize] = Some(AgentSlot {
            id: id.to_owned(),
            available_q: Quantities::of(&total),
            available: total.clone(),
            total: total.clone(),
            active: true,
            allocations: HashMap::new(),
            declines: Declines::default(),
        });
        self.total.add(&Quantities::of(&total));
        for (framework_id, role, resources) in used {
            self.track(slot, &framework_id, &role, resources);
        }
    }

    pub fn remove_agent(&mut self, id: &str) {
        let Some(slot) = self.agent_index.remove(id) else {
            return;
        };
        let agent = self.agents[slot as usize].take().expect("indexed agent");
        self.free_agent_slots.push(slot);
        if agent.active {
            self.total.sub(&Quantities::of(&agent.total));
        }
        for ((fw, role), resources) in agent.allocations {
            self.untrack_quantities(fw, role, &Quantities::of(&resources));
        }
        for fw in self.frameworks.iter_mut().flatten() {
            fw.filters.remove(&slot);
        }
    }

    /// An inactive agent (disconnected) is offered to no one and counts toward no total.
    pub fn set_agent_active(&mut self, id: &str, active: bool) {
        let Some(&slot) = self.agent_index.get(id) else {
            return;
        };
        let agent = self.agents[slot as usize].as_mut().expect("indexed agent");
        if agent.active != active {
            agent.active = active;
            let q = Quantities::of(&agent.total);
            if active {
                self.total.add(&q)
            } else {
                self.total.sub(&q)
            }
        }
    }

    // ---- frameworks ----

    pub fn add_framework(&mut self, id: &str, roles: &[String]) {
        let role_nodes: Vec<u32> = roles.iter().map(|r| self.roles.node(r)).collect();
        if let Some(&slot) = self.framework_index.get(id) {
            let fw = self.frameworks[slot as usize]
                .as_mut()
                .expect("indexed framework");
            for r in &role_nodes {
                if !fw.roles.contains(r) {
                    fw.roles.push(*r);
                }
            }
            fw.active = true;
            // A new subscription (a failover): a fresh scheduler, no lapses held
            // against it.
            fw.backoff = None;
            for r in role_nodes {
                self.roles.subscribe(r, slot);
            }
            return;
        }
        let slot = free_slot(&mut self.frameworks, &mut self.free_framework_slots);
        self.framework_index.insert(id.to_owned(), slot);
        for r in &role_nodes {
            self.roles.subscribe(*r, slot);
        }
        self.frameworks[slot as usize] = Some(FrameworkSlot {
            id: id.to_owned(),
            roles: role_nodes,
            active: true,
            suppressed: Default::default(),
            filters: HashMap::new(),
            allocated: HashMap::new(),
            backoff: None,
        });
    }

    /// Replaces the roles a framework is offered under (UPDATE_FRAMEWORK). What it
    /// holds under a dropped role stays accounted there until recovered.
    pub fn set_framework_roles(&mut self, id: &str, roles: &[String]) {
        let Some(&slot) = self.framework_index.get(id) else {
            return;
        };
        let new: Vec<u32> = roles.iter().map(|r| self.roles.node(r)).collect();
        let fw = self.frameworks[slot as usize]
            .as_mut()
            .expect("indexed framework");
        let old = std::mem::replace(&mut fw.roles, new.clone());
        for r in old.iter().filter(|r| !new.contains(r)) {
            self.roles.unsubscribe(*r, slot);
        }
        for r in new {
            self.roles.subscribe(r, slot);
        }
    }

    /// Removes a framework and gives back everything allocated to it.
    pub fn remove_framework(&mut self, id: &str) {
        let Some(slot) = self.framework_index.remove(id) else {
            return;
        };
        for agent in self.agents.iter_mut().flatten() {
            agent.declines.clear(slot);
            let mine: Vec<(u32, u32)> = agent
                .allocations
                .keys()
                .filter(|(f, _)| *f == slot)
                .copied()
                .collect();
            for key in mine {
                let r = agent.allocations.remove(&key).expect("listed above");
                let q = Quantities::of(&r);
                agent.available = agent.available.add(&r);
                agent.available_q.add(&q);
                self.roles.release(key.1, &q);
            }
        }
        let fw = self.frameworks[slot as usize]
            .take()
            .expect("indexed framework");
        self.free_framework_slots.push(slot);
        for r in fw.roles {
            self.roles.unsubscribe(r, slot);
        }
    }

    /// An inactive framework (disconnected) gets no offers but keeps its allocations.
    pub fn set_framework_active(&mut self, id: &str, active: bool) {
        if let Some(fw) = self.framework_mut(id) {
            fw.active = active;
        }
    }

    /// SUPPRESS: no offers for the given roles, or for all the framework's roles
    /// when none are given (Mesos' `suppress.roles`).
    pub fn suppress(&mut self, id: &str, roles: &[String]) {
        let nodes: Vec<u32> = roles.iter().filter_map(|r| self.roles.find(r)).collect();
        if let Some(fw) = self.framework_mut(id) {
            if roles.is_empty() {
                fw.suppressed = fw.roles.iter().copied().collect();
            } else {
                fw.suppressed.extend(nodes);
            }
        }
    }

    /// REVIVE: undoes SUPPRESS for the given roles (all when none are given) and
    /// clears the framework's offer filters, as Mesos' REVIVE does.
    pub fn revive(&mut self, id: &str, roles: &[String]) {
        let nodes: Vec<u32> = roles.iter().filter_map(|r| self.roles.find(r)).collect();
        if let Some(fw) = self.framework_mut(id) {
            if roles.is_empty() {
                fw.suppressed.clear();
            } else {
                fw.suppressed.retain(|r| !nodes.contains(r));
            }
            fw.filters.clear();
        }
    }

    // ---- roles ----

    pub fn set_weight(&mut self, role: &str, weight: f64) {
        let node = self.roles.node(role);
        self.roles.set_weight(node, weight);
    }

    pub fn set_quota(&mut self, role: &str, quota: Quota) {
        let node = self.roles.node(role);
        self.roles.set_quota(
            node,
            Quantities::of(&quota.guarantee),
            quota.limit.as_ref().map(Quantities::of),
        );
    }

    // ---- allocations ----

    /// Gives resources back: an offer declined, rescinded or partly used, or a task
    /// ended. With `refuse`, the framework is not offered this agent again until then.
    pub fn recover(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        role: &str,
        resources: &Resources,
        refuse: Option<(Duration, Instant)>,
    ) {
        let (Some(&fw), Some(&slot)) = (
            self.framework_index.get(framework_id),
            self.agent_index.get(agent_id),
        ) else {
            // The agent is gone (its allocations went with it) or the framework is
            // (its allocations were returned on removal).
            return;
        };
        let Some(role) = self.roles.find(role) else {
            return;
        };
        let agent = self.agents[slot as usize].as_mut().expect("indexed agent");
        let Some(held) = agent.allocations.get_mut(&(fw, role)) else {
            return;
        };
        // Never give back more than this allocation holds: anything else may be
        // offered or in use elsewhere, and returning it would offer it twice.
        let Some(left) = held.checked_sub(resources) else {
            tracing::error!(
                framework_id,
                agent_id,
                "recovering {resources} that the allocation does not hold; ignored"
            );
            return;
        };
        *held = left;
        let back = resources.clone();
        if held.is_empty() {
            agent.allocations.remove(&(fw, role));
        }
        let q = Quantities::of(&back);
        agent.available = agent.available.add(&back);
        agent.available_q.add(&q);
        self.untrack_quantities(fw, role, &q);
        if let Some((duration, now)) = refuse {
            let f = self.frameworks[fw as usize]
                .as_mut()
                .expect("indexed framework");
            f.filters.insert(slot, now + duration);
        }
    }

    /// One allocation cycle over every agent: first roles below their guarantee, then
    /// weighted DRF for the rest, holding back what unmet guarantees still need.
    pub fn allocate(&mut self, now: Instant) -> Vec<Grant> {
        self.expire_filters(now);
        self.roles.sort(&self.frameworks_shares(), &self.total);
        let mut order: Vec<u32> = self
            .agents
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                a.as_ref()
                    .is_some_and(|a| a.active && !a.available.is_empty())
            })
            .map(|(i, _)| i as u32)
            .collect();
        self.shuffle(&mut order);
        let mut grants = Vec::new();
        // Stage 1: guarantees.
        for &slot in &order {
            for role in self.roles.unsatisfied_quota_roles() {
                if let Some((fw, r)) = self.pick(role, slot, now)
                    && let Some(g) = self.grant(slot, fw, r, None)
                {
                    grants.push(g);
                    break;
                }
            }
        }
        // Stage 2: weighted DRF, keeping headroom for unmet guarantees.
        for &slot in &order {
            if self.agents[slot as usize]
                .as_ref()
                .is_none_or(|a| a.available.is_empty())
            {
                continue;
            }
            if let Some((fw, r)) = self.pick(RoleTree::ROOT, slot, now) {
                let headroom = self.roles.headroom_excluding(r);
                if let Some(g) = self.grant(slot, fw, r, Some(headroom)) {
                    grants.push(g);
                }
            }
        }
        grants
    }

    /// What is allocated on each agent, for invariant checks: (agent, allocated).
    pub fn agent_allocations(&self) -> Vec<(String, Resources, Resources, Resources)> {
        self.agents
            .iter()
            .flatten()
            .map(|a| {
                let allocated = a
                    .allocations
                    .values()
                    .fold(Resources::new(), |acc, r| acc.add(r));
                (
                    a.id.clone(),
                    a.total.clone(),
                    allocated,
                    a.available.clone(),
                )
            })
            .collect()
    }

    /// What each framework holds under each role, summed over agents.
    pub fn framework_allocation(&self, id: &str) -> Quantities {
        let mut q = Quantities::default();
        if let Some(fw) = self
            .framework_index
            .get(id)
            .and_then(|s| self.frameworks[*s as usize].as_ref())
        {
            for a in fw.allocated.values() {
                q.add(a);
            }
        }
        q
    }

    // ---- internals ----

    fn framework_mut(&mut self, id: &str) -> Option<&mut FrameworkSlot> {
        let slot = *self.framework_index.get(id)?;
        self.frameworks[slot as usize].as_mut()
    }

    fn frameworks_shares(&self) -> Vec<(u32, u32, f64)> {
        let mut out = Vec::new();
        for (slot, fw) in self.frameworks.iter().enumerate() {
            let Some(fw) = fw else { continue };
            for &role in &fw.roles {
                let share = fw
                    .allocated
                    .get(&role)
                    .map_or(0.0, |q| q.dominant_share(&self.total));
                out.push((slot as u32, role, share));
            }
        }
        out
    }

    fn expire_filters(&mut self, now: Instant) {
        for fw in self.frameworks.iter_mut().flatten() {
            fw.filters.retain(|_, until| *until > now);
        }
        for agent in self.agents.iter_mut().flatten() {
            agent.declines.expire(now);
        }
    }

    fn shuffle(&mut self, order: &mut [u32]) {
        for i in (1..order.len()).rev() {
            // xorshift64: cheap, deterministic for a given seed.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let j = (self.rng % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
    }

    /// Allocates the agent's available resources (trimmed to the role's limits) to
    /// `fw` under `role`, unless doing so would eat into `headroom`. The hot path of a
    /// cycle: no string lookups, and the agent's resources move into the grant instead
    /// of being copied and subtracted when nothing is trimmed.
    fn grant(
        &mut self,
        slot: u32,
        fw: u32,
        role: u32,
        headroom: Option<Quantities>,
    ) -> Option<Grant> {
        let free = self.free();
        let agent = self.agents[slot as usize].as_mut().expect("agent in order");
        let have = agent.available_q;
        let q = self.roles.cap_to_limits(role, &have);
        if let Some(headroom) = headroom {
            let mut free_after = free;
            free_after.sub(&q);
            if !free_after.covers(&headroom) {
                return None;
            }
        }
        let resources = if q == have {
            std::mem::take(&mut agent.available)
        } else {
            let trimmed = roles::trim(&agent.available, &have, &q);
            agent.available = agent.available.checked_sub(&trimmed).unwrap_or_default();
            trimmed
        };
        if resources.is_empty() {
            return None;
        }
        agent.available_q.sub(&q);
        match agent.allocations.entry((fw, role)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(resources.clone());
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let sum = o.get().add(&resources);
                o.insert(sum);
            }
        }
        let agent_id = agent.id.clone();
        let f = self.frameworks[fw as usize]
            .as_mut()
            .expect("picked framework");
        let held = f.allocated.entry(role).or_default();
        held.add(&q);
        let share = held.dominant_share(&self.total);
        let framework_id = f.id.clone();
        self.roles.allocate(role, &q);
        self.roles.resort_after_grant(role, fw, &share, &self.total);
        Some(Grant {
            framework_id,
            agent_id,
            role: self.roles.name(role).to_owned(),
            resources,
        })
    }

    /// Unallocated quantities on active agents.
    fn free(&self) -> Quantities {
        let mut q = self.total;
        q.sub(&self.roles.allocated(RoleTree::ROOT));
        q
    }

    /// Records an allocation (an offer or a running task) on an agent.
    fn track(&mut self, slot: u32, framework_id: &str, role: &str, resources: Resources) {
        if !self.framework_index.contains_key(framework_id) {
            // A task of a framework that has not re-subscribed yet (after a master
            // failover): account it under a framework entry that is not active.
            self.add_framework(framework_id, &[role.to_owned()]);
            self.set_framework_active(framework_id, false);
        }
        let fw = self.framework_index[framework_id];
        let role = self.roles.node(role);
        let agent = self.agents[slot as usize].as_mut().expect("agent slot");
        agent.available = agent.available.checked_sub(&resources).unwrap_or_default();
        let held = agent.allocations.entry((fw, role)).or_default();
        *held = held.add(&resources);
        let q = Quantities::of(&resources);
        let f = self.frameworks[fw as usize]
            .as_mut()
            .expect("indexed framework");
        f.allocated.entry(role).or_default().add(&q);
        self.roles.allocate(role, &q);
    }

    fn untrack_quantities(&mut self, fw: u32, role: u32, q: &Quantities) {
        if let Some(f) = self.frameworks[fw as usize].as_mut()
            && let Some(a) = f.allocated.get_mut(&role)
        {
            a.sub(q);
        }
        self.roles.release(role, q);
    }
}

/// A free slot index: a recycled one, or a new one at the end.
fn free_slot<T>(slots: &mut Vec<Option<T>>, free: &mut Vec<u32>) -> u32 {
    free.pop().unwrap_or_else(|| {
        slots.push(None);
        (slots.len() - 1) as u32
    })
}
