//! Kubernetes resource quantities (`1Gi`, `500M`, `5000`) and Go durations (`30s`, `500ms`, `1m`), the two
//! scalar formats of the `flowControl` config section. Durations are parsed by
//! [`igw_core::units::parse_go_duration`], shared with the command line.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use thiserror::Error;

/// Why a quantity or a duration string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ParseError {
    /// A Kubernetes quantity that is malformed, negative or out of the `u64` range.
    #[error("invalid quantity {input:?}: {reason}")]
    Quantity {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A Go duration that is malformed, negative or too large.
    #[error("invalid duration {input:?}: {reason}")]
    Duration {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

fn qerr(input: &str, reason: &'static str) -> ParseError {
    ParseError::Quantity { input: input.to_string(), reason }
}

/// Parses a Kubernetes quantity into a whole number, rounding a fractional result up (as
/// `resource.Quantity.Value()` does).
///
/// Accepted: an optional `+`, a decimal number (`5000`, `1.5`, `.5`), then nothing, a binary suffix
/// (`Ki Mi Gi Ti Pi Ei`), a decimal suffix (`n u m k M G T P E`) or a decimal exponent (`1e3`, `2E-1`).
/// Negative values and values above `u64::MAX` are errors.
pub fn parse_quantity(s: &str) -> Result<u64, ParseError> {
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.starts_with('-') {
        return Err(qerr(s, "negative"));
    }
    let num_len = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, suffix) = t.split_at(num_len);
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(qerr(s, "no digits"));
    }
    if frac_part.contains('.') {
        return Err(qerr(s, "more than one decimal point"));
    }
    let digits = int_part.trim_start_matches('0').len() + frac_part.len();
    if digits > 36 {
        return Err(qerr(s, "too many digits"));
    }
    let mut mantissa: u128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa * 10 + u128::from(b - b'0');
    }
    // value = mantissa * 2^bin * 10^dec / 10^frac_len
    let (bin, dec): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        other => match other.strip_prefix(['e', 'E']) {
            Some(exp) if !exp.is_empty() => {
                let e: i32 = exp.parse().map_err(|_| qerr(s, "bad exponent"))?;
                if !(-60..=60).contains(&e) {
                    return Err(qerr(s, "exponent out of range"));
                }
                (0, e)
            }
            _ => return Err(qerr(s, "unknown suffix")),
        },
    };
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| qerr(s, "too many digits"))?;
    let dec = dec - frac_len;
    let mut num = mantissa.checked_shl(bin).filter(|v| v >> bin == mantissa).ok_or_else(|| qerr(s, "out of range"))?;
    let mut den: u128 = 1;
    if dec >= 0 {
        num = num.checked_mul(10u128.pow(dec.unsigned_abs())).ok_or_else(|| qerr(s, "out of range"))?;
    } else if dec.unsigned_abs() > 38 {
        // Far below one unit: any non-zero value rounds up to 1.
        return Ok(u64::from(num > 0));
    } else {
        den = 10u128.pow(dec.unsigned_abs());
    }
    let value = num.div_ceil(den);
    u64::try_from(value).map_err(|_| qerr(s, "out of range"))
}

/// Parses a Go duration string (`time.ParseDuration`): a sequence of decimal numbers, each with a unit
/// among `ns us µs ms s m h` (`1h30m`, `1.5s`, `500ms`), or a bare `0`. Negative durations are errors.
///
/// The grammar is [`igw_core::units::parse_go_duration`]'s (the one parser); this wrapper reports
/// its error as [`ParseError::Duration`].
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    igw_core::units::parse_go_duration(s)
        .map_err(|igw_core::units::DurationError { input, reason }| ParseError::Duration { input, reason })
}

/// A non-negative Kubernetes quantity, deserialized from a string (`"1Gi"`) or a plain integer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(pub u64);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Kubernetes quantity such as 1Gi, 500M or 5000")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                parse_quantity(v).map(Quantity).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                u64::try_from(v).map(Quantity).map_err(|_| E::custom("quantity must not be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
                    Ok(Quantity(v.ceil() as u64))
                } else {
                    Err(E::custom("quantity must be a finite non-negative number"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A non-negative duration in Go's text format (`30s`, `500ms`, `1m`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, 500ms or 1m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                parse_duration(v).map(GoDuration).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                if v == 0 { Ok(GoDuration(Duration::ZERO)) } else { Err(E::custom("a duration needs a unit")) }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
                if v == 0 { Ok(GoDuration(Duration::ZERO)) } else { Err(E::custom("a duration needs a unit")) }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantity_examples() {
        assert_eq!(parse_quantity("5000").unwrap(), 5000);
        assert_eq!(parse_quantity("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_quantity("500M").unwrap(), 500_000_000);
        assert_eq!(parse_quantity("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_quantity("1.5Ki").unwrap(), 1536);
        assert_eq!(parse_quantity("0.5").unwrap(), 1, "rounds up");
        assert_eq!(parse_quantity("1500m").unwrap(), 2);
        assert_eq!(parse_quantity("1e3").unwrap(), 1000);
        assert_eq!(parse_quantity("12E-1").unwrap(), 2);
        assert_eq!(parse_quantity("+.5k").unwrap(), 500);
        assert_eq!(parse_quantity("16Ei").unwrap_err(), qerr("16Ei", "out of range"));
        assert_eq!(parse_quantity("15Ei").unwrap(), 15 << 60);
        for bad in ["", "-1", "1.2.3", "1Qi", "Ki", ".", "1e", "1e999", "1 Gi"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn duration_examples() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2µs").unwrap(), Duration::from_micros(2));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "30", "-1s", "1x", "s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(
            parse_duration("1x").unwrap_err(),
            ParseError::Duration { input: "1x".into(), reason: "unknown unit" },
            "igw-core's error, as this module's type"
        );
        assert_eq!(parse_duration("30").unwrap_err().to_string(), "invalid duration \"30\": missing unit");
    }

    proptest! {
        #[test]
        fn plain_integers_roundtrip(n in any::<u64>()) {
            prop_assert_eq!(parse_quantity(&n.to_string()).unwrap(), n);
        }

        #[test]
        fn binary_and_decimal_suffixes(k in 0u64..1_000_000, i in 0usize..6) {
            let bin = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][i];
            let v = parse_quantity(&format!("{k}{bin}"));
            match k.checked_mul(1u64 << (10 * (i as u32 + 1))) {
                Some(want) => prop_assert_eq!(v.unwrap(), want),
                None => prop_assert!(v.is_err()),
            }
            let dec = ["k", "M", "G", "T", "P", "E"][i];
            let v = parse_quantity(&format!("{k}{dec}"));
            match k.checked_mul(10u64.pow(3 * (i as u32 + 1))) {
                Some(want) => prop_assert_eq!(v.unwrap(), want),
                None => prop_assert!(v.is_err()),
            }
        }

        #[test]
        fn fractions_round_up(whole in 0u64..1_000_000, milli in 0u64..1000) {
            let v = parse_quantity(&format!("{whole}.{milli:03}")).unwrap();
            prop_assert_eq!(v, whole + u64::from(milli > 0));
            let v = parse_quantity(&format!("{whole}.{milli:03}k")).unwrap();
            prop_assert_eq!(v, whole * 1000 + milli);
        }

        #[test]
        fn never_panics(s in "[-+0-9.eEkKMGTPimnu ]{0,12}") {
            let _ = parse_quantity(&s);
            let _ = parse_duration(&s);
        }

        #[test]
        fn durations_roundtrip(ms in 0u64..10_000_000) {
            prop_assert_eq!(parse_duration(&format!("{ms}ms")).unwrap(), Duration::from_millis(ms));
            prop_assert_eq!(parse_duration(&format!("{}s", ms as f64 / 1000.0)).unwrap(), Duration::from_millis(ms));
        }
    }
}
