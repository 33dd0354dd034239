//! Ordering policies: the sort key of a request within its flow (and, for global-strict fairness, across the
//! band's flow heads).

use igw_core::Instant;

use super::config::OrderingPolicy;

/// A request's place in line: smaller is served first. The second field is the controller's enqueue
/// sequence number, which is unique, so keys never tie and FCFS breaks deadline ties.
pub(crate) type OrderKey = (Instant, u64);

/// The deadline used for requests that have none ("far future").
pub(crate) const FAR_FUTURE: Instant = Instant::from_nanos(u64::MAX);

impl OrderingPolicy {
    /// True if the flow queue must be kept sorted by key (a deadline); false if arrival order is the order.
    pub(crate) fn is_keyed(self) -> bool {
        !matches!(self, OrderingPolicy::Fcfs)
    }

    /// The key of a request.
    ///
    /// - FCFS: the enqueue time.
    /// - EDF: `enqueue + effective TTL` (`expiry`), or far future without a TTL.
    /// - SLO deadline: the request's own deadline (arrival + `x-slo-ttft-ms`), or far future without one.
    pub(crate) fn key(
        self,
        enqueue_time: Instant,
        seq: u64,
        expiry: Option<Instant>,
        slo_deadline: Option<Instant>,
    ) -> OrderKey {
        let t = match self {
            OrderingPolicy::Fcfs => enqueue_time,
            OrderingPolicy::Edf => expiry.unwrap_or(FAR_FUTURE),
            OrderingPolicy::SloDeadline => slo_deadline.unwrap_or(FAR_FUTURE),
        };
        (t, seq)
    }
}

/// The SLO deadline of a request that arrived at `arrival` with header `x-slo-ttft-ms: value`: `None` if the
/// header is absent or not a non-negative number of milliseconds.
pub fn slo_deadline_from_header(arrival: Instant, value: Option<&str>) -> Option<Instant> {
    let ms: f64 = value?.trim().parse().ok()?;
    if !(ms.is_finite() && ms >= 0.0) {
        return None;
    }
    Some(arrival.saturating_add(std::time::Duration::try_from_secs_f64(ms / 1000.0).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let t = Instant::from_millis(10);
        let e = Some(Instant::from_millis(50));
        let s = Some(Instant::from_millis(30));
        assert_eq!(OrderingPolicy::Fcfs.key(t, 1, e, s), (t, 1));
        assert_eq!(OrderingPolicy::Edf.key(t, 1, e, s), (Instant::from_millis(50), 1));
        assert_eq!(OrderingPolicy::Edf.key(t, 1, None, s), (FAR_FUTURE, 1));
        assert_eq!(OrderingPolicy::SloDeadline.key(t, 1, e, s), (Instant::from_millis(30), 1));
        assert_eq!(OrderingPolicy::SloDeadline.key(t, 1, e, None), (FAR_FUTURE, 1));
    }

    #[test]
    fn slo_header() {
        let t = Instant::from_millis(100);
        assert_eq!(slo_deadline_from_header(t, Some("250")), Some(Instant::from_millis(350)));
        assert_eq!(slo_deadline_from_header(t, Some(" 1.5 ")), Some(Instant::from_nanos(101_500_000)));
        assert_eq!(slo_deadline_from_header(t, Some("-1")), None);
        assert_eq!(slo_deadline_from_header(t, Some("1e300")), None);
        assert_eq!(slo_deadline_from_header(t, Some("soon")), None);
        assert_eq!(slo_deadline_from_header(t, None), None);
    }
}
