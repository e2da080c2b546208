//! Property tests for the parsers and matchers on keyward's hot path: key format, permission
//! expressions, durations, path globs and IP allow-lists.

use keyward_core::keyfmt::{self, Malformed};
use keyward_core::model::{
    Api, ApiPolicies, DigestVersion, Key, KeyDigest, KeyState, Meta, Restrictions, VerifyRecord,
    VerifyRequest,
};
use keyward_core::perm::{self, Expr};
use keyward_core::verify::{self, CachedKey, Code};
use keyward_core::{duration, KeyMaterial};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use time::OffsetDateTime;

fn prefix() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9_]{0,14}[a-z0-9])?"
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Reference base62 decoder: multiply-accumulate into a 256-bit big-endian number.
fn decode_base62(digits: &[u8]) -> Option<[u8; 32]> {
    let mut n = [0u8; 32];
    for &d in digits {
        let mut carry = BASE62.iter().position(|&c| c == d)? as u32;
        for byte in n.iter_mut().rev() {
            let v = u32::from(*byte) * 62 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(n)
}

/// Text a key may sit in: anything, including `_`, letters and bytes that are not UTF-8.
fn filler() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b' '),
            Just(b'_'),
            Just(b'"'),
            Just(b'\n'),
            Just(0xff_u8),
            Just(b'='),
            b'a'..=b'z',
            b'A'..=b'Z',
        ],
        0..80,
    )
}

proptest! {
    #[test]
    fn find_locates_every_key_in_any_surrounding_text(
        parts in prop::collection::vec((filler(), prefix()), 0..5),
        tail in filler(),
    ) {
        let mut haystack = Vec::new();
        let mut keys = Vec::new();
        for (before, prefix) in &parts {
            haystack.extend_from_slice(before);
            let key = keyfmt::generate(prefix);
            keys.push((haystack.len(), key.expose().to_owned()));
            haystack.extend_from_slice(key.expose().as_bytes());
            // A key runs on into nothing alphanumeric (that would make it another word).
            haystack.push(b' ');
        }
        haystack.extend_from_slice(&tail);
        let found: Vec<String> = keyfmt::find(&haystack)
            .into_iter()
            .map(|r| String::from_utf8_lossy(&haystack[r]).into_owned())
            .collect();
        // Each key is found whole: its own prefix, or a longer one made of the filler
        // before it that happens to pass the checksum (never, in practice).
        let wanted: Vec<String> = keys.iter().map(|(_, k)| k.clone()).collect();
        prop_assert_eq!(found, wanted);
    }

    #[test]
    fn generated_keys_parse_back_for_any_valid_prefix(prefix in prefix()) {
        prop_assert_eq!(keyfmt::validate_prefix(&prefix), Ok(()));
        let key = keyfmt::generate(&prefix);
        let parsed = keyfmt::parse(key.expose());
        prop_assert!(parsed.is_ok(), "{:?}", parsed);
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.prefix, prefix.as_str());
        prop_assert_eq!(parsed.secret.len(), keyfmt::SECRET_LEN);
    }

    #[test]
    fn base62_encoding_of_any_256_bit_value_decodes_back(bytes in any::<[u8; 32]>()) {
        let digits = keyfmt::base62_256(&bytes);
        prop_assert_eq!(digits.len(), keyfmt::SECRET_LEN);
        prop_assert_eq!(decode_base62(&digits), Some(bytes));
    }

    #[test]
    fn any_string_never_panics_the_key_parser(s in any::<String>()) {
        let _ = keyfmt::parse(&s);
    }

    #[test]
    fn key_shaped_strings_never_panic_the_key_parser(s in "[a-z_]{0,20}_[0-9A-Za-z_é]{40,55}") {
        let _ = keyfmt::parse(&s);
    }

    /// CRC-32 detects every error burst of up to 32 bits, so one changed character anywhere
    /// (the prefix, the secret or the checksum) is always caught.
    #[test]
    fn changing_any_one_character_makes_the_key_malformed(
        prefix in prefix(),
        index in any::<prop::sample::Index>(),
        replacement in prop_oneof![
            prop::sample::select(BASE62.to_vec()).prop_map(char::from),
            any::<char>(),
        ],
    ) {
        let key = keyfmt::generate(&prefix);
        let text = key.expose();
        let chars: Vec<char> = text.chars().collect();
        let i = index.index(chars.len());
        prop_assume!(chars[i] != replacement);
        let mutated: String = chars
            .iter()
            .enumerate()
            .map(|(j, &c)| if j == i { replacement } else { c })
            .collect();
        let result = keyfmt::parse(&mutated);
        prop_assert!(result.is_err(), "mutation at {} still parses", i);
        let base62 = replacement.is_ascii_alphanumeric();
        if i >= chars.len() - keyfmt::CHECKSUM_LEN && base62 {
            prop_assert_eq!(result, Err(Malformed::BadChecksum));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Permission expressions

const REQUIRED: &[&str] = &[
    "a",
    "b",
    "c",
    "orders.read",
    "orders.write",
    "orders.*",
    "orders.x.read",
    "billing:read",
];
const HELD: &[&str] = &[
    "a",
    "b",
    "orders.read",
    "orders.write",
    "orders.*",
    "orders.x.*",
    "orders",
    "billing:read",
    "*",
];

fn expr() -> impl Strategy<Value = Expr> {
    let leaf = prop::sample::select(REQUIRED).prop_map(|s| Expr::Perm(s.to_owned()));
    leaf.prop_recursive(6, 48, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
        ]
    })
}

fn held_set() -> impl Strategy<Value = Vec<String>> {
    prop::sample::subsequence(HELD, 0..=4).prop_map(|v| v.into_iter().map(str::to_owned).collect())
}

/// Reference for `perm::grants`, written segment by segment rather than by prefix.
fn reference_grants(held: &str, required: &str) -> bool {
    if held == "*" || held == required {
        return true;
    }
    let h: Vec<&str> = held.split('.').collect();
    let r: Vec<&str> = required.split('.').collect();
    let covers = |wild: &[&str], other: &[&str]| {
        // `wild` ends in "*": `other` must extend its non-wildcard part by at least one segment.
        let base = &wild[..wild.len() - 1];
        other.len() > base.len() && other[..base.len()] == *base
    };
    (h.last() == Some(&"*") && covers(&h, &r)) || (r.last() == Some(&"*") && covers(&r, &h))
}

fn reference_eval(e: &Expr, held: &[String]) -> bool {
    match e {
        Expr::Perm(p) => held.iter().any(|h| reference_grants(h, p)),
        Expr::And(a, b) => reference_eval(a, held) && reference_eval(b, held),
        Expr::Or(a, b) => reference_eval(a, held) || reference_eval(b, held),
    }
}

proptest! {
    #[test]
    fn printed_expressions_reparse_to_the_same_tree_and_verdict(e in expr(), held in held_set()) {
        let text = e.to_string();
        let back = perm::parse(&text);
        prop_assert_eq!(back.as_ref(), Ok(&e), "{}", text);
        let back = back.unwrap();
        let expected = reference_eval(&e, &held);
        prop_assert_eq!(back.eval(&held), expected);
        prop_assert_eq!(e.eval(&held), expected);
        prop_assert_eq!(back.missing(&held).is_empty(), expected);
    }

    #[test]
    fn grants_agrees_with_the_reference(
        held in prop::sample::select(HELD),
        required in prop::sample::select(REQUIRED),
    ) {
        prop_assert_eq!(perm::grants(held, required), reference_grants(held, required));
    }

    #[test]
    fn any_string_never_panics_the_expression_parser(s in any::<String>()) {
        if let Err(e) = perm::parse(&s) {
            prop_assert!(e.position <= s.chars().count());
        }
    }

    #[test]
    fn token_soup_never_panics_the_expression_parser(
        parts in prop::collection::vec(
            prop::sample::select(vec!["(", ")", " AND ", " OR ", "a", "b.*", "*", " ", "x y"]),
            0..80,
        )
    ) {
        let s = parts.concat();
        if let Err(e) = perm::parse(&s) {
            prop_assert!(e.position <= s.chars().count());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Durations

proptest! {
    #[test]
    fn formatted_durations_parse_back(ms in 0i64..=i64::MAX) {
        let d = time::Duration::milliseconds(ms);
        let text = duration::format(d);
        prop_assert_eq!(duration::parse(&text), Ok(d), "{}", text);
    }

    #[test]
    fn small_formatted_durations_parse_back(ms in 0i64..=10_000_000_000) {
        let d = time::Duration::milliseconds(ms);
        prop_assert_eq!(duration::parse(&duration::format(d)), Ok(d));
    }

    #[test]
    fn parsed_durations_format_to_an_equivalent_shorter_or_equal_string(
        parts in prop::collection::vec(
            (0u32..100_000, prop::sample::select(vec!["ms", "s", "m", "h", "d", "w"])),
            1..5,
        )
    ) {
        let text: String = parts.iter().map(|(n, u)| format!("{n}{u}")).collect();
        let d = duration::parse(&text);
        prop_assert!(d.is_ok(), "{}: {:?}", text, d);
        let d = d.unwrap();
        let canonical = duration::format(d);
        prop_assert!(canonical.len() <= text.len().max(2), "{} -> {}", text, canonical);
        prop_assert_eq!(duration::parse(&canonical), Ok(d));
    }

    #[test]
    fn any_string_never_panics_the_duration_parser(s in any::<String>()) {
        let _ = duration::parse(&s);
    }
}

// ---------------------------------------------------------------------------------------
// Globs and IP allow-lists

/// Reference glob matcher: plain recursion (exponential, fine for short inputs).
fn reference_glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| reference_glob(rest, &s[i..])),
        [b'*', rest @ ..] => {
            let run = s.iter().take_while(|&&c| c != b'/').count();
            (0..=run).any(|i| reference_glob(rest, &s[i..]))
        }
        [c, rest @ ..] => s.first() == Some(c) && reference_glob(rest, &s[1..]),
    }
}

proptest! {
    #[test]
    fn glob_agrees_with_the_reference(pattern in "[ab/*]{0,8}", path in "[ab/]{0,10}") {
        prop_assert_eq!(
            verify::glob_match(&pattern, &path),
            reference_glob(pattern.as_bytes(), path.as_bytes()),
            "{} vs {}", pattern, path
        );
    }

    #[test]
    fn glob_never_panics(pattern in any::<String>(), path in any::<String>()) {
        let _ = verify::glob_match(&pattern, &path);
    }
}

fn record_with_ips(ips: Vec<String>) -> Arc<CachedKey> {
    let now = OffsetDateTime::UNIX_EPOCH;
    Arc::new(CachedKey::new(VerifyRecord {
        key: Key {
            id: "key_1".to_owned(),
            workspace_id: "ws_1".to_owned(),
            api_id: "api_1".to_owned(),
            project_id: None,
            name: "k".to_owned(),
            start: "kw_000000".to_owned(),
            digest: KeyDigest {
                version: DigestVersion::Hmac(1),
                bytes: [0; 32],
            },
            state: KeyState::Active,
            permissions: Vec::new(),
            roles: Vec::new(),
            meta: Meta::new(),
            expires_at: None,
            rate_limits: Vec::new(),
            usage_limit: None,
            restrictions: Some(Restrictions {
                ips: Some(ips),
                ..Restrictions::default()
            }),
            rotated_from: None,
            rotated_to: None,
            identity_id: "key_1".to_owned(),
            state_reason: None,
            created_at: now,
            updated_at: now,
            revoked_at: None,
            last_used_at: None,
            last_used_ip: None,
            recoverable: false,
            usage_refilled_at: None,
        },
        api: Arc::new(Api {
            id: "api_1".to_owned(),
            workspace_id: "ws_1".to_owned(),
            name: "api".to_owned(),
            prefix: "kw".to_owned(),
            permissions: Vec::new(),
            roles: BTreeMap::new(),
            default_permissions: Vec::new(),
            default_rate_limits: Vec::new(),
            default_usage_limit: None,
            policies: ApiPolicies::default(),
            created_at: now,
            updated_at: now,
        }),
        project: None,
    }))
}

fn ip_allowed(key: &Arc<CachedKey>, ip: String) -> bool {
    let req = VerifyRequest {
        key: KeyMaterial::new("kw_x".to_owned()),
        ip: Some(ip),
        ..VerifyRequest::default()
    };
    verify::evaluate(
        Arc::clone(key),
        &req.input(),
        None,
        OffsetDateTime::UNIX_EPOCH,
        false,
    )
    .code
        == Code::Valid
}

proptest! {
    #[test]
    fn ipv4_cidr_matches_the_reference(
        net in any::<u32>(),
        len in 0u32..=32,
        ip in any::<u32>(),
        near in any::<bool>(),
        flip in any::<bool>(),
    ) {
        // Half the time, pick an address inside the block or just outside it, so both
        // outcomes occur often.
        let host = u32::MAX.checked_shr(len).unwrap_or(0);
        let mut ip = if near { (net & !host) | (ip & host) } else { ip };
        if near && flip && len > 0 {
            ip ^= 1 << (32 - len);
        }
        let expected = (ip & !host) == (net & !host);
        let key = record_with_ips(vec![format!("{}/{len}", Ipv4Addr::from(net))]);
        prop_assert_eq!(ip_allowed(&key, Ipv4Addr::from(ip).to_string()), expected);
    }

    #[test]
    fn ipv6_cidr_matches_the_reference(
        net in any::<u128>(),
        len in 0u32..=128,
        ip in any::<u128>(),
        near in any::<bool>(),
        flip in any::<bool>(),
    ) {
        let host = u128::MAX.checked_shr(len).unwrap_or(0);
        let mut ip = if near { (net & !host) | (ip & host) } else { ip };
        if near && flip && len > 0 {
            ip ^= 1 << (128 - len);
        }
        let expected = (ip & !host) == (net & !host);
        let key = record_with_ips(vec![format!("{}/{len}", Ipv6Addr::from(net))]);
        prop_assert_eq!(ip_allowed(&key, Ipv6Addr::from(ip).to_string()), expected);
    }

    #[test]
    fn single_addresses_match_only_themselves(a in any::<u32>(), b in any::<u32>()) {
        let key = record_with_ips(vec![Ipv4Addr::from(a).to_string()]);
        prop_assert!(ip_allowed(&key, Ipv4Addr::from(a).to_string()));
        prop_assert_eq!(ip_allowed(&key, Ipv4Addr::from(b).to_string()), a == b);
        prop_assert!(!ip_allowed(&key, Ipv6Addr::from((u128::from(a) << 64) | 1).to_string()));
    }
}
