//! "Nice" value axes (steps of 1, 2 or 5 × 10ⁿ) and their labels.

/// A value axis from 0 to `top` with a tick every `step`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Axis {
    /// The axis maximum (the last tick).
    pub top: f64,
    /// Distance between ticks.
    pub step: f64,
    /// Tick values, from 0 to `top`.
    pub ticks: Vec<f64>,
    /// One label per tick.
    pub labels: Vec<String>,
}

/// At most this many intervals, whatever floating point does.
const MAX_INTERVALS: usize = 12;

/// An axis covering `0..=max` with about five intervals. A non-finite, zero or negative `max`
/// (a panel with nothing to show) gives the axis 0..1.
pub(crate) fn nice_axis(max: f64) -> Axis {
    let max = if max.is_finite() && max > 1e-200 { max } else { 0.0 };
    let (top, step) = if max == 0.0 {
        (1.0, 0.2)
    } else {
        let raw = max / 5.0;
        let mag = 10f64.powi(raw.log10().floor() as i32);
        let norm = raw / mag;
        let mult = if norm <= 1.0 + 1e-9 {
            1.0
        } else if norm <= 2.0 + 1e-9 {
            2.0
        } else if norm <= 5.0 + 1e-9 {
            5.0
        } else {
            10.0
        };
        let step = mult * mag;
        let top = (max / step - 1e-9).ceil().max(1.0) * step;
        if top.is_finite() && step > 0.0 && step.is_finite() { (top, step) } else { (max, max / 5.0) }
    };
    let n = ((top / step).round() as usize).clamp(1, MAX_INTERVALS);
    let ticks: Vec<f64> = (0..=n).map(|i| i as f64 * step).collect();
    let labels = ticks.iter().map(|&v| format_tick(v, step, top)).collect();
    Axis { top, step, ticks, labels }
}

/// A tick label: plain below 10 000, then with a k / M / G suffix, scientific beyond 10¹⁵ or
/// below 10⁻³; as many decimals as the step needs, the same for every tick of an axis.
pub(crate) fn format_tick(v: f64, step: f64, top: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e15).contains(&top) {
        return format!("{v:.1e}");
    }
    let (unit, suffix) = if top >= 1e9 {
        (1e9, "G")
    } else if top >= 1e6 {
        (1e6, "M")
    } else if top >= 1e4 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let decimals = (-(step / unit).log10() - 1e-6).ceil().clamp(0.0, 6.0) as usize;
    format!("{:.*}{suffix}", decimals, v / unit)
}

/// A category label for an x value (QPS): integers without decimals, others with up to two,
/// scientific from 10⁹.
pub(crate) fn format_category(v: f64) -> String {
    if v.abs() >= 1e9 {
        return format!("{v:.1e}");
    }
    if v.fract() == 0.0 {
        return format!("{v:.0}");
    }
    let s = format!("{v:.2}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_one_two_or_five_and_the_top_covers_the_max() {
        for max in [0.3, 1.0, 7.0, 13.0, 99.0, 1690.0, 3.55e6, 50_300.0, 1e-2, 123_456_789.0] {
            let a = nice_axis(max);
            assert!(a.top >= max, "{max}: {a:?}");
            let m = a.step / 10f64.powi(a.step.log10().floor() as i32);
            assert!([1.0, 2.0, 5.0].iter().any(|x| (m - x).abs() < 1e-6), "{max}: step {}", a.step);
            assert!((3..=7).contains(&a.ticks.len()), "{max}: {a:?}");
            assert_eq!(a.ticks.len(), a.labels.len());
        }
    }

    #[test]
    fn labels_read_like_the_blog() {
        assert_eq!(nice_axis(3.55e6).labels, ["0", "1M", "2M", "3M", "4M"]);
        assert_eq!(nice_axis(2.2e6).labels, ["0", "0.5M", "1.0M", "1.5M", "2.0M", "2.5M"]);
        assert_eq!(nice_axis(1690.0).labels, ["0", "500", "1000", "1500", "2000"]);
        assert_eq!(nice_axis(50_300.0).labels, ["0", "20k", "40k", "60k"]);
        assert_eq!(nice_axis(0.9).labels, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(nice_axis(3e17).labels[1], "1.0e17");
        assert_eq!(nice_axis(4e-5).labels[1], "1.0e-5");
    }

    #[test]
    fn degenerate_maxima_give_the_unit_axis() {
        for max in [0.0, -5.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e-300] {
            assert_eq!(nice_axis(max).top, 1.0, "{max}");
        }
        let huge = nice_axis(f64::MAX);
        assert!(huge.top.is_finite() && huge.ticks.len() <= MAX_INTERVALS + 1);
    }

    #[test]
    fn categories_drop_needless_decimals() {
        assert_eq!(format_category(100.0), "100");
        assert_eq!(format_category(2.5), "2.5");
        assert_eq!(format_category(0.126), "0.13");
        assert_eq!(format_category(1e20), "1.0e20");
    }
}
