//! Framework event streams: an event goes to its framework's stream, and a stream
//! that is full (the scheduler reads too slowly) or closed (it hung up) disconnects
//! its framework. Both are counted, for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cairn_api::v1::Event;
use tokio::sync::mpsc::error::TrySendError;

use super::Leader;

/// Framework streams dropped, by why.
#[derive(Debug, Default)]
pub struct StreamCounts {
    /// Full: `STREAM_BUFFER` events queued and unread.
    overflowed: AtomicU64,
    /// Closed by the scheduler.
    hung_up: AtomicU64,
}

impl StreamCounts {
    /// The counters in Prometheus' text format.
    pub fn render(&self) -> String {
        format!(
            "# HELP cairn_master_framework_streams_dropped_total Framework event streams the \
             master dropped, by why.\n# TYPE cairn_master_framework_streams_dropped_total \
             counter\ncairn_master_framework_streams_dropped_total{{reason=\"full\"}} {}\n\
             cairn_master_framework_streams_dropped_total{{reason=\"hung_up\"}} {}\n",
            self.overflowed.load(Ordering::Relaxed),
            self.hung_up.load(Ordering::Relaxed),
        )
    }
}

impl Leader {
    /// Sends an event to a framework; a full or closed stream disconnects it.
    pub(super) fn send_event(&mut self, framework_id: &str, event: Event) -> bool {
        let Some(fw) = self.frameworks.get_mut(framework_id) else {
            return false;
        };
        let Some((_, tx)) = &fw.stream else {
            return false;
        };
        match tx.try_send(Ok(event)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                tracing::info!(
                    framework_id,
                    "framework stream full; framework disconnected"
                );
                self.stream_counts
                    .overflowed
                    .fetch_add(1, Ordering::Relaxed);
                self.disconnect_framework(framework_id);
                false
            }
            Err(TrySendError::Closed(_)) => {
                self.hung_up(framework_id);
                false
            }
        }
    }

    /// The API says a subscription's stream was dropped.
    pub(super) fn stream_closed(&mut self, stream_id: &str) {
        let hung_up = (self.frameworks.iter())
            .find(|(_, f)| f.stream.as_ref().is_some_and(|(id, _)| id == stream_id))
            .map(|(id, _)| id.clone());
        if let Some(framework_id) = hung_up {
            self.hung_up(&framework_id);
            self.allocate();
        }
    }

    /// Streams whose schedulers hung up, where the API's word of it was lost.
    pub(super) fn find_hung_up_streams(&mut self) {
        let hung_up: Vec<String> = (self.frameworks.iter())
            .filter(|(_, f)| f.stream.as_ref().is_some_and(|(_, tx)| tx.is_closed()))
            .map(|(id, _)| id.clone())
            .collect();
        for framework_id in hung_up {
            self.hung_up(&framework_id);
        }
    }

    fn hung_up(&mut self, framework_id: &str) {
        tracing::info!(framework_id, "framework hung up; framework disconnected");
        self.stream_counts.hung_up.fetch_add(1, Ordering::Relaxed);
        self.disconnect_framework(framework_id);
    }

    /// Records the bearer token (its id) a subscription's stream was opened with.
    pub(super) fn note_token(&mut self, stream_id: &str, token: Option<String>) {
        let fw = (self.frameworks.values_mut())
            .find(|f| f.stream.as_ref().is_some_and(|(id, _)| id == stream_id));
        if let Some(fw) = fw {
            fw.token = token;
        }
    }

    /// A bearer token was revoked: the streams opened with it hear an ERROR and end,
    /// as its calls are refused from now on.
    pub(super) fn token_revoked(&mut self, id: &str) {
        let opened_with: Vec<String> = (self.frameworks.iter())
            .filter(|(_, f)| f.stream.is_some() && f.token.as_deref() == Some(id))
            .map(|(fw, _)| fw.clone())
            .collect();
        for framework_id in opened_with {
            let revoked = "the bearer token this subscription was opened with was revoked";
            self.send_event(&framework_id, super::subscribe::error_event(revoked));
            tracing::info!(
                framework_id,
                token = id,
                "{revoked}; framework disconnected"
            );
            self.disconnect_framework(&framework_id);
        }
        self.allocate();
    }

    /// The framework's stream is gone: no offers for it until it subscribes again
    /// (its failover timeout runs from now), and those it holds go back.
    pub(super) fn disconnect_framework(&mut self, framework_id: &str) {
        if let Some(fw) = self.frameworks.get_mut(framework_id) {
            fw.stream = None;
            fw.disconnected_at = Some(Instant::now());
        }
        self.allocator.set_framework_active(framework_id, false);
        self.rescind_offers_of_framework(framework_id);
    }
}
