//! Metric specs: which series of a page an engine mapping reads.
//!
//! A spec is a PromQL instant selector restricted to what upstream's `core-metrics-extractor`
//! uses: `name` or `name{l1=v1, l2="v2"}`. Label values may be unquoted, double- or
//! single-quoted. Only `=` matchers are kept (`!=`, `=~`, `!~` parse but are ignored, as upstream
//! does), and labels starting with `__` are ignored, except `__name__="x"` which names the
//! metric when the selector has no name.
//!
//! igw extension: a spec *list* separates alternatives with `|` (outside quotes); the first
//! alternative that selects a sample wins. The built-in vLLM KV-usage spec uses it to fall back
//! from `vllm:kv_cache_usage_perc` to the older `vllm:gpu_cache_usage_perc`.

use std::fmt;
use std::str::FromStr;

use crate::text::{Exposition, Sample, is_valid_label_name, is_valid_metric_name, write_escaped_label_value};

/// Why a spec string could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The spec has no metric name.
    #[error("spec {0:?}: missing metric name")]
    MissingName(String),
    /// The metric name is not a valid Prometheus name.
    #[error("spec {0:?}: invalid metric name")]
    InvalidName(String),
    /// The label matcher list is malformed.
    #[error("spec {spec:?}: {reason}")]
    Syntax {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// One selector: a metric name plus labels that a sample must carry with equal values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricSpec {
    /// The sample name to look for.
    pub name: String,
    /// Required `(label, value)` pairs.
    pub labels: Vec<(String, String)>,
}

impl MetricSpec {
    /// A spec for `name` with no label requirements.
    pub fn named(name: impl Into<String>) -> Self {
        MetricSpec { name: name.into(), labels: Vec::new() }
    }

    /// True if `sample` has this spec's name and carries every required label.
    pub fn matches(&self, sample: &Sample) -> bool {
        sample.name == self.name && self.labels.iter().all(|(k, v)| sample.label(k) == Some(v.as_str()))
    }

    /// Upstream's selection rule: among matching samples, the one with the largest explicit
    /// timestamp (a missing timestamp counts as 0; ties keep the first, so without timestamps the
    /// first match wins; samples with timestamps below 0 are never chosen).
    pub fn select<'a>(&self, expo: &'a Exposition) -> Option<&'a Sample> {
        let mut best: Option<&Sample> = None;
        let mut best_ts = -1i64;
        for s in expo.samples_named(&self.name).filter(|s| self.matches(s)) {
            let ts = s.timestamp.unwrap_or(0);
            if ts > best_ts {
                best_ts = ts;
                best = Some(s);
            }
        }
        best
    }

    /// Among matching samples, the one with the largest value (ties and NaN keep the earlier).
    /// Used for the LoRA info metric, whose value is a timestamp.
    pub fn select_max_value<'a>(&self, expo: &'a Exposition) -> Option<&'a Sample> {
        let mut best: Option<&Sample> = None;
        for s in expo.samples_named(&self.name).filter(|s| self.matches(s)) {
            if best.is_none_or(|b| s.value > b.value) {
                best = Some(s);
            }
        }
        best
    }
}

impl fmt::Display for MetricSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.labels.is_empty() {
            f.write_str("{")?;
            for (i, (k, v)) in self.labels.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{k}=\"")?;
                write_escaped_label_value(f, v)?;
                f.write_str("\"")?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

impl FromStr for MetricSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        parse_one(s)
    }
}

/// Parses a spec list: empty (or all blanks) means "disabled"; otherwise `|`-separated specs.
pub fn parse_spec_list(s: &str) -> Result<Vec<MetricSpec>, SpecError> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    split_outside_quotes(s, '|').into_iter().map(parse_one).collect()
}

/// Renders a spec list back to the syntax [`parse_spec_list`] reads.
pub fn format_spec_list(specs: &[MetricSpec]) -> String {
    specs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | ")
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
        } else if c == '"' || c == '\'' {
            quote = Some(c);
        } else if c == sep {
            parts.push(s.get(start..i).unwrap_or_default());
            start = i + c.len_utf8();
        }
    }
    parts.push(s.get(start..).unwrap_or_default());
    parts
}

fn parse_one(spec: &str) -> Result<MetricSpec, SpecError> {
    let syntax = |reason| SpecError::Syntax { spec: spec.to_owned(), reason };
    let s = spec.trim();
    let (name, rest) = match s.find('{') {
        Some(i) => (s.get(..i).unwrap_or_default().trim(), s.get(i + 1..).unwrap_or_default()),
        None => (s, ""),
    };
    let mut name = name.to_owned();
    let mut labels = Vec::new();
    if s.contains('{') {
        let body = rest.trim_end().strip_suffix('}').ok_or_else(|| syntax("missing closing '}'"))?;
        for matcher in split_outside_quotes(body, ',') {
            let matcher = matcher.trim();
            if matcher.is_empty() {
                continue;
            }
            let op_at = matcher.find(['=', '!']).ok_or_else(|| syntax("label matcher without operator"))?;
            let label = matcher.get(..op_at).unwrap_or_default().trim();
            let after = matcher.get(op_at..).unwrap_or_default();
            let (op, raw) = ["!=", "=~", "!~", "="]
                .iter()
                .find_map(|op| after.strip_prefix(op).map(|r| (*op, r)))
                .ok_or_else(|| syntax("unknown label matcher operator"))?;
            if !is_valid_label_name(label) {
                return Err(syntax("invalid label name"));
            }
            let value = unquote(raw.trim()).ok_or_else(|| syntax("malformed label value"))?;
            if op != "=" {
                continue;
            }
            if label == "__name__" {
                if name.is_empty() {
                    name = value;
                }
                continue;
            }
            if label.starts_with("__") {
                continue;
            }
            labels.push((label.to_owned(), value));
        }
    }
    if name.is_empty() {
        return Err(SpecError::MissingName(spec.to_owned()));
    }
    if !is_valid_metric_name(&name) {
        return Err(SpecError::InvalidName(spec.to_owned()));
    }
    Ok(MetricSpec { name, labels })
}

/// Unquotes a label value: `"..."`/`'...'` with backslash escapes, or a bare word.
fn unquote(raw: &str) -> Option<String> {
    let mut chars = raw.chars();
    let q = match chars.next() {
        Some(q @ ('"' | '\'')) => q,
        _ => {
            let bare = raw.trim();
            return (!bare.contains(['"', '\'', '{', '}', '='])).then(|| bare.to_owned());
        }
    };
    let mut out = String::new();
    let mut escaped = false;
    for c in chars.by_ref() {
        if escaped {
            out.push(match c {
                'n' => '\n',
                't' => '\t',
                c => c,
            });
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == q {
            return chars.as_str().trim().is_empty().then_some(out);
        } else {
            out.push(c);
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::text::parse;

    fn spec(s: &str) -> MetricSpec {
        s.parse().unwrap()
    }

    #[test]
    fn parses_specs() {
        assert_eq!(spec("vllm:num_requests_waiting"), MetricSpec::named("vllm:num_requests_waiting"));
        let s = spec(" nv_trt_llm_request_metrics{request_type=waiting} ");
        assert_eq!(s.labels, vec![("request_type".into(), "waiting".into())]);
        let s = spec("m{a=\"x,y}\", b = 'q', c!=\"z\", __meta=\"1\",}");
        assert_eq!(s.labels, vec![("a".into(), "x,y}".into()), ("b".into(), "q".into())]);
        assert_eq!(spec("{__name__=\"foo\"}").name, "foo");
        assert_eq!(spec("m{}").labels, vec![]);
        assert!(matches!("".parse::<MetricSpec>(), Err(SpecError::MissingName(_))));
        assert!(matches!("9x".parse::<MetricSpec>(), Err(SpecError::InvalidName(_))));
        assert!(matches!("m{a=1".parse::<MetricSpec>(), Err(SpecError::Syntax { .. })));
        assert!(matches!("m{a}".parse::<MetricSpec>(), Err(SpecError::Syntax { .. })));
        assert!(matches!("m{a=\"x}".parse::<MetricSpec>(), Err(SpecError::Syntax { .. })));
    }

    #[test]
    fn display_round_trips() {
        for s in ["a", "a{b=\"c\"}", "m{a=\"x,\\\"y\",b=\"\\\\\"}"] {
            let p = spec(s);
            assert_eq!(spec(&p.to_string()), p);
        }
    }

    #[test]
    fn spec_lists() {
        assert!(parse_spec_list("  ").unwrap().is_empty());
        let l = parse_spec_list("a | b{x=\"p|q\"}").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].labels[0].1, "p|q");
        assert_eq!(parse_spec_list(&format_spec_list(&l)).unwrap(), l);
    }

    #[test]
    fn selection_rules() {
        let e = parse(b"m{a=\"1\"} 1\nm{a=\"1\",b=\"2\"} 2 50\nm{a=\"1\"} 3 40\nm{a=\"2\"} 4 99\nm{a=\"1\"} 5 -3\n");
        assert_eq!(spec("m{a=1}").select(&e).unwrap().value, 2.0);
        assert_eq!(spec("m{a=2}").select(&e).unwrap().value, 4.0);
        assert!(spec("m{a=3}").select(&e).is_none());
        let e = parse(b"m 1\nm 2\n");
        assert_eq!(spec("m").select(&e).unwrap().value, 1.0);
        assert_eq!(spec("m").select_max_value(&e).unwrap().value, 2.0);
    }
}
