//! The flow controller: priority bands of fairness flows, capacity checks, TTL expiry and the dispatch cycle.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use igw_core::request::DEFAULT_FAIRNESS_ID;
use igw_core::{InferenceRequest, Instant, Priority};
use rustc_hash::FxHashMap;
use thiserror::Error;

use super::Outcome;
use super::config::{BandConfig, FlowConfig, FlowConfigError};
use super::fairness::FairnessIndex;
use super::ordering::{OrderKey, slo_deadline_from_header};
use super::queue::{Flow, Item, Items};

/// The header carrying a request's time-to-first-token SLO in milliseconds.
pub const SLO_TTFT_HEADER: &str = "x-slo-ttft-ms";

/// A request offered to the flow controller.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedRequest {
    /// Caller-chosen id, unique among queued requests.
    pub id: u64,
    /// Priority (selects the band).
    pub priority: Priority,
    /// Fairness id (`x-gateway-inference-fairness-id`; selects the flow within the band).
    pub fairness_id: Arc<str>,
    /// Request body size, counted against the byte caps.
    pub bytes: u64,
    /// When the request was enqueued (the start of its TTL).
    pub enqueue_time: Instant,
    /// The request's own TTL; `None` or zero = the configured default TTL.
    pub ttl: Option<Duration>,
    /// SLO deadline (arrival + `x-slo-ttft-ms`), used by the SLO-deadline ordering.
    pub slo_deadline: Option<Instant>,
    /// Estimated cost in weighted tokens (input + w·output), charged to the flow's VTC counter at dispatch.
    pub est_tokens: u64,
}

impl QueuedRequest {
    /// Builds the queue entry for `req` arriving at `now`: fairness id (default `default-flow`), body bytes,
    /// SLO deadline from `x-slo-ttft-ms`, and the token estimate weighted by `output_token_weight`.
    pub fn from_request(id: u64, req: &InferenceRequest, now: Instant, output_token_weight: f64) -> Self {
        let input = req.estimated_input_tokens();
        let output = req.estimated_tokens().saturating_sub(input);
        let fairness_id = if req.fairness_id.is_empty() { DEFAULT_FAIRNESS_ID } else { req.fairness_id.as_str() };
        QueuedRequest {
            id,
            priority: req.priority,
            fairness_id: Arc::from(fairness_id),
            bytes: req.body_bytes as u64,
            enqueue_time: now,
            ttl: None,
            slo_deadline: slo_deadline_from_header(now, req.header(SLO_TTFT_HEADER)),
            est_tokens: input + (output as f64 * output_token_weight).round() as u64,
        }
    }
}

/// What a dispatch cycle knows about the pool: the saturation detector's output and the requests the
/// gateway has dispatched to the pool that have not finished. An `f64` converts to a load with that
/// saturation and no in-flight count (the batch holdback then never gates).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PoolLoad {
    /// Pool saturation from the saturation detector; NaN counts as saturated.
    pub saturation: f64,
    /// Requests in flight (dispatched, not finished) per endpoint of the pool, mean over the endpoints; the
    /// signal of [`FlowConfig::batch_holdback`].
    pub in_flight_per_endpoint: f64,
}

impl From<f64> for PoolLoad {
    fn from(saturation: f64) -> Self {
        PoolLoad { saturation, in_flight_per_endpoint: 0.0 }
    }
}

/// Which cap a rejection hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// The request-count cap.
    Requests,
    /// The byte cap.
    Bytes,
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitKind::Requests => "request",
            LimitKind::Bytes => "byte",
        })
    }
}

/// Why [`FlowController::enqueue`] refused a request.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Rejected {
    /// The global cap would be exceeded.
    #[error("flow control queue full: global {kind} limit {limit} reached")]
    GlobalCapacity {
        /// Which cap.
        kind: LimitKind,
        /// Its value.
        limit: u64,
    },
    /// The band's cap would be exceeded.
    #[error("flow control queue full: priority band {priority} {kind} limit {limit} reached")]
    BandCapacity {
        /// The band.
        priority: Priority,
        /// Which cap.
        kind: LimitKind,
        /// Its value.
        limit: u64,
    },
    /// A request with this id is already queued.
    #[error("request id {0} is already queued")]
    DuplicateId(u64),
}

impl Rejected {
    /// The finalization outcome: `RejectedCapacity` for the caps, `RejectedOther` otherwise.
    pub fn outcome(&self) -> Outcome {
        match self {
            Rejected::GlobalCapacity { .. } | Rejected::BandCapacity { .. } => Outcome::RejectedCapacity,
            Rejected::DuplicateId(_) => Outcome::RejectedOther,
        }
    }
}

/// A request released by the dispatch cycle (outcome [`Outcome::Dispatched`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatched {
    /// The request's id.
    pub id: u64,
    /// Its band.
    pub priority: Priority,
    /// Its flow.
    pub fairness_id: Arc<str>,
    /// Its size in bytes.
    pub bytes: u64,
    /// Time spent queued (for `..._request_queue_duration_seconds`).
    pub queued_for: Duration,
    /// Weighted tokens charged to the flow's VTC counter now; pass to [`FlowController::on_served`].
    pub charged: u64,
}

/// Queue occupancy of one flow (labels `fairness_id`, `priority` of the queue size/bytes gauges).
#[derive(Clone, Debug, PartialEq)]
pub struct FlowQueueStats {
    /// Fairness id.
    pub fairness_id: Arc<str>,
    /// Band priority.
    pub priority: Priority,
    /// Requests queued.
    pub requests: u64,
    /// Bytes queued.
    pub bytes: u64,
}

/// Queue occupancy of one band.
#[derive(Clone, Debug, PartialEq)]
pub struct BandStats {
    /// Band priority.
    pub priority: Priority,
    /// Requests queued.
    pub requests: u64,
    /// Bytes queued.
    pub bytes: u64,
    /// Number of flows known to the band (backlogged or idle but not yet collected).
    pub flows: usize,
}

/// A snapshot of queue occupancy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowStats {
    /// Requests queued in total.
    pub requests: u64,
    /// Bytes queued in total.
    pub bytes: u64,
    /// Per band, highest priority first.
    pub bands: Vec<BandStats>,
    /// Per flow (including idle flows at zero, so gauges drop back), by band then fairness id.
    pub flows: Vec<FlowQueueStats>,
}

#[derive(Debug)]
struct Band {
    cfg: BandConfig,
    flows: Vec<Option<Flow>>,
    free: Vec<u32>,
    by_id: FxHashMap<Arc<str>, u32>,
    fairness: FairnessIndex,
    requests: u64,
    bytes: u64,
}

impl Band {
    fn new(cfg: BandConfig) -> Self {
        let fairness = FairnessIndex::new(cfg.fairness);
        Band { cfg, flows: Vec::new(), free: Vec::new(), by_id: FxHashMap::default(), fairness, requests: 0, bytes: 0 }
    }

    fn flow_index(&mut self, id: &Arc<str>, now: Instant) -> u32 {
        if let Some(&f) = self.by_id.get(id) {
            return f;
        }
        let flow = Flow::new(id.clone(), self.cfg.ordering.is_keyed(), now);
        let f = match self.free.pop() {
            Some(f) => {
                self.flows[f as usize] = Some(flow);
                f
            }
            None => {
                self.flows.push(Some(flow));
                u32::try_from(self.flows.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.by_id.insert(id.clone(), f);
        f
    }

    fn push(&mut self, f: u32, key: OrderKey, slot: u32, bytes: u64) {
        let Some(flow) = self.flows.get_mut(f as usize).and_then(Option::as_mut) else { return };
        flow.queue.push(key, slot);
        flow.count += 1;
        flow.bytes += bytes;
        self.requests += 1;
        self.bytes += bytes;
        if flow.count == 1 {
            self.fairness.activate(f, flow);
        } else {
            self.fairness.head_changed(f, flow);
        }
    }

    /// Accounts for `item` having left the band (already removed from `items`). `popped` says whether its
    /// queue entry was already popped; otherwise it is removed here.
    fn detach(&mut self, item: &Item, items: &Items, popped: bool, now: Instant) {
        let f = item.flow;
        let Some(flow) = self.flows.get_mut(f as usize).and_then(Option::as_mut) else { return };
        if !popped {
            flow.queue.remove(item.key, items);
        }
        flow.count -= 1;
        flow.bytes -= item.bytes;
        self.requests -= 1;
        self.bytes -= item.bytes;
        if flow.count == 0 {
            self.fairness.deactivate(f, flow);
            flow.queue.clear();
            flow.idle_since = now;
        } else {
            self.fairness.head_changed(f, flow);
        }
    }

    /// Drops flows that have been empty for at least `idle`.
    fn collect_idle(&mut self, now: Instant, idle: Duration) {
        for (f, slot) in self.flows.iter_mut().enumerate() {
            let Some(flow) = slot else { continue };
            if flow.count == 0 && now.saturating_duration_since(flow.idle_since) >= idle {
                self.by_id.remove(&flow.id);
                *slot = None;
                self.free.push(u32::try_from(f).unwrap_or(u32::MAX));
            }
        }
    }
}

/// The flow controller (sans-IO): time and pool saturation are passed in.
///
/// Dispatch is three-tier: strict priority across bands (highest first, gated per band by the usage limit
/// policy, with upstream's head-of-line stop unless disabled), then the band's fairness policy across flows,
/// then the band's ordering policy within the chosen flow. Each [`dispatch`](Self::dispatch) call is one
/// upstream dispatch cycle and releases at most one request.
///
/// A driver calls [`expire`](Self::expire) at [`next_deadline`](Self::next_deadline) (and before dispatching),
/// [`dispatch_while`](Self::dispatch_while) on every arrival, completion and saturation change, and
/// [`cancel`](Self::cancel) when a client goes away. The enqueue and dispatch-cycle latency histograms are the
/// driver's to time around these calls.
#[derive(Debug)]
pub struct FlowController {
    cfg: FlowConfig,
    items: Items,
    bands: Vec<Band>,
    /// Band indices, highest priority first.
    order: Vec<u32>,
    /// `(expiry, seq)` → slot, for TTL eviction.
    expiries: BTreeMap<OrderKey, u32>,
    seq: u64,
    requests: u64,
    bytes: u64,
    /// The latest time seen by any call.
    clock: Instant,
    next_gc: Instant,
}

impl FlowController {
    /// A controller with the given (validated) configuration; explicit bands are created up front, others
    /// on first use from the default band.
    pub fn new(cfg: FlowConfig) -> Result<Self, FlowConfigError> {
        cfg.validate()?;
        let mut c = FlowController {
            cfg,
            items: Items::default(),
            bands: Vec::new(),
            order: Vec::new(),
            expiries: BTreeMap::new(),
            seq: 0,
            requests: 0,
            bytes: 0,
            clock: Instant::ZERO,
            next_gc: Instant::ZERO,
        };
        let explicit: Vec<Priority> = c.cfg.bands.iter().map(|b| b.priority).collect();
        for p in explicit {
            c.band_index(p);
        }
        Ok(c)
    }

    /// The configuration.
    pub fn config(&self) -> &FlowConfig {
        &self.cfg
    }

    /// Requests queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.len() == 0
    }

    /// Bytes queued.
    pub fn queued_bytes(&self) -> u64 {
        self.bytes
    }

    /// True if request `id` is queued.
    pub fn contains(&self, id: u64) -> bool {
        self.items.contains_id(id)
    }

    fn observe(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
    }

    fn find_band(&self, priority: Priority) -> Result<usize, usize> {
        self.order.binary_search_by(|&b| priority.cmp(&self.bands[b as usize].cfg.priority))
    }

    fn band_index(&mut self, priority: Priority) -> usize {
        match self.find_band(priority) {
            Ok(pos) => self.order[pos] as usize,
            Err(pos) => {
                self.bands.push(Band::new(self.cfg.band_for(priority)));
                let b = self.bands.len() - 1;
                self.order.insert(pos, u32::try_from(b).unwrap_or(u32::MAX));
                b
            }
        }
    }

    /// Queues a request, or refuses it when a cap would be exceeded (checked in the order global requests,
    /// global bytes, band requests, band bytes; a cap of 0 is unlimited) or its id is already queued.
    pub fn enqueue(&mut self, req: QueuedRequest) -> Result<(), Rejected> {
        if self.items.contains_id(req.id) {
            return Err(Rejected::DuplicateId(req.id));
        }
        let over = |limit: u64, used: u64, add: u64| limit > 0 && used.saturating_add(add) > limit;
        if over(self.cfg.max_requests, self.requests, 1) {
            return Err(Rejected::GlobalCapacity { kind: LimitKind::Requests, limit: self.cfg.max_requests });
        }
        if over(self.cfg.max_bytes, self.bytes, req.bytes) {
            return Err(Rejected::GlobalCapacity { kind: LimitKind::Bytes, limit: self.cfg.max_bytes });
        }
        self.observe(req.enqueue_time);
        let b = self.band_index(req.priority);
        let band = &mut self.bands[b];
        if over(band.cfg.max_requests, band.requests, 1) {
            let limit = band.cfg.max_requests;
            return Err(Rejected::BandCapacity { priority: req.priority, kind: LimitKind::Requests, limit });
        }
        if over(band.cfg.max_bytes, band.bytes, req.bytes) {
            let limit = band.cfg.max_bytes;
            return Err(Rejected::BandCapacity { priority: req.priority, kind: LimitKind::Bytes, limit });
        }
        let ttl = req.ttl.filter(|t| !t.is_zero()).or(self.cfg.default_ttl);
        let expiry = ttl.map(|t| req.enqueue_time.saturating_add(t));
        let seq = self.seq;
        self.seq += 1;
        let key = band.cfg.ordering.key(req.enqueue_time, seq, expiry, req.slo_deadline);
        let f = band.flow_index(&req.fairness_id, self.clock);
        let slot = self.items.insert(Item {
            id: req.id,
            seq,
            band: u32::try_from(b).unwrap_or(u32::MAX),
            flow: f,
            bytes: req.bytes,
            enqueue_time: req.enqueue_time,
            expiry,
            key,
            est_tokens: req.est_tokens,
        });
        band.push(f, key, slot, req.bytes);
        if let Some(e) = expiry {
            self.expiries.insert((e, seq), slot);
        }
        self.requests += 1;
        self.bytes += req.bytes;
        Ok(())
    }

    /// Removes the item in `slot` from every structure; `popped` = its flow-queue entry is already gone.
    fn remove_slot(&mut self, slot: u32, popped: bool) -> Option<Item> {
        let item = self.items.remove(slot)?;
        if let Some(e) = item.expiry {
            self.expiries.remove(&(e, item.seq));
        }
        let clock = self.clock;
        if let Some(band) = self.bands.get_mut(item.band as usize) {
            band.detach(&item, &self.items, popped, clock);
        }
        self.requests -= 1;
        self.bytes -= item.bytes;
        Some(item)
    }

    /// Removes a queued request whose client went away (outcome [`Outcome::EvictedContextCancelled`]).
    /// Returns false if `id` is not queued.
    pub fn cancel(&mut self, id: u64) -> bool {
        match self.items.slot_of(id) {
            Some(slot) => self.remove_slot(slot, false).is_some(),
            None => false,
        }
    }

    /// Evicts every request whose TTL deadline is at or before `now` ([`Outcome::EvictedTTL`]), earliest
    /// deadline first, and collects flows idle longer than [`FlowConfig::flow_idle_gc`].
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, Outcome)> {
        self.observe(now);
        let mut out = Vec::new();
        while let Some((&(deadline, seq), &slot)) = self.expiries.first_key_value() {
            if deadline > now {
                break;
            }
            self.expiries.pop_first();
            if self.items.is_live(slot, seq)
                && let Some(item) = self.remove_slot(slot, false)
            {
                out.push((item.id, Outcome::EvictedTTL));
            }
        }
        if let Some(idle) = self.cfg.flow_idle_gc
            && now >= self.next_gc
        {
            for band in &mut self.bands {
                band.collect_idle(now, idle);
            }
            self.next_gc = now.saturating_add((idle / 4).max(Duration::from_secs(1)));
        }
        out
    }

    /// The earliest TTL deadline among queued requests: when the driver should next call
    /// [`expire`](Self::expire).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.expiries.first_key_value().map(|(k, _)| k.0)
    }

    /// Each band's saturation ceiling under the usage limit policy, highest priority first.
    pub fn ceilings(&self) -> Vec<(Priority, f64)> {
        let n = self.order.len();
        let policy = &self.cfg.usage_limit;
        self.order
            .iter()
            .enumerate()
            .map(|(rank, &b)| {
                let p = self.bands[b as usize].cfg.priority;
                (p, policy.ceiling(p, rank, n))
            })
            .collect()
    }

    /// Whether the band ranked `rank` (0 = highest) of `n` with `priority` is gated at `load`: the pool
    /// saturation reached the band's ceiling, or (below the highest band) the pool's in-flight requests per
    /// endpoint reached [`FlowConfig::batch_holdback`].
    fn gated(&self, priority: Priority, rank: usize, n: usize, load: PoolLoad) -> bool {
        let ceiling = self.cfg.usage_limit.ceiling(priority, rank, n);
        let saturated = load.saturation.is_nan() || load.saturation >= ceiling;
        let batch_full = rank > 0
            && self
                .cfg
                .batch_holdback
                .is_some_and(|limit| load.in_flight_per_endpoint.is_nan() || load.in_flight_per_endpoint >= limit);
        saturated || batch_full
    }

    /// One dispatch cycle at `load` (a bare `f64` is the pool saturation): walks the bands from the highest
    /// priority; a band is gated while `saturation >= ceiling` or, for every band but the highest, while the
    /// in-flight requests per endpoint are at [`FlowConfig::batch_holdback`]. A gated non-empty band ends the
    /// cycle when [`FlowConfig::head_of_line_blocking`] is set, otherwise the walk goes on. The first open
    /// non-empty band releases the head of the flow its fairness policy picks. Returns `None` when nothing
    /// may go.
    pub fn dispatch(&mut self, now: Instant, load: impl Into<PoolLoad>) -> Option<Dispatched> {
        let load = load.into();
        self.observe(now);
        let n = self.order.len();
        for rank in 0..n {
            let b = self.order[rank] as usize;
            let band = &self.bands[b];
            if band.requests == 0 {
                continue;
            }
            if self.gated(band.cfg.priority, rank, n, load) {
                if self.cfg.head_of_line_blocking {
                    return None;
                }
                continue;
            }
            if let Some(d) = self.dispatch_from(b, now) {
                return Some(d);
            }
        }
        None
    }

    fn dispatch_from(&mut self, b: usize, now: Instant) -> Option<Dispatched> {
        let band = &mut self.bands[b];
        let f = band.fairness.pick()?;
        let flow = band.flows.get_mut(f as usize)?.as_mut()?;
        let (_, slot) = flow.queue.head()?;
        let est = self.items.get(slot)?.est_tokens;
        band.fairness.charge(f, flow, est as f64);
        let fairness_id = flow.id.clone();
        flow.queue.pop(&self.items);
        let item = self.remove_slot(slot, true)?;
        Some(Dispatched {
            id: item.id,
            priority: self.bands[b].cfg.priority,
            fairness_id,
            bytes: item.bytes,
            queued_for: now.saturating_duration_since(item.enqueue_time),
            charged: est,
        })
    }

    /// Runs dispatch cycles until one releases nothing. `saturation` (the pool load, or just its saturation)
    /// is asked before each cycle and is given the request released by the previous cycle (`None` before the
    /// first), so a driver can account for the load it just added.
    pub fn dispatch_while<L: Into<PoolLoad>>(
        &mut self,
        now: Instant,
        mut saturation: impl FnMut(Option<&Dispatched>) -> L,
    ) -> Vec<Dispatched> {
        let mut out: Vec<Dispatched> = Vec::new();
        loop {
            let s = saturation(out.last());
            match self.dispatch(now, s) {
                Some(d) => out.push(d),
                None => return out,
            }
        }
    }

    /// Charges a flow's VTC counter with the actual usage of a served request, `input + w·output` weighted
    /// tokens, minus the estimate charged at dispatch ([`Dispatched::charged`]); an over-estimate is refunded.
    /// Returns false if the flow is unknown (e.g. already collected).
    pub fn on_served(
        &mut self,
        fairness_id: &str,
        priority: Priority,
        input_tokens: u64,
        output_tokens: u64,
        charged: u64,
    ) -> bool {
        let Ok(pos) = self.find_band(priority) else { return false };
        let band = &mut self.bands[self.order[pos] as usize];
        let Some(&f) = band.by_id.get(fairness_id) else { return false };
        let Some(flow) = band.flows.get_mut(f as usize).and_then(Option::as_mut) else { return false };
        let cost = input_tokens as f64 + self.cfg.output_token_weight * output_tokens as f64;
        band.fairness.charge(f, flow, cost - charged as f64);
        true
    }

    /// The VTC counter of a flow (weighted tokens served, as lifted), if the flow exists.
    pub fn flow_counter(&self, fairness_id: &str, priority: Priority) -> Option<f64> {
        let band = &self.bands[self.order[self.find_band(priority).ok()?] as usize];
        let f = *band.by_id.get(fairness_id)?;
        band.flows.get(f as usize)?.as_ref().map(|fl| fl.counter)
    }

    /// Evicts everything (shutdown): each queued id with [`Outcome::EvictedOther`], in enqueue order.
    pub fn drain(&mut self) -> Vec<(u64, Outcome)> {
        let mut ids: Vec<(u64, u64)> = self.items.iter().map(|i| (i.seq, i.id)).collect();
        ids.sort_unstable();
        ids.into_iter().filter(|&(_, id)| self.cancel(id)).map(|(_, id)| (id, Outcome::EvictedOther)).collect()
    }

    /// Queue occupancy per band and per flow (values of the queue size/bytes gauges).
    pub fn stats(&self) -> FlowStats {
        let mut s = FlowStats { requests: self.requests, bytes: self.bytes, ..Default::default() };
        for &b in &self.order {
            let band = &self.bands[b as usize];
            let p = band.cfg.priority;
            s.bands.push(BandStats {
                priority: p,
                requests: band.requests,
                bytes: band.bytes,
                flows: band.by_id.len(),
            });
            let start = s.flows.len();
            s.flows.extend(band.flows.iter().flatten().map(|fl| FlowQueueStats {
                fairness_id: fl.id.clone(),
                priority: p,
                requests: fl.count,
                bytes: fl.bytes,
            }));
            s.flows[start..].sort_by(|a, b| a.fairness_id.cmp(&b.fairness_id));
        }
        s
    }
}
