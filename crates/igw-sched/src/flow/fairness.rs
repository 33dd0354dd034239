//! Fairness policies: which backlogged flow of a band is served next.
//!
//! Each policy keeps an index over the band's backlogged flows (a flow is in the index iff it has at least one
//! queued request), so a pick is O(log flows):
//! - global strict: flows by their head's order key;
//! - round robin: flows by fairness id, with a cursor at the last served id;
//! - VTC: flows by virtual token counter.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use super::config::FairnessPolicy;
use super::ordering::OrderKey;
use super::queue::Flow;

/// An `f64` counter with a total order, usable as a B-tree key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counter(f64);

impl PartialEq for Counter {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Counter {}

impl PartialOrd for Counter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Counter {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The per-band fairness state.
#[derive(Debug)]
pub(crate) enum FairnessIndex {
    GlobalStrict {
        heads: BTreeSet<(OrderKey, u32)>,
    },
    RoundRobin {
        active: BTreeMap<Arc<str>, u32>,
        cursor: Option<Arc<str>>,
    },
    Vtc {
        active: BTreeSet<(Counter, u32)>,
        /// The band's virtual time: the smallest counter among backlogged flows, remembered when the band
        /// empties. Newly backlogged flows are lifted to it.
        floor: f64,
    },
}

impl FairnessIndex {
    pub fn new(policy: FairnessPolicy) -> Self {
        match policy {
            FairnessPolicy::GlobalStrict => FairnessIndex::GlobalStrict { heads: BTreeSet::new() },
            FairnessPolicy::RoundRobin => FairnessIndex::RoundRobin { active: BTreeMap::new(), cursor: None },
            FairnessPolicy::Vtc => FairnessIndex::Vtc { active: BTreeSet::new(), floor: 0.0 },
        }
    }

    /// `flow` (index `idx`) just became backlogged.
    pub fn activate(&mut self, idx: u32, flow: &mut Flow) {
        match self {
            FairnessIndex::GlobalStrict { heads } => {
                flow.indexed_head = flow.queue.head().map(|(k, _)| k);
                if let Some(h) = flow.indexed_head {
                    heads.insert((h, idx));
                }
            }
            FairnessIndex::RoundRobin { active, .. } => {
                active.insert(flow.id.clone(), idx);
            }
            FairnessIndex::Vtc { active, floor } => {
                let lift = active.first().map_or(*floor, |(c, _)| c.0);
                flow.counter = flow.counter.max(lift);
                active.insert((Counter(flow.counter), idx));
            }
        }
    }

    /// `flow` just became empty.
    pub fn deactivate(&mut self, idx: u32, flow: &mut Flow) {
        match self {
            FairnessIndex::GlobalStrict { heads } => {
                if let Some(h) = flow.indexed_head.take() {
                    heads.remove(&(h, idx));
                }
            }
            FairnessIndex::RoundRobin { active, .. } => {
                active.remove(&flow.id);
            }
            FairnessIndex::Vtc { active, floor } => {
                if let Some((c, _)) = active.first() {
                    *floor = floor.max(c.0);
                }
                active.remove(&(Counter(flow.counter), idx));
            }
        }
    }

    /// The head of backlogged `flow` may have changed.
    pub fn head_changed(&mut self, idx: u32, flow: &mut Flow) {
        if let FairnessIndex::GlobalStrict { heads } = self {
            let new = flow.queue.head().map(|(k, _)| k);
            if new != flow.indexed_head {
                if let Some(old) = flow.indexed_head {
                    heads.remove(&(old, idx));
                }
                if let Some(h) = new {
                    heads.insert((h, idx));
                }
                flow.indexed_head = new;
            }
        }
    }

    /// Adds `delta` weighted tokens to the flow's counter (negative to refund an over-estimate; a refund never
    /// takes the counter below the band's virtual time).
    pub fn charge(&mut self, idx: u32, flow: &mut Flow, delta: f64) {
        let backlogged = flow.count > 0;
        let floor = match self {
            FairnessIndex::Vtc { active, floor } => {
                if backlogged {
                    active.remove(&(Counter(flow.counter), idx));
                }
                *floor
            }
            _ => 0.0,
        };
        let c = flow.counter + delta;
        flow.counter = if delta < 0.0 { c.max(floor.min(flow.counter)) } else { c };
        if let FairnessIndex::Vtc { active, .. } = self
            && backlogged
        {
            active.insert((Counter(flow.counter), idx));
        }
    }

    /// The flow to serve next, if any is backlogged.
    pub fn pick(&mut self) -> Option<u32> {
        match self {
            FairnessIndex::GlobalStrict { heads } => heads.first().map(|(_, i)| *i),
            FairnessIndex::RoundRobin { active, cursor } => {
                let after = match cursor.as_deref() {
                    Some(c) => active.range::<str, _>((Bound::Excluded(c), Bound::Unbounded)).next(),
                    None => None,
                };
                let (id, idx) = after.or_else(|| active.iter().next())?;
                *cursor = Some(id.clone());
                Some(*idx)
            }
            FairnessIndex::Vtc { active, .. } => active.first().map(|(_, i)| *i),
        }
    }
}
