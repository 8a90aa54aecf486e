//! Offers. A deliberately plain policy for now: each agent's available resources go
//! whole to one framework at a time, frameworks taken in turn, honouring DECLINE
//! filters and SUPPRESS. The DRF allocator replaces this module behind the same calls.

use std::time::Instant;

use cairn_api::Resources;
use cairn_api::v1::{Event, OfferId, event};

use super::{Leader, OfferEntry};

impl Leader {
    pub(super) fn allocate(&mut self) {
        let now = Instant::now();
        let mut frameworks: Vec<String> = self
            .frameworks
            .iter()
            .filter(|(_, f)| f.stream.is_some() && !f.suppressed)
            .map(|(id, _)| id.clone())
            .collect();
        if frameworks.is_empty() {
            return;
        }
        frameworks.sort();
        let mut agents: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| a.conn.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        agents.sort();
        let mut batches: Vec<(String, Vec<cairn_api::v1::Offer>)> = Vec::new();
        for agent_id in agents {
            let available = self.agents[&agent_id].available();
            if available.cpus() <= 0.0 && available.mem() <= 0.0 {
                continue;
            }
            let count = frameworks.len();
            let chosen = (0..count)
                .map(|i| &frameworks[(self.rotation + i) % count])
                .find(|fw| {
                    self.frameworks[*fw]
                        .filters
                        .get(&agent_id)
                        .is_none_or(|until| *until <= now)
                })
                .cloned();
            let Some(framework_id) = chosen else { continue };
            self.rotation = self.rotation.wrapping_add(1);
            let offer_id = cairn_api::ids::new_offer_id().value;
            let entry = OfferEntry {
                framework_id: framework_id.clone(),
                agent_id: agent_id.clone(),
                resources: available.clone(),
            };
            let proto = self.offer_proto(&offer_id, &entry);
            let agent = self.agents.get_mut(&agent_id).expect("agent listed above");
            agent.offered = agent.offered.add(&available);
            self.offers.insert(offer_id, entry);
            match batches.iter_mut().find(|(f, _)| *f == framework_id) {
                Some((_, offers)) => offers.push(proto),
                None => batches.push((framework_id, vec![proto])),
            }
        }
        for (framework_id, offers) in batches {
            self.send_event(
                &framework_id,
                Event {
                    r#type: event::Type::Offers as i32,
                    offers: Some(event::Offers { offers }),
                    ..Default::default()
                },
            );
        }
    }

    /// Takes an offer out of circulation and returns its resources to its agent.
    pub(super) fn remove_offer(&mut self, offer_id: &str) -> Option<OfferEntry> {
        let entry = self.offers.remove(offer_id)?;
        if let Some(agent) = self.agents.get_mut(&entry.agent_id) {
            agent.offered = agent
                .offered
                .checked_sub(&entry.resources)
                .unwrap_or_else(Resources::new);
        }
        Some(entry)
    }

    fn rescind(&mut self, offer_ids: Vec<String>) {
        for offer_id in offer_ids {
            if let Some(entry) = self.remove_offer(&offer_id) {
                self.send_event(
                    &entry.framework_id,
                    Event {
                        r#type: event::Type::Rescind as i32,
                        rescind: Some(event::Rescind {
                            offer_id: Some(OfferId { value: offer_id }),
                        }),
                        ..Default::default()
                    },
                );
            }
        }
    }

    pub(super) fn rescind_offers_of_agent(&mut self, agent_id: &str) {
        let ids = self
            .offers
            .iter()
            .filter(|(_, o)| o.agent_id == agent_id)
            .map(|(id, _)| id.clone())
            .collect();
        self.rescind(ids);
    }

    pub(super) fn rescind_offers_of_framework(&mut self, framework_id: &str) {
        let ids: Vec<String> = self
            .offers
            .iter()
            .filter(|(_, o)| o.framework_id == framework_id)
            .map(|(id, _)| id.clone())
            .collect();
        // The framework is gone or going: no RESCIND to send, just reclaim.
        for id in ids {
            self.remove_offer(&id);
        }
    }

    pub(super) fn heartbeat_frameworks(&mut self) {
        let ids: Vec<String> = self
            .frameworks
            .iter()
            .filter(|(_, f)| f.stream.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.send_event(
                &id,
                Event {
                    r#type: event::Type::Heartbeat as i32,
                    ..Default::default()
                },
            );
        }
    }
}
