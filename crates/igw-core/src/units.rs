//! Scalar formats shared by the configuration files and the command line: Go durations (`30s`,
//! `500ms`, `1h30m`), as upstream's flags and the `flowControl` config section write them.
//!
//! [`parse_go_duration`] is the one parser. It fits clap's `value_parser` directly
//! (`#[arg(value_parser = igw_core::units::parse_go_duration)]`); `igw_sched::flow::quantity`
//! re-exports it as `parse_duration` for the config loaders.

use std::time::Duration;

use thiserror::Error;

/// Why a Go duration string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn err(input: &str, reason: &'static str) -> DurationError {
    DurationError { input: input.to_string(), reason }
}

/// Parses a Go duration string (`time.ParseDuration`): a sequence of decimal numbers, each with a unit
/// among `ns us µs ms s m h` (`1h30m`, `1.5s`, `500ms`), or a bare `0`. Surrounding whitespace and a
/// leading `+` are accepted; negative durations are errors, and so is anything above `u64::MAX`
/// nanoseconds (about 584 years). Fractions are truncated to whole nanoseconds, as Go does.
///
/// ```
/// use std::time::Duration;
/// use igw_core::units::parse_go_duration;
///
/// assert_eq!(parse_go_duration("1h30m").unwrap(), Duration::from_secs(5400));
/// assert_eq!(parse_go_duration("1.5s").unwrap(), Duration::from_millis(1500));
/// assert_eq!(
///     parse_go_duration("30").unwrap_err().to_string(),
///     "invalid duration \"30\": missing unit"
/// );
/// ```
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.starts_with('-') {
        return Err(err(s, "negative"));
    }
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(err(s, "empty"));
    }
    let mut rest = t;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(err(s, "expected a number"));
        }
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(err(s, "missing unit")),
            _ => return Err(err(s, "unknown unit")),
        };
        if int_part.len() > 20 {
            return Err(err(s, "too large"));
        }
        let int: u128 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| err(s, "bad number"))? };
        let mut part = int.checked_mul(nanos_per).ok_or_else(|| err(s, "too large"))?;
        // Fractions are truncated to whole nanoseconds, as Go does.
        let mut scale = nanos_per;
        for b in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            part += u128::from(b - b'0') * scale;
        }
        total = total.checked_add(part).ok_or_else(|| err(s, "too large"))?;
        rest = next;
    }
    let nanos = u64::try_from(total).map_err(|_| err(s, "too large"))?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duration_examples() {
        assert_eq!(parse_go_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_go_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_go_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_go_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_go_duration("2µs").unwrap(), Duration::from_micros(2));
        assert_eq!(parse_go_duration("3us").unwrap(), Duration::from_micros(3));
        assert_eq!(parse_go_duration("7ns").unwrap(), Duration::from_nanos(7));
        assert_eq!(parse_go_duration(" +0 ").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_go_duration("1.0000000009s").unwrap(), Duration::from_secs(1), "truncated to ns");
        for bad in ["", "30", "-1s", "1x", "s", "1.2.3s", "1s2"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn errors_name_the_input_and_the_reason() {
        let cases = [
            ("-1s", "negative"),
            ("", "empty"),
            ("30", "missing unit"),
            ("1x", "unknown unit"),
            ("s", "expected a number"),
            ("6000000h", "too large"),
            ("123456789012345678901s", "too large"),
        ];
        for (input, reason) in cases {
            assert_eq!(parse_go_duration(input).unwrap_err(), err(input, reason), "{input:?}");
        }
        assert_eq!(parse_go_duration("1x").unwrap_err().to_string(), "invalid duration \"1x\": unknown unit");
    }

    proptest! {
        #[test]
        fn never_panics(s in "[-+0-9.smhnuµ ]{0,12}") {
            let _ = parse_go_duration(&s);
        }

        #[test]
        fn durations_roundtrip(ms in 0u64..10_000_000) {
            prop_assert_eq!(parse_go_duration(&format!("{ms}ms")).unwrap(), Duration::from_millis(ms));
            prop_assert_eq!(parse_go_duration(&format!("{}s", ms as f64 / 1000.0)).unwrap(), Duration::from_millis(ms));
        }

        #[test]
        fn sums_of_parts(h in 0u64..100, m in 0u64..60, s in 0u64..60) {
            let want = Duration::from_secs(h * 3600 + m * 60 + s);
            prop_assert_eq!(parse_go_duration(&format!("{h}h{m}m{s}s")).unwrap(), want);
        }
    }
}
