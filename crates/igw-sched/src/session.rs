//! Session affinity (`session-affinity-scorer`, llm-d's `encoded_endpoint_header` mode): the
//! gateway answers each response with `x-session-token: base64("<namespace>/<pod>")` naming the
//! pod that served it; a client that sends the token back has its next request scored 1.0 on that
//! pod and 0 elsewhere, so a conversation stays where its KV cache is while other scorers still
//! weigh load. The token is plain standard base64 (padded), as upstream's.

/// Request and response header carrying the session token.
pub const SESSION_TOKEN_HEADER: &str = "x-session-token";

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The token for the pod `namespace/pod`.
pub fn encode_token(namespace: &str, pod: &str) -> String {
    encode(format!("{namespace}/{pod}").as_bytes())
}

/// The `namespace/pod` a token names, if it is valid base64 of UTF-8 text.
pub fn decode_token(token: &str) -> Option<String> {
    String::from_utf8(decode(token.trim())?).ok()
}

fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.is_empty() || !s.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (ci, chunk) in s.chunks(4).enumerate() {
        let last = ci + 1 == s.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = if i >= 4 - pad { 0 } else { value(c)? };
            n = (n << 6) | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        assert_eq!(encode(b""), "");
        assert_eq!(encode(b"f"), "Zg==");
        assert_eq!(encode(b"fo"), "Zm8=");
        assert_eq!(encode(b"foo"), "Zm9v");
        assert_eq!(encode_token("default", "vllm-0"), "ZGVmYXVsdC92bGxtLTA=");
        assert_eq!(decode_token("ZGVmYXVsdC92bGxtLTA=").as_deref(), Some("default/vllm-0"));
        for bad in ["", "Zg", "Zg=a", "Z===", "Zm9v!", "=Zm9", "Zg==Zg=="] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(decode(&encode(&bytes)).unwrap_or_default(), bytes);
        }

        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = decode_token(&s);
        }
    }
}
