//! The key format of DESIGN §3: `{prefix}_{secret}{checksum}`, generated and parsed.
//!
//! - `prefix`: 1–16 characters of `[a-z0-9_]`, starting with a letter, not ending with `_`.
//! - `secret`: 256 bits from the OS CSPRNG in base62 (`0-9A-Za-z`), left-padded with `0` to
//!   [`SECRET_LEN`] characters.
//! - `checksum`: CRC-32 (IEEE) of `{prefix}_{secret}` in base62, left-padded to
//!   [`CHECKSUM_LEN`] characters.
//!
//! [`parse`] splits at the **last** `_` (the secret and checksum never contain one, the
//! prefix may) and allocates nothing: it runs on every verification, before any lookup.

use crate::secret::KeyMaterial;
use rand::RngCore;
use std::sync::LazyLock;
use zeroize::Zeroizing;

/// The prefix of root keys (keys for keyward's own admin API).
pub const ROOT_PREFIX: &str = "kwroot";
/// The prefix of an api's keys when it sets none.
pub const DEFAULT_PREFIX: &str = "kw";
/// Characters of base62 needed for 256 bits: 62^43 > 2^256 > 62^42.
pub const SECRET_LEN: usize = 43;
/// Characters of base62 needed for a CRC-32: 62^6 > 2^32.
pub const CHECKSUM_LEN: usize = 6;
/// Longest prefix accepted.
pub const MAX_PREFIX_LEN: usize = 16;
/// Longer inputs are rejected before any other work. A real key is at most 66 bytes; the
/// margin keeps the error stable for near misses.
pub const MAX_KEY_LEN: usize = 128;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Checks an api's key prefix; the message says what is wrong.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    match prefix_error(prefix) {
        None => Ok(()),
        Some(message) => Err(message.to_owned()),
    }
}

/// The allocation-free core of [`validate_prefix`], shared with [`parse`].
fn prefix_error(prefix: &str) -> Option<&'static str> {
    let bytes = prefix.as_bytes();
    let Some((&first, _)) = bytes.split_first() else {
        return Some("prefix must not be empty");
    };
    if bytes.len() > MAX_PREFIX_LEN {
        return Some("prefix must be at most 16 characters");
    }
    if !bytes
        .iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Some("prefix may contain only lower-case letters a-z, digits 0-9 and '_'");
    }
    if !first.is_ascii_lowercase() {
        return Some("prefix must start with a lower-case letter a-z");
    }
    if bytes.last() == Some(&b'_') {
        return Some("prefix must not end with '_'");
    }
    None
}

/// A fresh key `{prefix}_{secret}{checksum}` for an already validated `prefix`.
///
/// The prefix is not re-validated here: callers validate it when the api is created, and a
/// bad prefix only yields keys that [`parse`] refuses.
pub fn generate(prefix: &str) -> KeyMaterial {
    // Security: the raw bits and their encoding are wiped once the key string is built.
    let mut bits = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bits.as_mut());
    let secret = Zeroizing::new(base62_256(&bits));
    let checksum = checksum(prefix, &secret[..]);

    // Exact capacity, so no reallocation leaves a copy of the key behind in freed memory.
    let mut out = String::with_capacity(prefix.len() + 1 + SECRET_LEN + CHECKSUM_LEN);
    out.push_str(prefix);
    out.push('_');
    out.extend(secret.iter().map(|&b| char::from(b)));
    out.extend(checksum.iter().map(|&b| char::from(b)));
    KeyMaterial::new(out)
}

/// A key that passed [`parse`]: its prefix and its secret (without the checksum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub prefix: &'a str,
    pub secret: &'a str,
}

/// Why a string is not a well-formed key. Messages never include the key text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("key is longer than {MAX_KEY_LEN} bytes")]
    TooLong,
    #[error("key has no '_' separating the prefix from the secret")]
    NoSeparator,
    #[error("key prefix is not valid")]
    BadPrefix,
    #[error("key must have exactly 49 characters after the prefix")]
    BadLength,
    #[error("key contains a character outside 0-9, A-Z, a-z after the prefix")]
    BadCharacter,
    #[error("key checksum does not match")]
    BadChecksum,
}

/// Parses and checksums a presented key without allocating.
pub fn parse(key: &str) -> Result<ParsedKey<'_>, Malformed> {
    if key.len() > MAX_KEY_LEN {
        return Err(Malformed::TooLong);
    }
    match parse_well_shaped(key) {
        Some(parsed) => parsed,
        None => parse_searching(key),
    }
}

/// [`parse`] by searching for the last `_`, for every input shape (of at most
/// [`MAX_KEY_LEN`] bytes).
fn parse_searching(key: &str) -> Result<ParsedKey<'_>, Malformed> {
    let (prefix, rest) = key.rsplit_once('_').ok_or(Malformed::NoSeparator)?;
    if prefix_error(prefix).is_some() {
        return Err(Malformed::BadPrefix);
    }
    if rest.len() != SECRET_LEN + CHECKSUM_LEN {
        return Err(Malformed::BadLength);
    }
    if !all_alphanumeric(rest.as_bytes()) {
        return Err(Malformed::BadCharacter);
    }
    // All ASCII from here on, so these splits are on character boundaries; `get` keeps it
    // panic-free regardless.
    let (Some(secret), Some(sum)) = (rest.get(..SECRET_LEN), rest.get(SECRET_LEN..)) else {
        return Err(Malformed::BadLength);
    };
    if checksum(prefix, secret.as_bytes()).as_slice() != sum.as_bytes() {
        return Err(Malformed::BadChecksum);
    }
    Ok(ParsedKey { prefix, secret })
}

/// [`parse`] of a key shaped like a well-formed one — a `_` followed by exactly
/// [`SECRET_LEN`] + [`CHECKSUM_LEN`] alphanumerics — without searching for the `_`: those
/// bytes hold none, so it is the last one, where `parse` would split. `None` for any other
/// shape, which `parse` then takes apart to name what is wrong. Same checks, same order,
/// same errors.
fn parse_well_shaped(key: &str) -> Option<Result<ParsedKey<'_>, Malformed>> {
    let sep = key.len().checked_sub(1 + SECRET_LEN + CHECKSUM_LEN)?;
    let bytes = key.as_bytes();
    if bytes.get(sep) != Some(&b'_') || !all_alphanumeric(bytes.get(sep + 1..)?) {
        return None;
    }
    let prefix = key.get(..sep)?;
    let secret = key.get(sep + 1..sep + 1 + SECRET_LEN)?;
    let sum = key.get(sep + 1 + SECRET_LEN..)?;
    if prefix_error(prefix).is_some() {
        return Some(Err(Malformed::BadPrefix));
    }
    if checksum_of(key.get(..sep + 1 + SECRET_LEN)?.as_bytes()).as_slice() != sum.as_bytes() {
        return Some(Err(Malformed::BadChecksum));
    }
    Some(Ok(ParsedKey { prefix, secret }))
}

/// Whether every byte is `[0-9A-Za-z]`. No early exit, so the loop compiles to vector
/// compares: a key's 49 bytes are a few instructions rather than 49 branches.
fn all_alphanumeric(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        let digit = b.wrapping_sub(b'0') < 10;
        let letter = (b | 0x20).wrapping_sub(b'a') < 26;
        ok & (digit | letter)
    })
}

/// Where well-formed keys (any prefix, checksum valid) sit in `haystack`, for finding leaked
/// keys in files: a `_` followed by 49 letters and digits and then no further letter or
/// digit, after the longest prefix (of the 16 bytes before it) whose checksum holds (a
/// chance match is one in 62⁶ ≈ 5.7·10¹⁰). So `API_KEY=orders_…`, `"orders_…"` and
/// `MY_orders_…` all find `orders_…`. Bytes need not be UTF-8.
pub fn find(haystack: &[u8]) -> Vec<std::ops::Range<usize>> {
    const TAIL: usize = SECRET_LEN + CHECKSUM_LEN;
    let is_alnum = |b: u8| b.is_ascii_alphanumeric();
    let mut found = Vec::new();
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i] != b'_' || i == 0 {
            i += 1;
            continue;
        }
        let Some(tail) = haystack.get(i + 1..i + 1 + TAIL) else {
            break;
        };
        let ends_here = haystack.get(i + 1 + TAIL).is_none_or(|&b| !is_alnum(b));
        if !all_alphanumeric(tail) || !ends_here {
            i += 1;
            continue;
        }
        let end = i + 1 + TAIL;
        let earliest = i.saturating_sub(MAX_PREFIX_LEN);
        // Longest first. No word boundary is required before the prefix: a key glued to
        // what precedes it (`%22orders_…` URL-encoded, `\norders_…` escaped) is still a leak.
        let key = (earliest..i).find_map(|start| {
            let text = std::str::from_utf8(haystack.get(start..end)?).ok()?;
            parse(text).ok().map(|_| start..end)
        });
        match key {
            Some(range) => {
                i = range.end;
                found.push(range);
            }
            None => i += 1,
        }
    }
    found
}

/// The displayable start of a key: `{prefix}_{first 6 characters of the secret}`.
pub fn start(parsed: &ParsedKey<'_>) -> String {
    let head = parsed.secret.get(..6).unwrap_or(parsed.secret);
    let mut out = String::with_capacity(parsed.prefix.len() + 1 + head.len());
    out.push_str(parsed.prefix);
    out.push('_');
    out.push_str(head);
    out
}

/// A fresh CRC-32 hasher. Speed: `crc32fast::Hasher::new` picks its implementation by the
/// CPU's features on every call (~35 instructions, on every verify); a copy of one made once
/// starts from the same state.
fn crc32() -> crc32fast::Hasher {
    static FRESH: LazyLock<crc32fast::Hasher> = LazyLock::new(crc32fast::Hasher::new);
    FRESH.clone()
}

/// CRC-32 (IEEE) of `{prefix}_{secret}`, in base62, left-padded to [`CHECKSUM_LEN`].
fn checksum(prefix: &str, secret: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = crc32();
    h.update(prefix.as_bytes());
    h.update(b"_");
    h.update(secret);
    base62_checksum(h.finalize())
}

/// [`checksum`] of `{prefix}_{secret}` given as one slice, as it sits in a presented key.
fn checksum_of(signed: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = crc32();
    h.update(signed);
    base62_checksum(h.finalize())
}

fn base62_checksum(mut n: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = alphabet(n % 62);
        n /= 62;
    }
    out
}

fn alphabet(digit: u32) -> u8 {
    // `digit < 62` always holds at the call sites; `get` keeps that from being load-bearing.
    ALPHABET.get(digit as usize).copied().unwrap_or(b'0')
}

/// A 256-bit big-endian number in base62, most significant digit first, left-padded with
/// `'0'` to [`SECRET_LEN`] digits.
///
/// Schoolbook long division by 62, [`SECRET_LEN`] times: every step divides the whole
/// 32-byte number in place and yields one digit (the remainder), least significant first.
/// Since 62^43 > 2^256 the number is zero after the last step, so nothing is lost.
pub fn base62_256(bytes: &[u8; 32]) -> [u8; SECRET_LEN] {
    let mut n = Zeroizing::new(*bytes);
    let mut out = [b'0'; SECRET_LEN];
    for slot in out.iter_mut().rev() {
        let mut rem: u32 = 0;
        for byte in n.iter_mut() {
            let acc = (rem << 8) | u32::from(*byte);
            // acc < 62 * 256, so the quotient fits a byte.
            *byte = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = alphabet(rem);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(prefix: &str, secret: &[u8; SECRET_LEN]) -> String {
        let sum = checksum(prefix, secret);
        let mut s = format!("{prefix}_");
        s.extend(secret.iter().map(|&b| char::from(b)));
        s.extend(sum.iter().map(|&b| char::from(b)));
        s
    }

    #[test]
    fn find_reports_keys_where_they_are_and_nothing_else() {
        let key = generate("orders");
        let k = key.expose();
        let text = format!(
            "API_KEY={k}\nMY_{k} \"{k}\",%22{k}%22\n{k}x {k}_v2 {bad}",
            bad = k.replace(&k[10..11], if &k[10..11] == "A" { "B" } else { "A" })
        );
        let found: Vec<&str> = find(text.as_bytes())
            .into_iter()
            .map(|r| &text[r])
            .collect();
        // Not `{k}x` (it runs on into another word) and not the one with a changed character.
        assert_eq!(found, [k, k, k, k, k]);
        assert!(find(b"").is_empty());
        assert!(find(b"_").is_empty());
        assert!(find(&[b'_'; 200]).is_empty());
        let near = format!("x_{}", "a".repeat(SECRET_LEN + CHECKSUM_LEN));
        assert!(find(near.as_bytes()).is_empty());
    }

    #[test]
    fn generated_key_has_the_documented_shape_and_parses_back() {
        let key = generate("orders");
        let text = key.expose();
        assert_eq!(text.len(), "orders_".len() + SECRET_LEN + CHECKSUM_LEN);
        let parsed = parse(text).expect("generated key parses");
        assert_eq!(parsed.prefix, "orders");
        assert_eq!(parsed.secret.len(), SECRET_LEN);
        assert!(text.starts_with(&start(&parsed)));
        assert_eq!(start(&parsed).len(), "orders_".len() + 6);
    }

    #[test]
    fn two_generated_keys_differ() {
        assert_ne!(generate("kw").expose(), generate("kw").expose());
    }

    #[test]
    fn prefix_with_underscores_splits_at_the_last_one() {
        let key = generate("my_api_v2");
        let parsed = parse(key.expose()).expect("parses");
        assert_eq!(parsed.prefix, "my_api_v2");
        assert_eq!(ROOT_PREFIX, "kwroot");
        assert!(parse(generate(ROOT_PREFIX).expose()).is_ok());
        assert!(parse(generate(DEFAULT_PREFIX).expose()).is_ok());
    }

    #[test]
    fn base62_of_zero_and_of_the_maximum_are_padded_and_full_width() {
        assert_eq!(&base62_256(&[0; 32]), &[b'0'; SECRET_LEN]);
        let max = base62_256(&[0xff; 32]);
        assert_ne!(max[0], b'0', "2^256-1 needs all 43 digits");
        assert!(parse(&make("kw", &max)).is_ok());
        let one = {
            let mut b = [0u8; 32];
            b[31] = 61;
            base62_256(&b)
        };
        assert_eq!(one[SECRET_LEN - 1], b'z');
        assert!(one[..SECRET_LEN - 1].iter().all(|&c| c == b'0'));
    }

    #[test]
    fn base62_matches_a_reference_for_a_multi_byte_value() {
        // 62^2 * 5 + 62 * 7 + 9 = 19_663 = 0x4CCF
        let mut b = [0u8; 32];
        b[30] = 0x4c;
        b[31] = 0xcf;
        let out = base62_256(&b);
        assert_eq!(&out[SECRET_LEN - 3..], b"579");
    }

    #[test]
    fn checksum_mismatch_is_malformed() {
        let key = generate("kw");
        let mut text = key.expose().to_owned();
        let last = text.pop().expect("non-empty");
        text.push(if last == 'a' { 'b' } else { 'a' });
        assert_eq!(parse(&text), Err(Malformed::BadChecksum));
    }

    #[test]
    fn each_kind_of_malformation_is_reported() {
        let good = generate("kw");
        let g = good.expose();
        assert_eq!(parse(&"a".repeat(129)), Err(Malformed::TooLong));
        assert_eq!(parse("nounderscore"), Err(Malformed::NoSeparator));
        assert_eq!(parse(""), Err(Malformed::NoSeparator));
        assert_eq!(
            parse(&g.replacen("kw_", "KW_", 1)),
            Err(Malformed::BadPrefix)
        );
        assert_eq!(parse("_abc"), Err(Malformed::BadPrefix));
        assert_eq!(parse("kw_abc"), Err(Malformed::BadLength));
        assert_eq!(parse(&format!("{g}x")), Err(Malformed::BadLength));
        let mut bad = g.to_owned();
        bad.replace_range(5..6, "-");
        assert_eq!(parse(&bad), Err(Malformed::BadCharacter));
        // A multi-byte character keeps the byte length at 49 but is still refused.
        let mut multi = g[..g.len() - 2].to_owned();
        multi.push('é');
        assert_eq!(multi.len(), g.len());
        assert_eq!(parse(&multi), Err(Malformed::BadCharacter));
    }

    proptest::proptest! {
        /// The shortcut for well-shaped keys answers exactly as the general parser, on keys,
        /// keys with one byte changed, inserted or removed, and arbitrary text.
        #[test]
        fn the_well_shaped_shortcut_agrees_with_the_search(
            prefix in "[a-z][a-z0-9_]{0,17}",
            edit in 0usize..4,
            at in 0usize..80,
            byte in proptest::prelude::any::<u8>(),
            text in "\\PC{0,70}",
        ) {
            let key = generate(&prefix);
            let mut bytes = key.expose().as_bytes().to_vec();
            let at = at % (bytes.len() + 1);
            match edit {
                0 => {}
                1 if at < bytes.len() => bytes[at] = byte,
                2 => bytes.insert(at, byte),
                _ if at < bytes.len() => { bytes.remove(at); }
                _ => {}
            }
            for input in [String::from_utf8_lossy(&bytes).into_owned(), text] {
                let reference = if input.len() > MAX_KEY_LEN {
                    Err(Malformed::TooLong)
                } else {
                    parse_searching(&input)
                };
                proptest::prop_assert_eq!(parse(&input), reference, "{:?}", input);
            }
            if edit == 0 {
                proptest::prop_assert!(parse(key.expose()).is_ok() == prefix_error(&prefix).is_none());
            }
        }
    }

    #[test]
    fn malformed_messages_never_contain_the_key() {
        let key = generate("kw");
        let mut text = key.expose().to_owned();
        text.push('!');
        for input in [text.as_str(), &text[..20], key.expose()] {
            if let Err(e) = parse(input) {
                let shown = format!("{e} {e:?}");
                assert!(!shown.contains(&input[3..10]), "{shown}");
            }
        }
    }

    #[test]
    fn prefix_rules_are_enforced_with_a_reason() {
        for ok in ["kw", "a", "orders", "my_api", "a1b2c3d4e5f6g7h8", "kwroot"] {
            assert_eq!(validate_prefix(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("a1b2c3d4e5f6g7h8i", "16"),
            ("1abc", "start"),
            ("_abc", "start"),
            ("Orders", "lower-case"),
            ("abc_", "end"),
            ("ab-c", "lower-case"),
            ("ab c", "lower-case"),
        ] {
            let err = validate_prefix(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
