//! Request signing for the manager API, shared by the server and `skychimpd manager`.
//!
//! ```text
//! X-Skychimp-Key: <key id>
//! X-Skychimp-Timestamp: <unix seconds>
//! X-Skychimp-Signature: v1=<hex HMAC-SHA256(secret, "v1\n" + timestamp + "\n" + METHOD + "\n"
//!                                            + path_and_query + "\n" + hex(SHA-256(body)))>
//! ```
//!
//! The server accepts a signature once (replay protection), within 300 s of its clock, for
//! any configured key id (several at once, for rotation), and compares in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How far a request's timestamp may be from the server's clock, in seconds.
pub const MAX_SKEW_SECS: i64 = 300;

/// The header names.
pub const KEY_HEADER: &str = "X-Skychimp-Key";
/// The timestamp header.
pub const TIMESTAMP_HEADER: &str = "X-Skychimp-Timestamp";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Skychimp-Signature";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The string that is signed.
pub fn canonical(timestamp: i64, method: &str, path_and_query: &str, body: &[u8]) -> String {
    format!(
        "v1\n{timestamp}\n{method}\n{path_and_query}\n{}",
        hex(&Sha256::digest(body))
    )
}

fn mac(secret: &[u8], message: &str) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(message.as_bytes());
    mac
}

/// The `X-Skychimp-Signature` value for a request.
pub fn sign(
    secret: &[u8],
    timestamp: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> String {
    let tag = mac(secret, &canonical(timestamp, method, path_and_query, body))
        .finalize()
        .into_bytes();
    format!("v1={}", hex(&tag))
}

/// The one spelling of a signature header that [`verify`] accepts in several (hex digits in
/// either case, space around it): what the replay store must key on, or each spelling of
/// one captured request would be a first use.
pub fn canonical_signature(signature: &str) -> String {
    signature.trim().to_ascii_lowercase()
}

/// Whether `signature` (the header's value) is right for this request, in constant time.
pub fn verify(
    secret: &[u8],
    signature: &str,
    timestamp: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> bool {
    let Some(hex_tag) = signature.strip_prefix("v1=") else {
        return false;
    };
    // Hex digits only: `u8::from_str_radix` would also take a sign (`+f`), one more
    // spelling of the same tag.
    if hex_tag.len() != 64 || !hex_tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let mut tag = [0u8; 32];
    for (i, byte) in tag.iter_mut().enumerate() {
        match u8::from_str_radix(&hex_tag[2 * i..2 * i + 2], 16) {
            Ok(b) => *byte = b,
            Err(_) => return false,
        }
    }
    mac(secret, &canonical(timestamp, method, path_and_query, body))
        .verify_slice(&tag)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed vector, also reproduced by the README's openssl recipe.
    #[test]
    fn known_vector() {
        let sig = sign(b"s3cret", 1_800_000_000, "GET", "/v1/stats", b"");
        assert_eq!(
            canonical(1_800_000_000, "GET", "/v1/stats", b""),
            "v1\n1800000000\nGET\n/v1/stats\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Computed independently with openssl (the README's recipe).
        assert_eq!(
            sig,
            "v1=0aa05f39f377f26e632d94364d410df7daa541aea3e14049ed900173f97a5095"
        );
        assert!(verify(
            b"s3cret",
            &sig,
            1_800_000_000,
            "GET",
            "/v1/stats",
            b""
        ));
        assert!(!verify(
            b"s3cret",
            &sig,
            1_800_000_001,
            "GET",
            "/v1/stats",
            b""
        ));
        assert!(!verify(
            b"other",
            &sig,
            1_800_000_000,
            "GET",
            "/v1/stats",
            b""
        ));
        assert!(!verify(
            b"s3cret",
            &sig,
            1_800_000_000,
            "POST",
            "/v1/stats",
            b""
        ));
        assert!(!verify(
            b"s3cret",
            &sig,
            1_800_000_000,
            "GET",
            "/v1/stats?x=1",
            b""
        ));
        assert!(!verify(
            b"s3cret",
            &sig,
            1_800_000_000,
            "GET",
            "/v1/stats",
            b"{}"
        ));
        assert!(!verify(
            b"s3cret",
            "v1=zz",
            1_800_000_000,
            "GET",
            "/v1/stats",
            b""
        ));
        assert!(!verify(
            b"s3cret",
            &sig.replace("v1=", "v2="),
            1_800_000_000,
            "GET",
            "/v1/stats",
            b""
        ));
    }
}
