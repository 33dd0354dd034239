//! One endpoint's bounded recency list of block hashes.
//!
//! An intrusive doubly-linked list in a slab: nodes live in a `Vec` and link by `u32` index, so an
//! entry costs 16 bytes and no allocation after the slab has grown. The list has no hash map of its
//! own; the index finds a node through the slot number it stores next to the endpoint id in the
//! hash's holder set. Entries are never removed one by one: once full, the least recent node is
//! recycled for the new hash, and the caller unlinks the evicted hash from the index.

/// "No node" in the links.
const NIL: u32 = u32::MAX;

/// The largest capacity a list can have (slots are `u32`, with [`NIL`] reserved).
pub(super) const MAX_CAPACITY: usize = (u32::MAX - 1) as usize;

#[derive(Clone, Copy, Debug)]
struct Node {
    hash: u64,
    /// Towards the most recent end.
    prev: u32,
    /// Towards the least recent end.
    next: u32,
}

/// What [`SlabLru::push_front`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Push {
    /// Stored in a fresh slot.
    Added(u32),
    /// The list was full: the least recent hash `evicted` was dropped and its slot reused.
    Recycled { slot: u32, evicted: u64 },
    /// Capacity is zero; nothing stored.
    Refused,
}

/// A bounded LRU list of hashes addressed by slot.
#[derive(Debug)]
pub(super) struct SlabLru {
    nodes: Vec<Node>,
    head: u32,
    tail: u32,
    capacity: u32,
}

impl SlabLru {
    /// An empty list holding at most `capacity` hashes (clamped to [`MAX_CAPACITY`]). The slab grows
    /// on demand, so a large capacity costs nothing until it is used.
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = u32::try_from(capacity.min(MAX_CAPACITY)).unwrap_or(NIL - 1);
        SlabLru { nodes: Vec::new(), head: NIL, tail: NIL, capacity }
    }

    /// Number of hashes held.
    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Maximum number of hashes held.
    pub(super) fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Heap bytes used by the slab.
    pub(super) fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Node>()
    }

    /// Bytes per slot.
    pub(super) const NODE_BYTES: usize = size_of::<Node>();

    /// The hash stored in `slot`.
    #[cfg(test)]
    pub(super) fn hash(&self, slot: u32) -> u64 {
        self.nodes[slot as usize].hash
    }

    /// Makes `slot` the most recent entry.
    pub(super) fn touch(&mut self, slot: u32) {
        if self.head == slot {
            return;
        }
        self.unlink(slot);
        self.link_front(slot);
    }

    /// Stores `hash` (which must not be in the list) as the most recent entry.
    pub(super) fn push_front(&mut self, hash: u64) -> Push {
        if self.capacity == 0 {
            return Push::Refused;
        }
        if self.nodes.len() < self.capacity as usize {
            // len < capacity <= MAX_CAPACITY, so the index fits a u32 below NIL.
            let slot = self.nodes.len() as u32;
            self.nodes.push(Node { hash, prev: NIL, next: NIL });
            self.link_front(slot);
            return Push::Added(slot);
        }
        let slot = self.tail;
        self.unlink(slot);
        let node = &mut self.nodes[slot as usize];
        let evicted = std::mem::replace(&mut node.hash, hash);
        self.link_front(slot);
        Push::Recycled { slot, evicted }
    }

    /// Removes the entry in `slot`. The slab stays dense: its last node moves into `slot`, and the
    /// hash of that node is returned (with its old slot) so the caller can repoint its holder.
    pub(super) fn remove(&mut self, slot: u32) -> Option<(u64, u32)> {
        self.unlink(slot);
        let last = (self.nodes.len() - 1) as u32;
        if slot == last {
            self.nodes.pop();
            return None;
        }
        let moved = self.nodes[last as usize];
        self.nodes[slot as usize] = moved;
        self.nodes.pop();
        if moved.prev == NIL {
            self.head = slot;
        } else {
            self.nodes[moved.prev as usize].next = slot;
        }
        if moved.next == NIL {
            self.tail = slot;
        } else {
            self.nodes[moved.next as usize].prev = slot;
        }
        Some((moved.hash, last))
    }

    /// Hashes from most to least recent.
    pub(super) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut cur = self.head;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let node = self.nodes[cur as usize];
            cur = node.next;
            Some(node.hash)
        })
    }

    fn unlink(&mut self, slot: u32) {
        let Node { prev, next, .. } = self.nodes[slot as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn link_front(&mut self, slot: u32) {
        let old = self.head;
        {
            let node = &mut self.nodes[slot as usize];
            node.prev = NIL;
            node.next = old;
        }
        if old == NIL {
            self.tail = slot;
        } else {
            self.nodes[old as usize].prev = slot;
        }
        self.head = slot;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recency_and_recycling() {
        let mut l = SlabLru::new(3);
        assert_eq!(l.push_front(1), Push::Added(0));
        assert_eq!(l.push_front(2), Push::Added(1));
        assert_eq!(l.push_front(3), Push::Added(2));
        assert_eq!(l.iter().collect::<Vec<_>>(), [3, 2, 1]);
        l.touch(0);
        assert_eq!(l.iter().collect::<Vec<_>>(), [1, 3, 2]);
        assert_eq!(l.push_front(4), Push::Recycled { slot: 1, evicted: 2 });
        assert_eq!(l.iter().collect::<Vec<_>>(), [4, 1, 3]);
        assert_eq!(l.hash(1), 4);
        l.touch(2);
        l.touch(2);
        assert_eq!(l.iter().collect::<Vec<_>>(), [3, 4, 1]);
        assert_eq!(l.len(), 3);
        assert_eq!(SlabLru::NODE_BYTES, 16);
    }

    #[test]
    fn capacity_one_and_zero() {
        let mut l = SlabLru::new(1);
        assert_eq!(l.push_front(7), Push::Added(0));
        assert_eq!(l.push_front(8), Push::Recycled { slot: 0, evicted: 7 });
        assert_eq!(l.iter().collect::<Vec<_>>(), [8]);
        let mut z = SlabLru::new(0);
        assert_eq!(z.push_front(1), Push::Refused);
        assert_eq!(z.len(), 0);
    }
}
