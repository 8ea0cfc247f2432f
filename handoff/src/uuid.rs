//! Sixteen bytes written as 32 hex digits: an image's uuid, the token of
//! a mailbox.

use std::fmt;

/// Sixteen bytes, shown and read as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A random one, from the kernel's pool ([`kjump_sys::random::uuid`]).
    pub fn random() -> Uuid {
        Uuid(kjump_sys::random::uuid())
    }

    /// Reads 32 hex digits.
    pub fn parse(s: &str) -> Option<Uuid> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut u = [0u8; 16];
        for (i, b) in u.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Uuid(u))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::Uuid;

    #[test]
    fn hex_round_trips() {
        let u = Uuid(*b"0123456789abcdef");
        assert_eq!(u.to_string(), "30313233343536373839616263646566");
        assert_eq!(Uuid::parse(&u.to_string()), Some(u));
        assert_eq!(Uuid::parse("3031"), None);
        assert_eq!(Uuid::parse(&"zz".repeat(16)), None);
        assert_eq!(Uuid::parse(&"é".repeat(16)), None);
    }
}
