//! Peppers and key digests: keys are stored only as HMAC-SHA256 under a versioned server secret.
//!
//! The highest pepper version digests new keys; older versions stay loaded so keys made under
//! them keep verifying ([`Peppers::candidates`]), and [`DigestVersion::Sha256`] covers keys
//! imported from systems that stored a plain SHA-256.
//!
//! The in-memory caches index keys by a cheaper [`Peppers::lookup`] digest instead: one
//! SHA-256 compression of the key, keyed by a secret drawn at start and never stored, where the
//! HMAC takes two (three for a key over 55 bytes); the HMAC is computed only when a key is not
//! in memory.
//!
//! # Pepper file
//!
//! One line per version, `v{n}:{64 lower- or upper-case hex digits}`, e.g.
//!
//! ```text
//! v1:3f9c…(64 hex digits)…
//! v2:a07b…
//! ```
//!
//! Blank lines and lines starting with `#` are ignored. The file must not be readable by group
//! or others (mode `0600`); [`Peppers::load_or_create`] creates it that way with a fresh `v1`.
//! To rotate, append a line with a higher version and restart: new keys use it at once, old
//! keys keep working.

use crate::model::{DigestVersion, KeyDigest};
use rand::RngCore;
use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

struct Pepper {
    version: u32,
    /// Kept so the set can be written back out; the hot path uses the keyed states.
    secret: Zeroizing<[u8; 32]>,
    /// SHA-256 states after absorbing `secret ⊕ ipad` and `secret ⊕ opad`: HMAC's key
    /// schedule, done once. A digest is then two compressions for a key of up to 55 bytes (every
    /// well-formed key), with no hasher to copy or buffer to manage on the hot path.
    inner: Zeroizing<[u32; 8]>,
    outer: Zeroizing<[u32; 8]>,
}

impl Pepper {
    fn new(version: u32, secret: Zeroizing<[u8; 32]>) -> Self {
        let keyed = |pad: u8| {
            let mut block = Zeroizing::new([pad; 64]);
            for (b, s) in block.iter_mut().zip(secret.iter()) {
                *b ^= s;
            }
            let mut state = Zeroizing::new(SHA256_IV);
            sha2::compress256(
                &mut state,
                std::slice::from_ref(GenericArray::from_slice(&*block)),
            );
            state
        };
        Self {
            version,
            inner: keyed(0x36),
            outer: keyed(0x5c),
            secret,
        }
    }

    /// HMAC-SHA256 (RFC 2104) of `key` under this pepper.
    fn digest(&self, key: &str) -> [u8; 32] {
        let inner = sha256_after_block(&self.inner, key.as_bytes());
        sha256_after_block(&self.outer, &inner)
    }
}

/// SHA-256's state after absorbing `block`, the lookup secret.
fn lookup_state(block: &[u8; 64]) -> Zeroizing<[u32; 8]> {
    let mut state = Zeroizing::new(SHA256_IV);
    sha2::compress256(
        &mut state,
        std::slice::from_ref(GenericArray::from_slice(block)),
    );
    state
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Finishes a SHA-256 whose first 64-byte block is already absorbed into `state`, over
/// `msg`: the message's full blocks, then the padded tail (one block, or two when fewer than
/// 9 bytes are left for the padding).
fn sha256_after_block(state: &[u32; 8], msg: &[u8]) -> [u8; 32] {
    let mut s = *state;
    let mut blocks = msg.chunks_exact(64);
    for block in &mut blocks {
        sha2::compress256(
            &mut s,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
    }
    let tail = blocks.remainder();
    // Security: the tail is key material; wiped when dropped.
    let mut buf = WipedBlocks([0u8; 128]);
    let buf = &mut buf.0;
    buf[..tail.len()].copy_from_slice(tail);
    buf[tail.len()] = 0x80;
    let used = if tail.len() + 9 <= 64 { 64 } else { 128 };
    let bits = (64 + msg.len() as u64).wrapping_mul(8);
    buf[used - 8..used].copy_from_slice(&bits.to_be_bytes());
    for block in buf[..used].chunks_exact(64) {
        sha2::compress256(
            &mut s,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
    }
    state_bytes(s)
}

/// A SHA-256 state as its 32 big-endian bytes (the digest, after the last block).
fn state_bytes(s: [u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (bytes, word) in out.chunks_exact_mut(4).zip(s) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// Two SHA-256 blocks wiped when dropped, in one bulk write: `Zeroizing` over a byte array
/// stores each of the 128 bytes on its own, which cost ~10 % of a cached verification.
struct WipedBlocks([u8; 128]);

impl Drop for WipedBlocks {
    fn drop(&mut self) {
        zeroize::zeroize_bytes(&mut self.0);
    }
}

/// The server's peppers, newest first. The first one is current.
pub struct Peppers {
    /// Never empty; sorted by version, highest first.
    peppers: Vec<Pepper>,
    /// SHA-256 states after absorbing 64 bytes from the OS CSPRNG each, drawn when the set is
    /// built and never written anywhere: the keys of [`Peppers::lookup`], one per encoding.
    lookup: Zeroizing<[u32; 8]>,
    lookup_long: Zeroizing<[u32; 8]>,
}

impl fmt::Debug for Peppers {
    // Security: versions only, never secret bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions: Vec<u32> = self.peppers.iter().map(|p| p.version).collect();
        f.debug_struct("Peppers")
            .field("versions", &versions)
            .field("secrets", &"<redacted>")
            .finish()
    }
}

impl Peppers {
    /// A set of peppers: non-empty, versions unique and ≥ 1. The highest version is current.
    pub fn new(versions: Vec<(u32, [u8; 32])>) -> Result<Self, String> {
        // Security: wipe the caller's copies we were handed by value.
        let versions: Vec<(u32, Zeroizing<[u8; 32]>)> = versions
            .into_iter()
            .map(|(v, mut bytes)| {
                let kept = Zeroizing::new(bytes);
                zeroize::Zeroize::zeroize(&mut bytes);
                (v, kept)
            })
            .collect();
        Self::from_zeroizing(versions)
    }

    fn from_zeroizing(versions: Vec<(u32, Zeroizing<[u8; 32]>)>) -> Result<Self, String> {
        if versions.is_empty() {
            return Err("at least one pepper is required".to_owned());
        }
        let mut peppers = Vec::with_capacity(versions.len());
        for (version, secret) in versions {
            if version == 0 {
                return Err("pepper versions start at 1".to_owned());
            }
            if peppers.iter().any(|p: &Pepper| p.version == version) {
                return Err(format!("pepper version {version} appears twice"));
            }
            peppers.push(Pepper::new(version, secret));
        }
        peppers.sort_by_key(|p| std::cmp::Reverse(p.version));
        let secret = || {
            let mut block = Zeroizing::new([0u8; 64]);
            rand::rngs::OsRng.fill_bytes(&mut *block);
            lookup_state(&block)
        };
        Ok(Self {
            peppers,
            lookup: secret(),
            lookup_long: secret(),
        })
    }

    /// 32 fresh bytes from the operating system's CSPRNG.
    pub fn generate_secret() -> [u8; 32] {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        bytes
    }

    fn current(&self) -> Option<&Pepper> {
        self.peppers.first()
    }

    /// The highest version's secret: what a file of this format holds when it is used as one
    /// key (the master key of [`crate::vault`]).
    pub(crate) fn current_secret(&self) -> Option<Zeroizing<[u8; 32]>> {
        self.current().map(|p| p.secret.clone())
    }

    /// The version new keys are digested under.
    pub fn current_version(&self) -> u32 {
        self.current().map_or(0, |p| p.version)
    }

    /// All loaded versions, highest first.
    pub fn versions(&self) -> Vec<u32> {
        self.peppers.iter().map(|p| p.version).collect()
    }

    /// What the in-memory caches index `key` by: one SHA-256 compression keyed by this
    /// process's secret chaining value, of the key zero-padded to one block, for a key of up
    /// to 64 bytes without a NUL (every well-formed key with a prefix of up to 15 characters;
    /// the HMAC of [`Peppers::digest`] takes two compressions, three over 55 bytes). Any other
    /// key: SHA-256, standard padding, continued from a second secret state.
    ///
    /// Security: keyed through its chaining value, SHA-256's compression function is a PRF
    /// (the assumption HMAC's proof rests on), and each encoding is injective: zero padding on
    /// NUL-free strings of fixed block length, SHA-256's own padding on the rest, under
    /// independent keys. So finding another key with a cached key's lookup digest means
    /// predicting a PRF: a hit proves the key as the stored digest does, and only keys whose
    /// stored digest was confirmed are cached. Nothing outside the process ever sees an
    /// output, so length extension does not arise; never stored, never compared with
    /// anything but this process's own lookup digests.
    pub fn lookup(&self, key: &str) -> [u8; 32] {
        let bytes = key.as_bytes();
        if bytes.len() > 64 || bytes.contains(&0) {
            return sha256_after_block(&self.lookup_long, bytes);
        }
        // Security: the block is key material; wiped when dropped.
        let mut buf = WipedBlocks([0u8; 128]);
        let block = &mut buf.0[..64];
        block[..bytes.len()].copy_from_slice(bytes);
        let mut s = *self.lookup;
        sha2::compress256(
            &mut s,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
        state_bytes(s)
    }

    /// The digest to store for a new key: HMAC-SHA256 under the current pepper.
    pub fn digest(&self, key: &str) -> KeyDigest {
        match self.current() {
            Some(p) => KeyDigest {
                version: DigestVersion::Hmac(p.version),
                bytes: p.digest(key),
            },
            // Unreachable by construction (never empty); fall back to something that can
            // never collide with a peppered digest rather than panic.
            None => sha256_digest(key),
        }
    }

    /// Every digest a stored key could have: the current pepper first, then older peppers
    /// (newest first), then plain SHA-256 for imported keys. Look them up in this order.
    pub fn candidates(&self, key: &str) -> Vec<KeyDigest> {
        let mut out = Vec::with_capacity(self.peppers.len() + 1);
        out.extend(self.peppers.iter().map(|p| KeyDigest {
            version: DigestVersion::Hmac(p.version),
            bytes: p.digest(key),
        }));
        out.push(sha256_digest(key));
        out
    }

    /// Whether `key` has the `stored` digest, recomputed under the stored version and
    /// compared in constant time. An unknown pepper version never matches.
    pub fn matches(&self, key: &str, stored: &KeyDigest) -> bool {
        let computed = match stored.version {
            DigestVersion::Hmac(v) => match self.peppers.iter().find(|p| p.version == v) {
                Some(p) => p.digest(key),
                None => return false,
            },
            DigestVersion::Sha256 => sha256_digest(key).bytes,
        };
        ct_eq(&computed, &stored.bytes)
    }

    /// Reads the pepper file, or creates it (and its parent directories) with a fresh `v1`,
    /// mode `0600`, if it does not exist. A file readable by group or others is refused.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        match std::fs::File::open(path) {
            Ok(file) => Self::load(path, file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match Self::create(path) {
                // Another process won the race to create it: read theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    Self::load(path, std::fs::File::open(path)?)
                }
                other => other,
            },
            Err(e) => Err(e),
        }
    }

    fn load(path: &Path, mut file: std::fs::File) -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        // Security: checked on the open handle, so the file checked is the file read.
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is accessible by group or others (mode {:04o}); \
                     run `chmod 600` on it",
                    path.display(),
                    mode & 0o7777
                ),
            ));
        }
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text)?;
        Self::parse_file_contents(&text).map_err(|message| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {message}", path.display()),
            )
        })
    }

    fn create(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let secret = Zeroizing::new(Self::generate_secret());
        let mut line = Zeroizing::new(String::with_capacity(4 + 64 + 1));
        line.push_str("v1:");
        push_hex(&mut line, secret.as_ref());
        line.push('\n');
        // Security: mode 0600 from the first byte; `create_new` never follows a planted file.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(line.as_bytes())?;
        file.sync_all()?;
        Self::from_zeroizing(vec![(1, secret)])
            .map_err(|m| io::Error::new(io::ErrorKind::InvalidData, m))
    }

    /// Parses the pepper file format (see the module docs). Errors name the line number,
    /// never its content.
    pub fn parse_file_contents(s: &str) -> Result<Self, String> {
        let mut versions = Vec::new();
        for (i, raw) in s.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((tag, hex)) = line.split_once(':') else {
                return Err(format!("line {n}: expected `v<version>:<64 hex digits>`"));
            };
            let version = tag
                .strip_prefix('v')
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|&v| v >= 1)
                .ok_or_else(|| format!("line {n}: version must be `v` and an integer ≥ 1"))?;
            let secret = decode_hex_32(hex.trim())
                .ok_or_else(|| format!("line {n}: secret must be exactly 64 hex digits"))?;
            if versions.iter().any(|(v, _)| *v == version) {
                return Err(format!("line {n}: version {version} appears twice"));
            }
            versions.push((version, secret));
        }
        if versions.is_empty() {
            return Err("no pepper found (expected lines `v<version>:<64 hex digits>`)".to_owned());
        }
        Self::from_zeroizing(versions)
    }

    /// The set in the pepper file format, for writing after adding a version.
    pub fn to_file_contents(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(self.peppers.len() * 80));
        for p in self.peppers.iter().rev() {
            out.push('v');
            out.push_str(&p.version.to_string());
            out.push(':');
            push_hex(&mut out, p.secret.as_ref());
            out.push('\n');
        }
        out
    }
}

/// Plain SHA-256 of the key, the digest of imported keys.
fn sha256_digest(key: &str) -> KeyDigest {
    KeyDigest {
        version: DigestVersion::Sha256,
        bytes: Sha256::digest(key.as_bytes()).into(),
    }
}

/// A key's SHA-256 in lower-case hex: a name for a key that is safe to print (nothing of the
/// key can be learnt from it), which `keyward scan` reports and GitHub's secret scanning uses.
pub fn fingerprint(key: &str) -> String {
    let mut out = String::with_capacity(64);
    push_hex(&mut out, &sha256_digest(key).bytes);
    out
}

/// Constant-time equality of two digests.
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            out.push(char::from(
                HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
}

fn decode_hex_32(s: &str) -> Option<Zeroizing<[u8; 32]>> {
    fn val(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *slot = (val(*hi)? << 4) | val(*lo)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::Mac as _;
    use std::os::unix::fs::PermissionsExt;

    /// The reference implementation the precomputed states must agree with.
    type HmacSha256 = hmac::Hmac<Sha256>;

    fn peppers(vs: &[(u32, u8)]) -> Peppers {
        Peppers::new(vs.iter().map(|&(v, b)| (v, [b; 32])).collect()).expect("valid")
    }

    #[test]
    fn ct_eq_tells_equal_from_different_digests() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(ct_eq(&a, &b));
        b[31] ^= 1;
        assert!(!ct_eq(&a, &b));
        b = a;
        b[0] ^= 0x80;
        assert!(!ct_eq(&a, &b));
    }

    #[test]
    fn debug_never_prints_pepper_bytes() {
        let p = Peppers::new(vec![(1, [0xab; 32]), (2, [0xcd; 32])]).expect("valid");
        let shown = format!("{p:?} {p:#?}");
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}"); // 0xab in decimal
        assert!(!shown.contains("205"), "{shown}"); // 0xcd in decimal
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn digest_is_hmac_sha256_under_the_current_pepper() {
        let p = peppers(&[(1, 1), (3, 3), (2, 2)]);
        assert_eq!(p.current_version(), 3);
        assert_eq!(p.versions(), vec![3, 2, 1]);
        let d = p.digest("kw_abc");
        assert_eq!(d.version, DigestVersion::Hmac(3));
        let mut reference = HmacSha256::new_from_slice(&[3; 32]).expect("any length");
        reference.update(b"kw_abc");
        let expected: [u8; 32] = reference.finalize().into_bytes().into();
        assert_eq!(d.bytes, expected);
        // The pre-keyed states give the same result every time.
        assert_eq!(p.digest("kw_abc"), d);
        assert_ne!(p.digest("kw_abd"), d);
    }

    #[test]
    fn precomputed_hmac_matches_the_reference_at_every_padding_boundary() {
        // Lengths around one and two blocks, where the padding spills into an extra block.
        let secret = Peppers::generate_secret();
        let p = Peppers::new(vec![(1, secret)]).expect("valid");
        let mut rng = rand::thread_rng();
        for len in 0..=300 {
            let key: String = (0..len)
                .map(|_| char::from(b'a' + (rng.next_u32() % 26) as u8))
                .collect();
            let mut reference = HmacSha256::new_from_slice(&secret).expect("any length");
            reference.update(key.as_bytes());
            let expected: [u8; 32] = reference.finalize().into_bytes().into();
            assert_eq!(p.digest(&key).bytes, expected, "length {len}");
        }
    }

    #[test]
    fn lookup_compresses_short_keys_once_and_hashes_the_rest_under_another_secret() {
        let mut rng = rand::thread_rng();
        let (mut short, mut long) = ([0u8; 64], [0u8; 64]);
        rng.fill_bytes(&mut short);
        rng.fill_bytes(&mut long);
        let p = Peppers {
            lookup: lookup_state(&short),
            lookup_long: lookup_state(&long),
            ..peppers(&[(1, 1)])
        };
        // By hand: from SHA-256's IV, the secret block, then the key zero-padded to a block,
        // and no SHA-256 padding after it. (sha2's compression function itself is checked
        // against its hasher by the HMAC tests above.)
        let compress_once = |secret: &[u8; 64], block: &[u8]| {
            let mut state = SHA256_IV;
            for b in [&secret[..], block] {
                sha2::compress256(
                    &mut state,
                    std::slice::from_ref(GenericArray::from_slice(b)),
                );
            }
            state_bytes(state)
        };
        for len in 0..=300 {
            let key: String = (0..len)
                .map(|_| char::from(b'a' + (rng.next_u32() % 26) as u8))
                .collect();
            let expected = if len <= 64 {
                let mut block = [0u8; 64];
                block[..len].copy_from_slice(key.as_bytes());
                compress_once(&short, &block)
            } else {
                let mut reference = Sha256::new();
                reference.update(long);
                reference.update(key.as_bytes());
                reference.finalize().into()
            };
            assert_eq!(p.lookup(&key), expected, "length {len}");
        }
        // A NUL would make zero padding ambiguous: such a key takes the long way.
        let mut reference = Sha256::new();
        reference.update(long);
        reference.update(b"kw\0");
        let expected: [u8; 32] = reference.finalize().into();
        assert_eq!(p.lookup("kw\0"), expected);
        assert_ne!(p.lookup("kw\0"), p.lookup("kw"));
    }

    #[test]
    fn lookup_digests_are_stable_per_set_and_fresh_per_set() {
        let a = peppers(&[(1, 1)]);
        let b = peppers(&[(1, 1)]);
        assert_eq!(a.lookup("kw_abc"), a.lookup("kw_abc"));
        assert_ne!(a.lookup("kw_abc"), a.lookup("kw_abd"));
        // Same peppers, another secret: nothing about a lookup digest outlives its process.
        assert_ne!(a.lookup("kw_abc"), b.lookup("kw_abc"));
        assert_eq!(a.digest("kw_abc"), b.digest("kw_abc"));
        assert_ne!(a.lookup("kw_abc"), a.digest("kw_abc").bytes);
    }

    #[test]
    fn rotated_pepper_still_finds_keys_digested_under_the_old_one() {
        let v1 = peppers(&[(1, 1)]);
        let stored = v1.digest("orders_secret");
        let rotated = peppers(&[(1, 1), (2, 2)]);
        let candidates = rotated.candidates("orders_secret");
        assert_eq!(candidates.len(), 3);
        assert_eq!(candidates[0].version, DigestVersion::Hmac(2));
        assert_eq!(candidates[1], stored);
        assert_eq!(candidates[2].version, DigestVersion::Sha256);
        assert!(rotated.matches("orders_secret", &stored));
        assert!(rotated.matches("orders_secret", &candidates[0]));
        assert!(!rotated.matches("orders_secreT", &stored));
        assert_eq!(
            rotated.digest("orders_secret").version,
            DigestVersion::Hmac(2)
        );
    }

    #[test]
    fn imported_sha256_digests_match_and_unknown_versions_do_not() {
        let p = peppers(&[(1, 1)]);
        let imported = KeyDigest {
            version: DigestVersion::Sha256,
            bytes: Sha256::digest(b"legacy_key").into(),
        };
        assert!(p.matches("legacy_key", &imported));
        let unknown = KeyDigest {
            version: DigestVersion::Hmac(9),
            bytes: p.digest("legacy_key").bytes,
        };
        assert!(!p.matches("legacy_key", &unknown));
    }

    #[test]
    fn invalid_pepper_sets_are_refused() {
        assert!(Peppers::new(vec![]).is_err());
        assert!(Peppers::new(vec![(0, [1; 32])]).is_err());
        assert!(Peppers::new(vec![(1, [1; 32]), (1, [2; 32])]).is_err());
    }

    #[test]
    fn pepper_file_round_trips_and_errors_name_the_line_not_the_secret() {
        let p = peppers(&[(1, 0x11), (2, 0x22)]);
        let text = p.to_file_contents();
        let back = Peppers::parse_file_contents(&text).expect("round trip");
        assert_eq!(back.versions(), vec![2, 1]);
        assert_eq!(back.digest("k"), p.digest("k"));

        let upper = format!("# comment\n\nv5:{}\n", "AB".repeat(32));
        assert_eq!(
            Peppers::parse_file_contents(&upper)
                .expect("upper-case hex")
                .current_version(),
            5
        );

        let secret = "cd".repeat(31);
        for (bad, line) in [
            (format!("v1:{secret}"), "line 1"),
            (format!("# c\nv1:{secret}zz"), "line 2"),
            (format!("v0:{secret}ab"), "line 1"),
            (format!("x1:{secret}ab"), "line 1"),
            (format!("v1{secret}ab"), "line 1"),
            (format!("v1:{secret}ab\nv1:{secret}ab"), "line 2"),
        ] {
            let err = Peppers::parse_file_contents(&bad).expect_err(&bad);
            assert!(err.contains(line), "{err}");
            assert!(!err.contains("cdcd"), "{err}");
        }
        assert!(Peppers::parse_file_contents("").is_err());
    }

    #[test]
    fn pepper_file_is_created_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested").join("pepper");
        let created = Peppers::load_or_create(&path).expect("created");
        assert_eq!(created.current_version(), 1);
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let reloaded = Peppers::load_or_create(&path).expect("reloaded");
        assert_eq!(reloaded.digest("kw_x"), created.digest("kw_x"));
    }

    #[test]
    fn pepper_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pepper");
        Peppers::load_or_create(&path).expect("created");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Peppers::load_or_create(&path).expect_err("refused");
        assert!(err.to_string().contains("group or others"), "{err}");
    }

    #[test]
    fn corrupt_pepper_file_is_invalid_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pepper");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .expect("create");
            f.write_all(b"v1:nothex\n").expect("write");
        }
        let err = Peppers::load_or_create(&path).expect_err("invalid");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
