//! Turning the allocator's grants into offers, and giving resources back to it.

use std::time::{Duration, Instant};

use cairn_api::Resources;
use cairn_api::v1::{Event, OfferId, event};

use super::{Leader, OfferEntry};

impl Leader {
    /// One allocation cycle: every grant becomes an offer, batched per framework.
    pub(super) fn allocate(&mut self) {
        let grants = self.allocator.allocate(Instant::now());
        let mut batches: Vec<(String, Vec<cairn_api::v1::Offer>)> = Vec::new();
        for grant in grants {
            let offer_id = cairn_api::ids::new_offer_id().value;
            let entry = OfferEntry {
                created: Instant::now(),
                framework_id: grant.framework_id.clone(),
                agent_id: grant.agent_id.clone(),
                role: grant.role,
                resources: grant.resources,
            };
            let proto = self.offer_proto(&offer_id, &entry);
            if let Some(agent) = self.agents.get_mut(&entry.agent_id) {
                agent.offered = agent.offered.add(&entry.resources);
            }
            self.offers.insert(offer_id, entry);
            match batches.iter_mut().find(|(f, _)| *f == grant.framework_id) {
                Some((_, offers)) => offers.push(proto),
                None => batches.push((grant.framework_id, vec![proto])),
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

    /// Takes an offer out of circulation and gives its resources back to the
    /// allocator, filtered from its framework for `refuse` if given.
    pub(super) fn remove_offer(
        &mut self,
        offer_id: &str,
        refuse: Option<Duration>,
    ) -> Option<OfferEntry> {
        let entry = self.offers.remove(offer_id)?;
        self.release_offer(&entry, &entry.resources, refuse);
        Some(entry)
    }

    /// Gives back `unused` of an offer that is leaving circulation.
    pub(super) fn release_offer(
        &mut self,
        entry: &OfferEntry,
        unused: &Resources,
        refuse: Option<Duration>,
    ) {
        if let Some(agent) = self.agents.get_mut(&entry.agent_id) {
            agent.offered = agent
                .offered
                .checked_sub(&entry.resources)
                .unwrap_or_else(Resources::new);
        }
        if !unused.is_empty() {
            self.allocator.recover(
                &entry.framework_id,
                &entry.agent_id,
                &entry.role,
                unused,
                refuse.map(|d| (d, Instant::now())),
            );
        }
    }

    pub(super) fn rescind(&mut self, offer_ids: Vec<String>) {
        for offer_id in offer_ids {
            if let Some(entry) = self.remove_offer(&offer_id, None) {
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
            self.remove_offer(&id, None);
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
