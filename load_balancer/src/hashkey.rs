//! Where a request's id comes from (`--hash-key`), and how a key becomes an integer.
//!
//! Pure: the request is seen through [`KeySource`], so the rules are tested without
//! HTTP and the proxy supplies the one implementation that reads a real request.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rand::Rng;

/// The part of a request a hash key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A random 6-digit id per request: spreads load, keeps no affinity.
    Random,
    /// The value of a request header (name matched case-insensitively).
    Header(String),
    /// The value of a query-string parameter.
    Query(String),
    /// The value of a cookie.
    Cookie(String),
    /// The request path.
    Path,
    /// The client's IP address.
    ClientIp,
}

/// A view of a request, enough to find any kind of key in it.
pub trait KeySource {
    /// The first value of header `name` (lowercase), if present and valid text.
    fn header(&self, name: &str) -> Option<&str>;
    /// The raw query string, without `?`.
    fn query(&self) -> &str;
    /// The path, without the query string.
    fn path(&self) -> &str;
    /// The peer's address, when known.
    fn client_ip(&self) -> Option<IpAddr>;
}

impl HashKey {
    /// The request id to hash: the key's value as an integer, or a random 6-digit id
    /// when the key is `random` or missing from the request.
    pub fn request_id(&self, req: &impl KeySource) -> u64 {
        let found = match self {
            HashKey::Random => None,
            HashKey::Header(name) => req.header(name).map(key_to_id),
            HashKey::Query(name) => query_param(req.query(), name).map(key_to_id),
            HashKey::Cookie(name) => req
                .header("cookie")
                .and_then(|c| cookie(c, name))
                .map(key_to_id),
            HashKey::Path => Some(key_to_id(req.path())),
            HashKey::ClientIp => req.client_ip().map(|ip| key_to_id(&ip.to_string())),
        };
        found.unwrap_or_else(random_id)
    }
}

/// Why a `--hash-key` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown hash key '{0}': use random, header:NAME, query:NAME, cookie:NAME, path or client-ip"
)]
pub struct ParseHashKeyError(String);

impl FromStr for HashKey {
    type Err = ParseHashKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let named = |prefix: &str| {
            s.strip_prefix(prefix)
                .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
        };
        Ok(match s {
            "random" => HashKey::Random,
            "path" => HashKey::Path,
            "client-ip" => HashKey::ClientIp,
            _ => {
                if let Some(n) = named("header:") {
                    HashKey::Header(n.to_ascii_lowercase())
                } else if let Some(n) = named("query:") {
                    HashKey::Query(n.to_string())
                } else if let Some(n) = named("cookie:") {
                    HashKey::Cookie(n.to_string())
                } else {
                    return Err(ParseHashKeyError(s.to_string()));
                }
            }
        })
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::Random => f.write_str("random"),
            HashKey::Header(n) => write!(f, "header:{n}"),
            HashKey::Query(n) => write!(f, "query:{n}"),
            HashKey::Cookie(n) => write!(f, "cookie:{n}"),
            HashKey::Path => f.write_str("path"),
            HashKey::ClientIp => f.write_str("client-ip"),
        }
    }
}

/// A key as an integer: a decimal number is itself, anything else is its 64-bit
/// FNV-1a hash, which is stable across runs and machines (unlike std's `Hasher`s).
pub fn key_to_id(key: &str) -> u64 {
    key.parse::<u64>().unwrap_or_else(|_| fnv1a(key.as_bytes()))
}

/// A random 6-digit request id, as the design's clients send.
pub fn random_id() -> u64 {
    rand::thread_rng().gen_range(100_000..=999_999)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// The first value of `name` in a raw query string (not percent-decoded: the raw
/// text is as stable a key as the decoded one).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v.trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Req {
        headers: Vec<(&'static str, &'static str)>,
        query: &'static str,
        path: &'static str,
        ip: Option<IpAddr>,
    }

    impl KeySource for Req {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
        }
        fn query(&self) -> &str {
            self.query
        }
        fn path(&self) -> &str {
            self.path
        }
        fn client_ip(&self) -> Option<IpAddr> {
            self.ip
        }
    }

    #[test]
    fn every_documented_form_parses_and_prints_back() {
        for s in [
            "random",
            "header:x-user",
            "query:id",
            "cookie:session",
            "path",
            "client-ip",
        ] {
            assert_eq!(s.parse::<HashKey>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn header_names_are_matched_case_insensitively() {
        assert_eq!(
            "header:X-User".parse::<HashKey>().unwrap(),
            HashKey::Header("x-user".into())
        );
    }

    #[test]
    fn unknown_or_empty_forms_are_refused() {
        for s in ["", "header:", "query:", "cookie:a b", "md5", "Path"] {
            assert!(s.parse::<HashKey>().is_err(), "{s}");
        }
    }

    #[test]
    fn a_numeric_key_is_its_own_id_and_others_hash_stably() {
        assert_eq!(key_to_id("123456"), 123_456);
        // FNV-1a 64 of "a", a published test vector.
        assert_eq!(key_to_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(key_to_id("user-7"), key_to_id("user-7"));
        assert_ne!(key_to_id("user-7"), key_to_id("user-8"));
    }

    #[test]
    fn each_key_is_read_from_its_part_of_the_request() {
        let req = Req {
            headers: vec![("x-user", "42"), ("cookie", "a=1; session=\"77\"; b=2")],
            query: "x=1&id=99&id=100",
            path: "/home",
            ip: Some("10.1.2.3".parse().unwrap()),
        };
        let id = |k: &str| k.parse::<HashKey>().unwrap().request_id(&req);
        assert_eq!(id("header:x-user"), 42);
        assert_eq!(id("query:id"), 99);
        assert_eq!(id("cookie:session"), 77);
        assert_eq!(id("path"), key_to_id("/home"));
        assert_eq!(id("client-ip"), key_to_id("10.1.2.3"));
    }

    #[test]
    fn a_missing_key_falls_back_to_a_random_six_digit_id() {
        let req = Req::default();
        for k in [
            "random",
            "header:x-user",
            "query:id",
            "cookie:s",
            "client-ip",
        ] {
            let id = k.parse::<HashKey>().unwrap().request_id(&req);
            assert!((100_000..=999_999).contains(&id), "{k}: {id}");
        }
    }

    #[test]
    fn a_query_parameter_without_a_value_is_an_empty_key() {
        assert_eq!(query_param("id&x=1", "id"), Some(""));
        assert_eq!(query_param("idx=1", "id"), None);
    }
}
