//! Model rewrite and traffic splitting, and writing the client's model name back into responses.
//!
//! The target model is the `x-gateway-model-name-rewrite` header when set, else the model the
//! client asked for; an InferenceModelRewrite rule matching the client's model then overrides it
//! with a weighted draw. (Legacy InferenceModel target models reach the datastore as rewrites.)
//! Responses name the target model; [`ModelNameRestorer`] puts the client's name back, also
//! across chunk boundaries of a streamed response.

use std::borrow::Cow;

use bytes::Bytes;
use igw_core::Snapshot;
use serde_json::{Map, Value};

use crate::error::RequestError;

/// Where the target model came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewriteSource {
    /// The client's model, unchanged.
    Unchanged,
    /// The `x-gateway-model-name-rewrite` header.
    Header,
    /// An InferenceModelRewrite rule (weighted draw).
    Rule,
}

/// The outcome of model resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRewriteDecision {
    /// The model the client asked for.
    pub incoming: String,
    /// The model the request is sent to.
    pub target: String,
    /// Where `target` came from.
    pub source: RewriteSource,
    /// The InferenceModelRewrite whose rule decided, when one did.
    pub rule_name: Option<String>,
}

impl ModelRewriteDecision {
    /// True if the target differs from the client's model (the body must be rewritten, and the
    /// response's model name written back).
    pub fn is_rewritten(&self) -> bool {
        self.incoming != self.target
    }
}

/// Resolves the target model for a client model `incoming`: the rewrite `header` if non-empty,
/// else `incoming`; then a rewrite rule for `incoming` in `snapshot` (exact rules before generic
/// ones, oldest first) overrides it with a target drawn by weight using `draw`.
pub fn resolve_target_model(
    incoming: &str,
    header: Option<&str>,
    snapshot: &Snapshot,
    draw: u64,
) -> ModelRewriteDecision {
    let (mut target, mut source) = match header.filter(|h| !h.is_empty()) {
        Some(h) => (h.to_string(), RewriteSource::Header),
        None => (incoming.to_string(), RewriteSource::Unchanged),
    };
    let mut rule_name = None;
    if let Some((id, picked)) = snapshot.rewrite_for(incoming).and_then(|(id, rule)| Some((id, rule.pick(draw)?))) {
        target = picked.model.clone();
        source = RewriteSource::Rule;
        rule_name = Some(id.name.clone());
    }
    ModelRewriteDecision { incoming: incoming.to_string(), target, source, rule_name }
}

/// Sets `model` to `target` in a parsed body and serialises it. Every other field is kept.
pub fn serialize_with_model(json: &mut Map<String, Value>, target: &str) -> Result<Vec<u8>, RequestError> {
    json.insert("model".to_string(), Value::String(target.to_string()));
    serde_json::to_vec(json).map_err(|e| RequestError::internal(format!("failed to serialise the request body: {e}")))
}

/// The two spellings of the target's `model` member and their replacements.
#[derive(Clone, Debug)]
struct Patterns {
    find: [Vec<u8>; 2],
    replace: [Vec<u8>; 2],
}

impl Patterns {
    /// `None` when there is nothing to write back (same name, or a name is empty).
    fn new(target: &str, incoming: &str) -> Option<Self> {
        if target.is_empty() || incoming.is_empty() || target == incoming {
            return None;
        }
        // JSON-escape the names so that quotes and backslashes in them match the wire form.
        let t = Value::String(target.to_string()).to_string();
        let i = Value::String(incoming.to_string()).to_string();
        let member = |sep: &str, name: &str| format!("\"model\"{sep}{name}").into_bytes();
        Some(Patterns { find: [member(":", &t), member(": ", &t)], replace: [member(":", &i), member(": ", &i)] })
    }

    /// Replaces every occurrence in `data`, appending to `out`. Unless `at_end`, stops before
    /// the first position where the rest of `data` could still grow into a match and returns
    /// that position; otherwise returns `data.len()`. Also says whether anything was replaced.
    fn scan(&self, data: &[u8], out: &mut Vec<u8>, at_end: bool) -> (usize, bool) {
        let (mut i, mut copied, mut changed) = (0, 0, false);
        while i < data.len() {
            if data[i] == b'"' {
                let rest = &data[i..];
                if let Some(k) = (0..2).find(|&k| rest.starts_with(&self.find[k])) {
                    out.extend_from_slice(&data[copied..i]);
                    out.extend_from_slice(&self.replace[k]);
                    i += self.find[k].len();
                    copied = i;
                    changed = true;
                    continue;
                }
                if !at_end && self.find.iter().any(|f| f.starts_with(rest)) {
                    out.extend_from_slice(&data[copied..i]);
                    return (i, changed);
                }
            }
            i += 1;
        }
        out.extend_from_slice(&data[copied..]);
        (data.len(), changed)
    }
}

/// Writes the client's model name back into a complete response body: every
/// `"model":"<target>"` (and `"model": "<target>"`) becomes the same member naming `incoming`.
/// Borrowed when nothing changes.
pub fn rewrite_model_back<'a>(body: &'a [u8], target: &str, incoming: &str) -> Cow<'a, [u8]> {
    let Some(p) = Patterns::new(target, incoming) else { return Cow::Borrowed(body) };
    let mut out = Vec::with_capacity(body.len());
    match p.scan(body, &mut out, true) {
        (_, true) => Cow::Owned(out),
        (_, false) => Cow::Borrowed(body),
    }
}

/// Streaming form of [`rewrite_model_back`] for chunked responses.
///
/// A chunk that ends in what may be the start of a `model` member keeps that tail (at most the
/// pattern length minus one byte) until the next chunk shows whether it matches; feed every
/// chunk to [`push`](Self::push) and call [`finish`](Self::finish) at end of stream. The
/// concatenated output equals [`rewrite_model_back`] over the whole body, however it was split.
/// Chunks pass through without copying when nothing is replaced or held.
#[derive(Clone, Debug, Default)]
pub struct ModelNameRestorer {
    patterns: Option<Patterns>,
    pending: Vec<u8>,
}

impl ModelNameRestorer {
    /// A restorer for responses naming `target` that the client knows as `incoming`. Inactive
    /// (pure pass-through) when the names are equal or either is empty.
    pub fn new(target: &str, incoming: &str) -> Self {
        ModelNameRestorer { patterns: Patterns::new(target, incoming), pending: Vec::new() }
    }

    /// True if this restorer rewrites anything at all.
    pub fn is_active(&self) -> bool {
        self.patterns.is_some()
    }

    /// Rewrites one chunk; returns what may be sent now.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        let Some(p) = &self.patterns else { return chunk };
        if self.pending.is_empty() {
            if !chunk.contains(&b'"') {
                return chunk;
            }
            let mut out = Vec::with_capacity(chunk.len());
            let (consumed, changed) = p.scan(&chunk, &mut out, false);
            self.pending.extend_from_slice(&chunk[consumed..]);
            if !changed {
                return chunk.slice(..consumed);
            }
            return Bytes::from(out);
        }
        let mut data = std::mem::take(&mut self.pending);
        data.extend_from_slice(&chunk);
        let mut out = Vec::with_capacity(data.len());
        let (consumed, _) = p.scan(&data, &mut out, false);
        self.pending.extend_from_slice(&data[consumed..]);
        Bytes::from(out)
    }

    /// Ends the stream: returns whatever was held back.
    pub fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use igw_core::{ModelRewrite, ObjectRef, RewriteRule, TargetModel};
    use proptest::prelude::*;

    fn rule(matches: &[&str], targets: &[(&str, u32)]) -> RewriteRule {
        RewriteRule {
            matches: matches.iter().map(|s| s.to_string()).collect(),
            targets: targets.iter().map(|(m, w)| TargetModel { model: m.to_string(), weight: *w }).collect(),
        }
    }

    fn snapshot(rewrites: Vec<(&str, i64, RewriteRule)>) -> Snapshot {
        Snapshot {
            rewrites: rewrites
                .into_iter()
                .map(|(n, c, r)| ModelRewrite { id: ObjectRef::new("ns", n), created_unix: c, rules: vec![r] })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn precedence() {
        let empty = Snapshot::default();
        let d = resolve_target_model("m", None, &empty, 0);
        assert_eq!((d.target.as_str(), d.source, d.is_rewritten()), ("m", RewriteSource::Unchanged, false));
        let d = resolve_target_model("m", Some(""), &empty, 0);
        assert_eq!(d.source, RewriteSource::Unchanged);
        let d = resolve_target_model("m", Some("forced"), &empty, 0);
        assert_eq!((d.target.as_str(), d.source), ("forced", RewriteSource::Header));

        let snap = snapshot(vec![
            ("generic", 1, rule(&[], &[("g", 1)])),
            ("exact-new", 30, rule(&["m"], &[("new", 1)])),
            ("exact-old", 20, rule(&["m"], &[("old", 1)])),
        ]);
        // A rule overrides the header; exact beats generic; the oldest exact rule wins.
        let d = resolve_target_model("m", Some("forced"), &snap, 0);
        assert_eq!((d.incoming.as_str(), d.target.as_str(), d.source), ("m", "old", RewriteSource::Rule));
        assert_eq!(resolve_target_model("other", None, &snap, 0).target, "g");
        // The rule matches the client's model, not the header's.
        let snap = snapshot(vec![("r", 1, rule(&["forced"], &[("x", 1)]))]);
        assert_eq!(resolve_target_model("m", Some("forced"), &snap, 0).target, "forced");
    }

    #[test]
    fn weighted_split_statistics() {
        let snap = snapshot(vec![("split", 1, rule(&["m"], &[("a", 10), ("b", 30), ("c", 60)]))]);
        let mut counts = std::collections::BTreeMap::new();
        for draw in 0..10_000u64 {
            *counts.entry(resolve_target_model("m", None, &snap, draw).target).or_insert(0) += 1;
        }
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [("a".into(), 1000), ("b".into(), 3000), ("c".into(), 6000)]
        );
        // All weights unset: an equal split.
        let snap = snapshot(vec![("eq", 1, rule(&["m"], &[("a", 0), ("b", 0)]))]);
        let a = (0..1000u64).filter(|d| resolve_target_model("m", None, &snap, *d).target == "a").count();
        assert_eq!(a, 500);
    }

    #[test]
    fn reserialise_keeps_fields() {
        let mut json: Map<String, Value> =
            serde_json::from_str(r#"{"model":"m","prompt":"p","n":2,"x":{"y":[1,2.5]}}"#).unwrap();
        let out = serialize_with_model(&mut json, "t").unwrap();
        let back: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, serde_json::json!({"model":"t","prompt":"p","n":2,"x":{"y":[1,2.5]}}));
    }

    #[test]
    fn whole_body_rewrite_back() {
        let body = br#"{"id":"1","model":"t","choices":[],"x":{"model": "t"},"y":"model:t","z":{"model":"tt"}}"#;
        let out = rewrite_model_back(body, "t", "client");
        assert_eq!(
            &*out,
            br#"{"id":"1","model":"client","choices":[],"x":{"model": "client"},"y":"model:t","z":{"model":"tt"}}"#
        );
        assert!(matches!(rewrite_model_back(body, "t", "t"), Cow::Borrowed(_)));
        assert!(matches!(rewrite_model_back(body, "", "x"), Cow::Borrowed(_)));
        assert!(matches!(rewrite_model_back(b"{}", "t", "c"), Cow::Borrowed(_)));
        // Names are matched in their JSON-escaped form.
        let out = rewrite_model_back(br#"{"model":"a\"b"}"#, "a\"b", "c");
        assert_eq!(&*out, br#"{"model":"c"}"#);
    }

    fn stream(chunks: &[&[u8]], target: &str, incoming: &str) -> Vec<u8> {
        let mut r = ModelNameRestorer::new(target, incoming);
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&r.push(Bytes::copy_from_slice(c)));
        }
        out.extend_from_slice(&r.finish());
        out
    }

    #[test]
    fn streaming_rewrite_back_at_every_split() {
        let body: &[u8] = b"data: {\"model\":\"llama-lora\",\"choices\":[{\"text\":\"\\\"model\\\"\"}]}\n\n\
            data: {\"model\": \"llama-lora\",\"usage\":null}\n\ndata: {\"model\":\"llama-lor\"}\n\ndata: [DONE]\n\n";
        let want = rewrite_model_back(body, "llama-lora", "client").into_owned();
        assert!(want.windows(6).filter(|w| w == b"client").count() == 2);
        for i in 0..=body.len() {
            assert_eq!(stream(&[&body[..i], &body[i..]], "llama-lora", "client"), want, "split at {i}");
            for j in i..=body.len() {
                assert_eq!(stream(&[&body[..i], &body[i..j], &body[j..]], "llama-lora", "client"), want);
            }
        }
    }

    #[test]
    fn streaming_holds_little_and_passes_through() {
        let mut r = ModelNameRestorer::new("target", "in");
        let out = r.push(Bytes::from_static(b"abc \"mod"));
        assert_eq!(&out[..], b"abc ");
        assert_eq!(&r.finish()[..], b"\"mod");
        let mut off = ModelNameRestorer::new("same", "same");
        assert!(!off.is_active());
        let chunk = Bytes::from_static(b"\"model\":\"same\"");
        assert_eq!(off.push(chunk.clone()), chunk);
        assert!(off.finish().is_empty());
    }

    proptest! {
        #[test]
        fn streaming_equals_whole(
            body in proptest::collection::vec(prop_oneof![
                Just(b"\"model\":\"t1\"".to_vec()), Just(b"\"model\": \"t1\"".to_vec()), Just(b"\"mo".to_vec()),
                Just(b"\"".to_vec()), proptest::collection::vec(any::<u8>(), 0..8)
            ], 0..12),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let body: Vec<u8> = body.concat();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([body.len()]) {
                chunks.push(&body[prev..c]);
                prev = c;
            }
            let want = rewrite_model_back(&body, "t1", "client-model").into_owned();
            prop_assert_eq!(stream(&chunks, "t1", "client-model"), want);
        }
    }
}
