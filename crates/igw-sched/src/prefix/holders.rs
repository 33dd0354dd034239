//! The set of endpoints holding one block hash, each with its slot in that endpoint's LRU.
//!
//! Most hashes are held by one or two endpoints, so up to two entries live inline (the whole value
//! is 24 bytes); larger sets spill to a boxed slice. Entries are sorted by endpoint id so matching can
//! intersect and merge sets in one linear pass.

use igw_core::EndpointId;

/// An `(endpoint, LRU slot)` pair.
pub(super) type Holder = (EndpointId, u32);

const INLINE: usize = 2;

/// Sorted set of [`Holder`]s.
#[derive(Clone, Debug)]
pub(super) enum Holders {
    Inline { len: u8, items: [Holder; INLINE] },
    Heap(Box<[Holder]>),
}

impl Default for Holders {
    fn default() -> Self {
        Holders::Inline { len: 0, items: [(EndpointId(0), 0); INLINE] }
    }
}

impl Holders {
    /// The holders, sorted by endpoint id.
    #[inline]
    pub(super) fn as_slice(&self) -> &[Holder] {
        match self {
            Holders::Inline { len, items } => &items[..*len as usize],
            Holders::Heap(items) => items,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// The LRU slot of `ep`, if it holds this hash.
    #[inline]
    pub(super) fn slot_of(&self, ep: EndpointId) -> Option<u32> {
        let s = self.as_slice();
        if s.len() <= 8 {
            s.iter().find(|h| h.0 == ep).map(|h| h.1)
        } else {
            s.binary_search_by_key(&ep, |h| h.0).ok().map(|i| s[i].1)
        }
    }

    /// Adds `ep` (or updates its slot if present).
    pub(super) fn insert(&mut self, ep: EndpointId, slot: u32) {
        let pos = match self.as_slice().binary_search_by_key(&ep, |h| h.0) {
            Ok(i) => {
                self.slots_mut()[i].1 = slot;
                return;
            }
            Err(i) => i,
        };
        if let Holders::Inline { len, items } = self
            && (*len as usize) < INLINE
        {
            let n = *len as usize;
            items.copy_within(pos..n, pos + 1);
            items[pos] = (ep, slot);
            *len += 1;
            return;
        }
        let s = self.as_slice();
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(&s[..pos]);
        v.push((ep, slot));
        v.extend_from_slice(&s[pos..]);
        *self = Holders::Heap(v.into_boxed_slice());
    }

    /// Removes `ep`; returns whether it was present.
    pub(super) fn remove(&mut self, ep: EndpointId) -> bool {
        let Ok(pos) = self.as_slice().binary_search_by_key(&ep, |h| h.0) else {
            return false;
        };
        match self {
            Holders::Inline { len, items } => {
                let n = *len as usize;
                items.copy_within(pos + 1..n, pos);
                *len -= 1;
            }
            Holders::Heap(items) if items.len() - 1 <= INLINE => {
                let mut arr = [(EndpointId(0), 0); INLINE];
                let mut n = 0;
                for (i, h) in items.iter().enumerate() {
                    if i != pos {
                        arr[n] = *h;
                        n += 1;
                    }
                }
                *self = Holders::Inline { len: n as u8, items: arr };
            }
            Holders::Heap(items) => {
                let mut v = items.to_vec();
                v.remove(pos);
                *items = v.into_boxed_slice();
            }
        }
        true
    }

    /// Heap bytes owned by this set (0 while inline).
    pub(super) fn heap_bytes(&self) -> usize {
        match self {
            Holders::Inline { .. } => 0,
            Holders::Heap(items) => std::mem::size_of_val::<[Holder]>(items),
        }
    }

    fn slots_mut(&mut self) -> &mut [Holder] {
        match self {
            Holders::Inline { len, items } => &mut items[..*len as usize],
            Holders::Heap(items) => items,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ids(h: &Holders) -> Vec<u32> {
        h.as_slice().iter().map(|h| h.0.0).collect()
    }

    #[test]
    fn inline_spill_and_back() {
        assert_eq!(size_of::<Holders>(), 24);
        let mut h = Holders::default();
        assert!(h.is_empty());
        for (i, ep) in [5u32, 1, 9, 3].into_iter().enumerate() {
            h.insert(EndpointId(ep), i as u32);
        }
        assert_eq!(ids(&h), [1, 3, 5, 9]);
        assert_eq!(h.slot_of(EndpointId(9)), Some(2));
        assert_eq!(h.heap_bytes(), 32);
        h.insert(EndpointId(9), 7);
        assert_eq!(h.slot_of(EndpointId(9)), Some(7));
        assert!(h.remove(EndpointId(3)));
        assert!(!h.remove(EndpointId(3)));
        assert_eq!(ids(&h), [1, 5, 9]);
        assert!(h.remove(EndpointId(1)));
        assert!(matches!(h, Holders::Inline { len: 2, .. }));
        assert_eq!(ids(&h), [5, 9]);
        assert_eq!(h.slot_of(EndpointId(5)), Some(0));
        assert!(h.remove(EndpointId(9)));
        assert!(h.remove(EndpointId(5)));
        assert!(h.is_empty());
    }
}
