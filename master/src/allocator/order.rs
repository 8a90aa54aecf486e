//! Who is offered an agent next: the first framework in fair-share order that may be
//! offered it (active, not suppressed for the role, not filtered from the agent, not
//! backed off for letting offers lapse) and has not just declined it.
//!
//! The last rule is Cairn's, not Mesos'. A framework that holds nothing has a
//! dominant share of zero, so DRF puts it first every time; if it declines whatever
//! it is offered with `refuse_seconds: 0` (and REVIVEs, which clears filters), it is
//! offered the same agent again and again and the frameworks behind it never see it.
//! So a framework that declined everything it was offered of an agent goes behind the
//! others for that agent for [`DECLINE_YIELD`]: it is still offered the agent at once
//! when no one else may take it, and REVIVE does not undo this, because it is an
//! order and not a filter.
//!
//! A framework that lets an offer lapse (never answers it within the offer timeout)
//! holds the agent for the whole timeout each time and, holding the least, would be
//! offered it again at once. So it gets no offers at all for a while, doubling with
//! each lapse in a row, until it answers one. Nor does REVIVE undo this: a framework
//! that does not read its offers gains nothing from more of them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Allocator;
use super::roles::Entry;

/// How long a framework that declined an agent goes behind the others for it: Mesos'
/// default allocation interval, the longest Mesos makes any framework wait for a
/// re-offer. It doubles with each decline of the agent in a row, up to
/// [`MAX_DECLINE_YIELD`], until the framework launches something there: a framework
/// that only ever declines would otherwise hold the agent's free resources (while
/// its answer is on its way) once a second.
pub const DECLINE_YIELD: Duration = Duration::from_secs(1);

/// The longest a framework that keeps declining an agent goes behind the others for
/// it: Mesos' default `refuse_seconds` plus a little.
pub const MAX_DECLINE_YIELD: Duration = Duration::from_secs(8);

/// The longest a framework that keeps letting its offers lapse goes without one.
pub const MAX_LAPSE_BACKOFF: Duration = Duration::from_secs(60);

/// The frameworks (slots) that declined an agent: when they last did, and how many
/// times in a row.
#[derive(Default)]
pub(super) struct Declines(HashMap<u32, (Instant, u32)>);

/// How long a framework goes behind the others after `count` declines in a row.
fn yield_after(count: u32) -> Duration {
    DECLINE_YIELD
        .saturating_mul(1 << count.saturating_sub(1).min(8))
        .min(MAX_DECLINE_YIELD)
}

impl Declines {
    pub(super) fn mark(&mut self, framework: u32, now: Instant) {
        let count = self.0.get(&framework).map_or(0, |(_, n)| *n);
        self.0.insert(framework, (now, count.saturating_add(1)));
    }

    /// The framework launched something here (or is gone): its declines are over.
    pub(super) fn clear(&mut self, framework: u32) {
        self.0.remove(&framework);
    }

    /// When `framework` declined the agent, if it still goes behind the others.
    fn since(&self, framework: u32, now: Instant) -> Option<Instant> {
        let (t, count) = *self.0.get(&framework)?;
        (now.saturating_duration_since(t) < yield_after(count)).then_some(t)
    }

    /// Forgets declines long past: a framework quiet for twice the longest yield
    /// starts again at one.
    pub(super) fn expire(&mut self, now: Instant) {
        self.0
            .retain(|_, (t, _)| now.saturating_duration_since(*t) < MAX_DECLINE_YIELD * 2);
    }
}

impl Allocator {
    /// DECLINE (or an ACCEPT that used nothing) of everything `framework_id` was
    /// offered of `agent_id`: it goes behind the other frameworks for this agent for
    /// [`DECLINE_YIELD`] (see `order.rs`).
    pub fn declined(&mut self, framework_id: &str, agent_id: &str, now: Instant) {
        if let (Some(&fw), Some(&slot)) = (
            self.framework_index.get(framework_id),
            self.agent_index.get(agent_id),
        ) && let Some(agent) = self.agents[slot as usize].as_mut()
        {
            agent.declines.mark(fw, now);
        }
    }

    /// `framework_id` launched something on `agent_id`: its declines of the agent are
    /// over.
    pub fn launched(&mut self, framework_id: &str, agent_id: &str) {
        if let (Some(&fw), Some(&slot)) = (
            self.framework_index.get(framework_id),
            self.agent_index.get(agent_id),
        ) && let Some(agent) = self.agents[slot as usize].as_mut()
        {
            agent.declines.clear(fw);
        }
    }

    /// `framework_id` let its offers lapse (the offer timeout passed unanswered): it
    /// gets no offers for `timeout` times 2 to the number of lapses in a row before
    /// this one, at most [`MAX_LAPSE_BACKOFF`] (see `order.rs`). Offers that lapse
    /// while it is backed off (made in earlier cycles) count as the same lapse.
    pub fn lapsed(&mut self, framework_id: &str, now: Instant, timeout: Duration) {
        if let Some(fw) = self.framework_mut(framework_id) {
            let (before, until) = fw.backoff.unwrap_or((0, now));
            if until > now {
                return;
            }
            let lapses = before.saturating_add(1);
            let wait = timeout
                .saturating_mul(1 << (lapses - 1).min(16))
                .min(MAX_LAPSE_BACKOFF);
            fw.backoff = Some((lapses, now + wait));
        }
    }

    /// `framework_id` answered an offer (ACCEPT or DECLINE): its next lapse counts as
    /// its first. The backoff it is in holds: answering a newer offer right after a
    /// lapse must not win back the agents it just let lapse.
    pub fn answered(&mut self, framework_id: &str) {
        if let Some(fw) = self.framework_mut(framework_id)
            && let Some((lapses, _)) = fw.backoff.as_mut()
        {
            *lapses = 0;
        }
    }

    /// The framework and role `agent` goes to next under `node`: the first in
    /// fair-share order that may be offered it and has not just declined it; failing
    /// that, of those that declined it, the one that did so longest ago.
    pub(super) fn pick(&self, node: u32, agent: u32, now: Instant) -> Option<(u32, u32)> {
        let declines = &self.agents[agent as usize]
            .as_ref()
            .expect("agent in order")
            .declines;
        let mut yielded: Option<(Instant, u32, u32)> = None;
        let first = self.first_eligible(node, agent, now, &mut |fw, role| match declines
            .since(fw, now)
        {
            None => true,
            Some(t) => {
                if yielded.is_none_or(|(oldest, _, _)| t < oldest) {
                    yielded = Some((t, fw, role));
                }
                false
            }
        });
        first.or(yielded.map(|(_, fw, role)| (fw, role)))
    }

    /// Walks the role tree under `node` in fair-share order and returns the first
    /// framework that may be offered `agent` and that `take` takes.
    fn first_eligible(
        &self,
        node: u32,
        agent: u32,
        now: Instant,
        take: &mut impl FnMut(u32, u32) -> bool,
    ) -> Option<(u32, u32)> {
        if self.roles.at_limit(node) {
            return None;
        }
        for entry in self.roles.sorted(node) {
            match entry {
                Entry::Role(child) => {
                    if let Some(found) = self.first_eligible(child, agent, now, take) {
                        return Some(found);
                    }
                }
                Entry::Framework(fw) => {
                    let f = self.frameworks[fw as usize]
                        .as_ref()
                        .expect("sorted framework");
                    let filtered = f.filters.get(&agent).is_some_and(|until| *until > now)
                        || f.backoff.is_some_and(|(_, until)| until > now);
                    if f.active && !f.suppressed.contains(&node) && !filtered && take(fw, node) {
                        return Some((fw, node));
                    }
                }
            }
        }
        None
    }
}
