//! Helpers for Envoy metadata (`google.protobuf.Struct`) and header values.

use std::borrow::Cow;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, Metadata, header_value_option};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use igw_request::EndpointSubset;
use igw_request::headers::{
    DESTINATION_ENDPOINT, DESTINATION_ENDPOINT_SERVED, ENVOY_LB_NAMESPACE, SUBSET_HINT_KEY, SUBSET_HINT_NAMESPACE,
};

/// A string `Value`.
pub fn string_value(s: impl Into<String>) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}

/// The top-level dynamic metadata carrying the destination:
/// `{"envoy.lb": {"x-gateway-destination-endpoint": destination}}`.
pub fn destination_metadata(destination: &str) -> Struct {
    let inner = Struct { fields: [(DESTINATION_ENDPOINT.to_string(), string_value(destination))].into() };
    Struct { fields: [(ENVOY_LB_NAMESPACE.to_string(), Value { kind: Some(Kind::StructValue(inner)) })].into() }
}

/// The string at `namespace` / `key` of `metadata`, if there is one.
pub fn metadata_string<'a>(metadata: &'a Metadata, namespace: &str, key: &str) -> Option<&'a str> {
    match metadata.filter_metadata.get(namespace)?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

/// The subset hint (`envoy.lb.subset_hint` / `x-gateway-destination-endpoint-subset`), as a list
/// of strings or one comma-separated string; non-string list elements are ignored. `None` when
/// the key is absent or neither a list nor a string.
pub fn subset_hint(metadata: &Metadata) -> Option<EndpointSubset> {
    let value = metadata.filter_metadata.get(SUBSET_HINT_NAMESPACE)?.fields.get(SUBSET_HINT_KEY)?;
    match value.kind.as_ref()? {
        Kind::ListValue(list) => Some(EndpointSubset::from_list(list.values.iter().filter_map(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        }))),
        Kind::StringValue(s) => Some(EndpointSubset::from_comma_separated(s)),
        _ => None,
    }
}

/// The endpoint the gateway reports as having served the response
/// (`envoy.lb` / `x-gateway-destination-endpoint-served`); the first one if it is a list.
pub fn served_endpoint(metadata: &Metadata) -> Option<SocketAddr> {
    let s = metadata_string(metadata, ENVOY_LB_NAMESPACE, DESTINATION_ENDPOINT_SERVED)?;
    s.split(',').next()?.trim().parse().ok()
}

/// A header's value: `raw_value` when set (what Envoy sends today), else `value`.
pub fn header_value(h: &HeaderValue) -> Cow<'_, str> {
    if h.raw_value.is_empty() { Cow::Borrowed(h.value.as_str()) } else { String::from_utf8_lossy(&h.raw_value) }
}

/// A `set_headers` entry that adds the header or overwrites an existing one, value in
/// `raw_value`.
pub fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: String::new(), raw_value: value.as_bytes().to_vec() }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::ListValue;

    fn md(namespace: &str, key: &str, v: Value) -> Metadata {
        Metadata {
            filter_metadata: [(namespace.to_string(), Struct { fields: [(key.to_string(), v)].into() })].into(),
            ..Default::default()
        }
    }

    #[test]
    fn destination_shape() {
        let s = destination_metadata("10.0.0.1:8000");
        let Some(Kind::StructValue(lb)) = &s.fields["envoy.lb"].kind else { panic!("not a struct") };
        assert_eq!(lb.fields["x-gateway-destination-endpoint"], string_value("10.0.0.1:8000"));
    }

    #[test]
    fn subset_forms() {
        let list = Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![string_value("10.0.0.1:8000"), Value { kind: Some(Kind::NumberValue(1.0)) }],
            })),
        };
        let s = subset_hint(&md(SUBSET_HINT_NAMESPACE, SUBSET_HINT_KEY, list)).unwrap();
        assert_eq!(s.entries().len(), 1);
        let s =
            subset_hint(&md(SUBSET_HINT_NAMESPACE, SUBSET_HINT_KEY, string_value("10.0.0.1:1,10.0.0.2:2"))).unwrap();
        assert_eq!(s.entries().len(), 2);
        let empty = Value { kind: Some(Kind::ListValue(ListValue::default())) };
        assert!(subset_hint(&md(SUBSET_HINT_NAMESPACE, SUBSET_HINT_KEY, empty)).unwrap().is_empty());
        assert!(subset_hint(&md(SUBSET_HINT_NAMESPACE, "other", string_value("x"))).is_none());
        assert!(subset_hint(&Metadata::default()).is_none());
    }

    #[test]
    fn served_and_headers() {
        let m = md(ENVOY_LB_NAMESPACE, DESTINATION_ENDPOINT_SERVED, string_value("10.0.0.3:8000"));
        assert_eq!(served_endpoint(&m), Some("10.0.0.3:8000".parse().unwrap()));
        assert_eq!(served_endpoint(&Metadata::default()), None);
        let h = HeaderValue { key: "a".into(), value: "v".into(), raw_value: vec![] };
        assert_eq!(header_value(&h), "v");
        let h = HeaderValue { key: "a".into(), value: "v".into(), raw_value: b"raw".to_vec() };
        assert_eq!(header_value(&h), "raw");
        let o = set_header("x", "1");
        assert_eq!(o.header.unwrap().raw_value, b"1");
        assert_eq!(o.append_action, 2);
    }
}
