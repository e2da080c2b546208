//! Key material: a plaintext key that never prints, never serializes, and is wiped on drop.

use std::fmt;
use zeroize::Zeroizing;

/// A plaintext API key or root key.
///
/// Security: `Debug` and `Display` print `<redacted>`, there is deliberately no `Serialize`
/// (serde would bypass `Debug`), and the buffer is zeroed when dropped. The only way to the
/// characters is [`KeyMaterial::expose`], which should appear only where the key is digested
/// or handed to the caller exactly once.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyMaterial(Zeroizing<String>);

impl KeyMaterial {
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

impl fmt::Display for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Keys arrive in request bodies, so they deserialize; they never serialize.
impl<'de> serde::Deserialize<'de> for KeyMaterial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_print_the_key() {
        let k = KeyMaterial::new("orders_supersecretvalue123".to_owned());
        let shown = format!("{k:?} {k} {k:#?} {k:>40}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("redacted"));
        assert_eq!(k.expose(), "orders_supersecretvalue123");
    }
}
