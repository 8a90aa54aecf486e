//! The role tree: `eng/batch` is a child of `eng`. Each node keeps its subtree's
//! allocation, its weight and quota, and its children and subscribed frameworks in
//! weighted-DRF order (lowest share first), so picking the next framework for an
//! agent is a walk down the tree instead of a sort of every framework.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};

use cairn_api::Resources;

use super::quantities::{KINDS, Quantities};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Entry {
    Role(u32),
    Framework(u32),
}

/// A share as a totally ordered key.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Share(f64);

impl Eq for Share {}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

struct Node {
    name: String,
    parent: Option<u32>,
    weight: f64,
    guarantee: Quantities,
    limit: Option<Quantities>,
    /// Allocated to this role and every role below it.
    allocated: Quantities,
    children: Vec<u32>,
    frameworks: Vec<u32>,
    order: BTreeSet<(Share, Entry)>,
    keys: HashMap<Entry, Share>,
}

pub(super) struct RoleTree {
    nodes: Vec<Node>,
    index: HashMap<String, u32>,
    /// Nodes with a non-zero guarantee: the only ones quota passes look at.
    guaranteed: Vec<u32>,
}

impl RoleTree {
    /// The root holds every top-level role; it is not a role itself.
    pub(super) const ROOT: u32 = 0;

    pub(super) fn new() -> Self {
        Self {
            nodes: vec![Node::new(String::new(), None)],
            index: HashMap::new(),
            guaranteed: Vec::new(),
        }
    }

    pub(super) fn find(&self, path: &str) -> Option<u32> {
        self.index.get(path).copied()
    }

    /// The node for `path`, created with its ancestors when new. `*` is a top-level role.
    pub(super) fn node(&mut self, path: &str) -> u32 {
        if let Some(n) = self.find(path) {
            return n;
        }
        let (parent, _) = match path.rsplit_once('/') {
            Some((parent, leaf)) => (self.node(parent), leaf),
            None => (Self::ROOT, path),
        };
        let id = self.nodes.len() as u32;
        self.nodes.push(Node::new(path.to_owned(), Some(parent)));
        self.nodes[parent as usize].children.push(id);
        self.index.insert(path.to_owned(), id);
        id
    }

    pub(super) fn name(&self, node: u32) -> &str {
        &self.nodes[node as usize].name
    }

    pub(super) fn subscribe(&mut self, node: u32, fw: u32) {
        let n = &mut self.nodes[node as usize];
        if !n.frameworks.contains(&fw) {
            n.frameworks.push(fw);
        }
    }

    pub(super) fn unsubscribe(&mut self, node: u32, fw: u32) {
        let n = &mut self.nodes[node as usize];
        n.frameworks.retain(|f| *f != fw);
        if let Some(k) = n.keys.remove(&Entry::Framework(fw)) {
            n.order.remove(&(k, Entry::Framework(fw)));
        }
    }

    pub(super) fn set_weight(&mut self, node: u32, weight: f64) {
        self.nodes[node as usize].weight = if weight.is_finite() && weight > 0.0 {
            weight
        } else {
            1.0
        };
    }

    pub(super) fn set_quota(
        &mut self,
        node: u32,
        guarantee: Quantities,
        limit: Option<Quantities>,
    ) {
        let n = &mut self.nodes[node as usize];
        n.guarantee = guarantee;
        n.limit = limit;
        self.guaranteed.retain(|g| *g != node);
        if !guarantee.is_zero() {
            self.guaranteed.push(node);
        }
    }

    pub(super) fn allocated(&self, node: u32) -> Quantities {
        self.nodes[node as usize].allocated
    }

    /// Adds to a role's allocation and to every ancestor's.
    pub(super) fn allocate(&mut self, node: u32, q: &Quantities) {
        let mut cur = Some(node);
        while let Some(n) = cur {
            self.nodes[n as usize].allocated.add(q);
            cur = self.nodes[n as usize].parent;
        }
    }

    pub(super) fn release(&mut self, node: u32, q: &Quantities) {
        let mut cur = Some(node);
        while let Some(n) = cur {
            self.nodes[n as usize].allocated.sub(q);
            cur = self.nodes[n as usize].parent;
        }
    }

    fn role_share(&self, node: u32, total: &Quantities) -> Share {
        let n = &self.nodes[node as usize];
        Share(n.allocated.dominant_share(total) / n.weight)
    }

    /// Rebuilds every node's order from scratch: at the start of a cycle, when the
    /// total (the denominator of every share) may have changed.
    pub(super) fn sort(&mut self, framework_shares: &[(u32, u32, f64)], total: &Quantities) {
        let role_keys: Vec<Share> = (0..self.nodes.len() as u32)
            .map(|n| self.role_share(n, total))
            .collect();
        for n in &mut self.nodes {
            n.order.clear();
            n.keys.clear();
            for &child in &n.children {
                let key = role_keys[child as usize];
                n.order.insert((key, Entry::Role(child)));
                n.keys.insert(Entry::Role(child), key);
            }
        }
        for &(fw, role, share) in framework_shares {
            let n = &mut self.nodes[role as usize];
            n.order.insert((Share(share), Entry::Framework(fw)));
            n.keys.insert(Entry::Framework(fw), Share(share));
        }
    }

    /// A node's children and frameworks, lowest share first.
    pub(super) fn sorted(&self, node: u32) -> impl Iterator<Item = Entry> + '_ {
        self.nodes[node as usize].order.iter().map(|(_, e)| *e)
    }

    fn rekey(&mut self, node: u32, entry: Entry, key: Share) {
        let n = &mut self.nodes[node as usize];
        if let Some(old) = n.keys.insert(entry, key) {
            n.order.remove(&(old, entry));
        }
        n.order.insert((key, entry));
    }

    /// After a grant to `fw` under `role`: move the framework and every role on the
    /// path to the root to their new places.
    pub(super) fn resort_after_grant(
        &mut self,
        role: u32,
        fw: u32,
        fw_share: &f64,
        total: &Quantities,
    ) {
        self.rekey(role, Entry::Framework(fw), Share(*fw_share));
        let mut cur = role;
        while let Some(parent) = self.nodes[cur as usize].parent {
            let key = self.role_share(cur, total);
            self.rekey(parent, Entry::Role(cur), key);
            cur = parent;
        }
    }

    /// Whether a role has reached its limit in some kind. A kind a limit does not
    /// name (zero) is unlimited, as in Mesos.
    pub(super) fn at_limit(&self, node: u32) -> bool {
        let n = &self.nodes[node as usize];
        n.limit
            .is_some_and(|l| (0..4).any(|i| l.0[i] > 0 && n.allocated.0[i] >= l.0[i]))
    }

    /// `have` with each scalar capped so no role on the path passes its limit. A kind
    /// a limit does not name (zero) is not capped.
    pub(super) fn cap_to_limits(&self, node: u32, have: &Quantities) -> Quantities {
        let mut cap = *have;
        let mut cur = Some(node);
        while let Some(n) = cur {
            let role = &self.nodes[n as usize];
            if let Some(limit) = role.limit {
                let room = limit.shortfall(&role.allocated);
                for i in 0..4 {
                    if limit.0[i] > 0 {
                        cap.0[i] = cap.0[i].min(room.0[i]);
                    }
                }
            }
            cur = role.parent;
        }
        cap
    }

    /// Roles still below their guarantee, lowest share first.
    pub(super) fn unsatisfied_quota_roles(&self) -> Vec<u32> {
        let mut roles: Vec<(f64, u32)> = self
            .guaranteed
            .iter()
            .map(|&i| (i, &self.nodes[i as usize]))
            .filter(|(_, n)| !n.allocated.covers(&n.guarantee))
            .map(|(i, n)| (n.allocated.dominant_share(&n.guarantee), i))
            .collect();
        roles.sort_by(|a, b| a.0.total_cmp(&b.0));
        roles.into_iter().map(|(_, r)| r).collect()
    }

    /// What unmet guarantees of roles off `node`'s path still need: resources that
    /// fair sharing must leave unallocated.
    pub(super) fn headroom_excluding(&self, node: u32) -> Quantities {
        if self.guaranteed.is_empty() {
            return Quantities::default();
        }
        let mut path = Vec::new();
        let mut cur = Some(node);
        while let Some(n) = cur {
            path.push(n);
            cur = self.nodes[n as usize].parent;
        }
        let mut need = Quantities::default();
        for &i in &self.guaranteed {
            let n = &self.nodes[i as usize];
            // Only the top-most guarantee on each path counts (a parent's guarantee
            // includes its children's).
            if path.contains(&i) || self.has_guaranteed_ancestor(i) {
                continue;
            }
            need.add(&n.guarantee.shortfall(&n.allocated));
        }
        need
    }

    fn has_guaranteed_ancestor(&self, node: u32) -> bool {
        let mut cur = self.nodes[node as usize].parent;
        while let Some(n) = cur {
            if !self.nodes[n as usize].guarantee.is_zero() {
                return true;
            }
            cur = self.nodes[n as usize].parent;
        }
        false
    }
}

impl Node {
    fn new(name: String, parent: Option<u32>) -> Self {
        Self {
            name,
            parent,
            weight: 1.0,
            guarantee: Quantities::default(),
            limit: None,
            allocated: Quantities::default(),
            children: Vec::new(),
            frameworks: Vec::new(),
            order: BTreeSet::new(),
            keys: HashMap::new(),
        }
    }
}

/// `available` with its scalars cut from `have` down to `cap`.
pub(super) fn trim(available: &Resources, have: &Quantities, cap: &Quantities) -> Resources {
    let mut excess = Resources::new();
    for (i, kind) in KINDS.iter().enumerate() {
        let over = have.0[i].saturating_sub(cap.0[i]);
        if over > 0 {
            excess = excess.with_scalar(kind, over as f64 / 1000.0);
        }
    }
    available.checked_sub(&excess).unwrap_or_default()
}
