//! Object ids: `{prefix}_{time}{random}`, base62, sortable by creation time in byte order.

use rand::Rng;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new id such as `key_0Hkq2nT4f3Zr8Yb1xQ9w7a`: 9 chars of milliseconds since the epoch
/// (so ids sort by creation in ASCII order) and 13 random chars (77 bits).
pub fn new_id(prefix: &str, unix_ms: i64) -> String {
    let mut out = String::with_capacity(prefix.len() + 23);
    out.push_str(prefix);
    out.push('_');
    let mut ts = unix_ms.max(0) as u64;
    let mut buf = [b'0'; 9];
    for slot in buf.iter_mut().rev() {
        *slot = ALPHABET[(ts % 62) as usize];
        ts /= 62;
    }
    out.extend(buf.iter().map(|&b| b as char));
    let mut rng = rand::rngs::OsRng;
    for _ in 0..13 {
        out.push(ALPHABET[rng.gen_range(0..62)] as char);
    }
    out
}

/// Whether `s` looks like an id with this prefix (cheap shape check, not an existence check).
pub fn is_id(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|r| r.len() == 22 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_time() {
        let a = new_id("key", 1_700_000_000_000);
        let b = new_id("key", 1_700_000_000_001);
        assert!(a < b);
        assert!(is_id("key", &a));
        assert!(!is_id("api", &a));
    }
}
