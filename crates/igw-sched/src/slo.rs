//! A request's latency objective: the SLO headers upstream's predicted-latency plugins read.
//!
//! `x-llm-d-slo-ttft-ms` and `x-llm-d-slo-tpot-ms` (the older `x-slo-ttft-ms` / `x-slo-tpot-ms`
//! are accepted when the new ones are absent): milliseconds, a positive number. A value that is
//! not one is ignored (the request is scheduled without that objective) and counted by the
//! request path; it never fails the request. An objective's targets (the gateway file's `slo`,
//! the `igw.dev/slo-*-ms` annotations) apply where the headers state none.

use igw_core::InferenceRequest;

use crate::latency::Prediction;

/// TTFT SLO header (llm-d).
pub const TTFT_HEADER: &str = "x-llm-d-slo-ttft-ms";
/// TPOT SLO header (llm-d).
pub const TPOT_HEADER: &str = "x-llm-d-slo-tpot-ms";
/// Older TTFT SLO header.
pub const TTFT_HEADER_OLD: &str = "x-slo-ttft-ms";
/// Older TPOT SLO header.
pub const TPOT_HEADER_OLD: &str = "x-slo-tpot-ms";

/// A request's latency objective, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Slo {
    /// Time to first token.
    pub ttft_s: Option<f64>,
    /// Time per output token.
    pub tpot_s: Option<f64>,
}

/// Milliseconds from a header value: a finite positive number.
pub fn parse_ms(v: &str) -> Option<f64> {
    let x: f64 = v.trim().parse().ok()?;
    (x.is_finite() && x > 0.0).then_some(x / 1000.0)
}

impl Slo {
    /// The objective `req` states: its headers, else (field by field) its InferenceObjective's
    /// targets.
    pub fn from_request(req: &InferenceRequest) -> Self {
        let ms = |new: &str, old: &str, goal: Option<u32>| {
            req.header(new)
                .or_else(|| req.header(old))
                .and_then(parse_ms)
                .or_else(|| goal.map(|g| f64::from(g) / 1000.0))
        };
        Slo {
            ttft_s: ms(TTFT_HEADER, TTFT_HEADER_OLD, req.goals.ttft_ms),
            tpot_s: ms(TPOT_HEADER, TPOT_HEADER_OLD, req.goals.tpot_ms),
        }
    }

    /// True when any objective is stated.
    pub fn is_set(&self) -> bool {
        self.ttft_s.is_some() || self.tpot_s.is_some()
    }

    /// True when `p` meets every stated objective.
    pub fn met_by(&self, p: &Prediction) -> bool {
        self.ttft_s.is_none_or(|s| p.ttft_s <= s) && self.tpot_s.is_none_or(|s| p.tpot_s <= s)
    }

    /// True when `p`, overrun as the endpoint's outcomes recently overran their predictions
    /// (95% of them), still meets every stated objective: what `cheapest` placement asks before
    /// packing a request onto an endpoint.
    pub fn surely_met_by(&self, p: &Prediction) -> bool {
        self.ttft_s.is_none_or(|s| p.ttft_s * p.ttft_overrun <= s)
            && self.tpot_s.is_none_or(|s| p.tpot_s * p.tpot_overrun <= s)
    }

    /// Which stated objectives an outcome missed: (TTFT, TPOT).
    pub fn missed(&self, ttft_s: Option<f64>, tpot_s: Option<f64>) -> (bool, bool) {
        let miss = |slo: Option<f64>, seen: Option<f64>| matches!((slo, seen), (Some(s), Some(x)) if x > s);
        (miss(self.ttft_s, ttft_s), miss(self.tpot_s, tpot_s))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn headers_new_names_win_and_bad_values_are_ignored() {
        let mut req = InferenceRequest::text("m", "hi");
        assert!(!Slo::from_request(&req).is_set());
        req.headers = vec![
            (TTFT_HEADER_OLD.into(), "900".into()),
            (TTFT_HEADER.into(), "250".into()),
            (TPOT_HEADER_OLD.into(), "20.5".into()),
        ];
        let s = Slo::from_request(&req);
        assert_eq!(s.ttft_s, Some(0.25));
        assert_eq!(s.tpot_s, Some(0.0205));
        for bad in ["", "-1", "0", "NaN", "inf", "fast"] {
            assert_eq!(parse_ms(bad), None, "{bad:?}");
        }
        assert_eq!(s.missed(Some(0.3), Some(0.01)), (true, false));
        assert_eq!(s.missed(None, None), (false, false));
    }

    #[test]
    fn the_objective_fills_what_the_headers_leave_out() {
        let mut req = InferenceRequest::text("m", "hi");
        req.goals.ttft_ms = Some(2_000);
        req.goals.tpot_ms = Some(50);
        assert_eq!(Slo::from_request(&req), Slo { ttft_s: Some(2.0), tpot_s: Some(0.05) });
        req.headers = vec![(TTFT_HEADER.into(), "300".into()), (TPOT_HEADER.into(), "bad".into())];
        assert_eq!(
            Slo::from_request(&req),
            Slo { ttft_s: Some(0.3), tpot_s: Some(0.05) },
            "header wins, bad falls back"
        );
    }
}
