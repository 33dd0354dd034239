//! Reading a model server's OpenAI model list (`GET /v1/models`): which models it serves.
//!
//! vLLM lists its served model name(s) and every LoRA adapter loaded on it (with `parent` set to
//! the base model), whether or not requests for the adapter are running; its `/metrics` name an
//! adapter only while requests for it run or wait. SGLang, TRT-LLM and the simulator answer the
//! same shape. Only `data[].id` is read; everything else is ignored.

use std::collections::BTreeSet;

use serde::Deserialize;

/// Why a model list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// The body is not an OpenAI model list (`{"data":[{"id":...},...]}`).
    #[error("not an OpenAI model list: {0}")]
    Malformed(#[from] serde_json::Error),
}

#[derive(Deserialize)]
struct List {
    data: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    id: String,
}

/// The model ids of a `/v1/models` body. Empty ids are skipped.
pub fn served_models(body: &[u8]) -> Result<BTreeSet<String>, ModelsError> {
    let list: List = serde_json::from_slice(body)?;
    Ok(list.data.into_iter().map(|e| e.id).filter(|id| !id.is_empty()).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vllm_lists_its_base_model_and_loaded_adapters() {
        let body = br#"{"object":"list","data":[
            {"id":"tiny","object":"model","root":"/m/tiny","parent":null,"max_model_len":1024,"permission":[{"id":"p"}]},
            {"id":"lora-a","object":"model","root":"/m/lora-a","parent":"tiny","max_model_len":null}]}"#;
        let got = served_models(body).unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["lora-a", "tiny"]);
    }

    #[test]
    fn other_bodies_are_errors() {
        for body in [&b""[..], b"{}", b"[]", b"{\"data\":{}}", b"{\"data\":[{\"name\":\"x\"}]}", b"<html>"] {
            assert!(served_models(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        assert!(served_models(b"{\"data\":[]}").unwrap().is_empty());
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the reader.
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = served_models(&body);
        }

        /// Any list of ids round-trips.
        #[test]
        fn listed_ids_are_read(ids in proptest::collection::vec("[a-z0-9/_.-]{1,12}", 0..6)) {
            let data: Vec<_> = ids.iter().map(|id| serde_json::json!({"id": id, "object": "model"})).collect();
            let body = serde_json::json!({"object": "list", "data": data}).to_string();
            let got = served_models(body.as_bytes()).unwrap();
            proptest::prop_assert_eq!(got, ids.into_iter().collect::<BTreeSet<_>>());
        }
    }
}
