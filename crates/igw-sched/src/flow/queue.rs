//! Storage: a slab of queued items with an id index, and the per-flow queues that point into it.
//!
//! FCFS flows use a `VecDeque` with lazy deletion (a cancelled item leaves a stale entry that is skipped when
//! it reaches the front, and the deque is compacted when stale entries dominate). Deadline-ordered flows use
//! a `BTreeMap` keyed by `(deadline, seq)`, from which removal is exact. Either way the counts and bytes kept
//! beside the queues are exact at all times.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use igw_core::Instant;
use rustc_hash::FxHashMap;

use super::ordering::OrderKey;

/// One queued request.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub id: u64,
    /// Enqueue sequence number (unique); `key.1 == seq`.
    pub seq: u64,
    pub band: u32,
    pub flow: u32,
    pub bytes: u64,
    pub enqueue_time: Instant,
    /// Enqueue time plus the effective TTL.
    pub expiry: Option<Instant>,
    pub key: OrderKey,
    pub est_tokens: u64,
}

/// A slab of items with free-list reuse and an id → slot index.
#[derive(Debug, Default)]
pub(crate) struct Items {
    slots: Vec<Option<Item>>,
    free: Vec<u32>,
    by_id: FxHashMap<u64, u32>,
}

impl Items {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn contains_id(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    pub fn slot_of(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    pub fn get(&self, slot: u32) -> Option<&Item> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// True if `slot` still holds the item enqueued with sequence number `seq`.
    pub fn is_live(&self, slot: u32, seq: u64) -> bool {
        self.get(slot).is_some_and(|i| i.seq == seq)
    }

    /// Stores an item whose id is not present; returns its slot.
    pub fn insert(&mut self, item: Item) -> u32 {
        let id = item.id;
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(item);
                s
            }
            None => {
                self.slots.push(Some(item));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    pub fn remove(&mut self, slot: u32) -> Option<Item> {
        let item = self.slots.get_mut(slot as usize)?.take()?;
        self.by_id.remove(&item.id);
        self.free.push(slot);
        Some(item)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Item> {
        self.slots.iter().flatten()
    }
}

/// The queue of one flow.
#[derive(Debug)]
pub(crate) enum FlowQueue {
    /// Arrival order; entries may be stale (see the module docs).
    Fifo { q: VecDeque<(OrderKey, u32)>, stale: usize },
    /// Sorted by key; exact.
    Keyed(BTreeMap<OrderKey, u32>),
}

impl FlowQueue {
    pub fn new(keyed: bool) -> Self {
        if keyed { FlowQueue::Keyed(BTreeMap::new()) } else { FlowQueue::Fifo { q: VecDeque::new(), stale: 0 } }
    }

    pub fn push(&mut self, key: OrderKey, slot: u32) {
        match self {
            FlowQueue::Fifo { q, .. } => q.push_back((key, slot)),
            FlowQueue::Keyed(m) => {
                m.insert(key, slot);
            }
        }
    }

    /// The first live entry. Requires the FIFO front to be live (kept so by [`FlowQueue::remove`] and
    /// [`FlowQueue::pop`]).
    pub fn head(&self) -> Option<(OrderKey, u32)> {
        match self {
            FlowQueue::Fifo { q, .. } => q.front().copied(),
            FlowQueue::Keyed(m) => m.first_key_value().map(|(k, s)| (*k, *s)),
        }
    }

    /// Removes and returns the head entry, then restores the live-front invariant.
    pub fn pop(&mut self, items: &Items) -> Option<(OrderKey, u32)> {
        match self {
            FlowQueue::Fifo { q, stale } => {
                let head = q.pop_front();
                Self::clean_front(q, stale, items);
                head
            }
            FlowQueue::Keyed(m) => m.pop_first(),
        }
    }

    /// Forgets the entry `key` whose item has already been removed from `items`.
    pub fn remove(&mut self, key: OrderKey, items: &Items) {
        match self {
            FlowQueue::Fifo { q, stale } => {
                if q.front().is_some_and(|(k, _)| *k == key) {
                    q.pop_front();
                    Self::clean_front(q, stale, items);
                } else {
                    *stale += 1;
                    if *stale > 64 && *stale * 2 > q.len() {
                        q.retain(|(k, s)| items.is_live(*s, k.1));
                        *stale = 0;
                    }
                }
            }
            FlowQueue::Keyed(m) => {
                m.remove(&key);
            }
        }
    }

    /// Drops every entry (used when the flow's live count reaches zero: all that is left is stale).
    pub fn clear(&mut self) {
        match self {
            FlowQueue::Fifo { q, stale } => {
                q.clear();
                *stale = 0;
            }
            FlowQueue::Keyed(m) => m.clear(),
        }
    }

    fn clean_front(q: &mut VecDeque<(OrderKey, u32)>, stale: &mut usize, items: &Items) {
        while let Some((k, s)) = q.front() {
            if items.is_live(*s, k.1) {
                break;
            }
            q.pop_front();
            *stale = stale.saturating_sub(1);
        }
    }
}

/// One flow: the requests of one fairness id within one band.
#[derive(Debug)]
pub(crate) struct Flow {
    pub id: Arc<str>,
    pub queue: FlowQueue,
    /// Live requests queued.
    pub count: u64,
    /// Live bytes queued.
    pub bytes: u64,
    /// VTC virtual token counter (weighted tokens served).
    pub counter: f64,
    /// The key under which the flow is indexed by global-strict fairness (its head when last indexed).
    pub indexed_head: Option<OrderKey>,
    /// When the flow last became empty (or was created).
    pub idle_since: Instant,
}

impl Flow {
    pub fn new(id: Arc<str>, keyed: bool, now: Instant) -> Self {
        Flow { id, queue: FlowQueue::new(keyed), count: 0, bytes: 0, counter: 0.0, indexed_head: None, idle_since: now }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn item(id: u64, seq: u64) -> Item {
        Item {
            id,
            seq,
            band: 0,
            flow: 0,
            bytes: 1,
            enqueue_time: Instant::ZERO,
            expiry: None,
            key: (Instant::ZERO, seq),
            est_tokens: 0,
        }
    }

    #[test]
    fn fifo_lazy_deletion_and_compaction() {
        let mut items = Items::default();
        let mut q = FlowQueue::new(false);
        let mut keys = Vec::new();
        for seq in 0..200u64 {
            let it = item(seq, seq);
            let key = it.key;
            let slot = items.insert(it);
            q.push(key, slot);
            keys.push((key, slot));
        }
        // Remove three items in four from the middle: stale entries, then a compaction.
        for (key, slot) in keys.iter().filter(|(k, _)| k.1 % 4 != 0) {
            items.remove(*slot).unwrap();
            q.remove(*key, &items);
        }
        let FlowQueue::Fifo { q: dq, stale } = &q else { unreachable!() };
        assert!(dq.len() < 200 && dq.len() - *stale == 50, "{} {stale}", dq.len());
        // Popping yields only live even items, in order.
        let mut seen = Vec::new();
        while let Some((k, s)) = q.pop(&items) {
            assert!(items.is_live(s, k.1));
            seen.push(k.1);
            items.remove(s);
        }
        assert_eq!(seen, (0..200).filter(|x| x % 4 == 0).collect::<Vec<_>>());
    }

    #[test]
    fn slot_reuse_does_not_revive_stale_entries() {
        let mut items = Items::default();
        let a = items.insert(item(1, 1));
        items.remove(a);
        let b = items.insert(item(2, 2));
        assert_eq!(a, b);
        assert!(!items.is_live(a, 1));
        assert!(items.is_live(b, 2));
        assert_eq!(items.slot_of(2), Some(b));
        assert!(!items.contains_id(1));
    }
}
