//! The scalar quantities fairness is computed on, as fixed-size integers: DRF and quota
//! only look at cpus, mem, disk and gpus, and an allocation cycle touches them on every
//! agent, so they must be cheap to add, subtract and compare.

use cairn_api::Resources;

pub(crate) const KINDS: [&str; 4] = ["cpus", "mem", "disk", "gpus"];

/// Thousandths of each kind in [`KINDS`] order (Mesos' fixed-point precision).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quantities(pub [u64; 4]);

impl Quantities {
    pub fn of(r: &Resources) -> Self {
        let mut q = [0u64; 4];
        for (i, kind) in KINDS.iter().enumerate() {
            q[i] = (r.scalar(kind) * 1000.0).round() as u64;
        }
        Quantities(q)
    }

    pub fn add(&mut self, other: &Quantities) {
        for i in 0..4 {
            // Saturating: quantities come from the network, and bookkeeping must not panic.
            self.0[i] = self.0[i].saturating_add(other.0[i]);
        }
    }

    /// Saturating: bookkeeping never goes negative even if a caller double-frees.
    pub fn sub(&mut self, other: &Quantities) {
        for i in 0..4 {
            self.0[i] = self.0[i].saturating_sub(other.0[i]);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|v| *v == 0)
    }

    /// Whether `self` covers `other` in every kind.
    pub fn covers(&self, other: &Quantities) -> bool {
        (0..4).all(|i| self.0[i] >= other.0[i])
    }

    /// `max(0, self - other)` per kind.
    pub fn shortfall(&self, other: &Quantities) -> Quantities {
        let mut q = [0u64; 4];
        for (i, v) in q.iter_mut().enumerate() {
            *v = self.0[i].saturating_sub(other.0[i]);
        }
        Quantities(q)
    }

    /// DRF's dominant share: the largest fraction of the cluster's total of any kind.
    pub fn dominant_share(&self, total: &Quantities) -> f64 {
        (0..4)
            .filter(|i| total.0[*i] > 0)
            .map(|i| self.0[i] as f64 / total.0[i] as f64)
            .fold(0.0, f64::max)
    }
}
