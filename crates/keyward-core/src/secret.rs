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

/// A presented key borrowed from where it arrived (a request header the gateway proxies),
/// redacted like [`KeyMaterial`]: `expose` is the only way to its characters.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyRef<'a>(&'a str);

impl<'a> KeyRef<'a> {
    pub fn new(s: &'a str) -> Self {
        Self(s)
    }

    pub fn expose(&self) -> &'a str {
        self.0
    }
}

impl fmt::Debug for KeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyRef(<redacted>)")
    }
}

impl KeyMaterial {
    /// Borrows the key as a [`KeyRef`].
    pub fn as_key_ref(&self) -> KeyRef<'_> {
        KeyRef(&self.0)
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

    #[test]
    fn a_borrowed_key_and_the_verify_input_holding_it_never_print_it() {
        let k = KeyMaterial::new("orders_supersecretvalue123".to_owned());
        let input = crate::model::VerifyInput {
            key: k.as_key_ref(),
            path: Some("/v1/orders"),
            ..Default::default()
        };
        let shown = format!("{:?} {input:?} {input:#?}", k.as_key_ref());
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("redacted") && shown.contains("/v1/orders"));
        assert_eq!(input.key.expose(), "orders_supersecretvalue123");
    }
}
