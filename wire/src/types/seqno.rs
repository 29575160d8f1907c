use core::fmt;

/// A 16-bit Babel sequence number, compared modulo 2^16 (RFC 8966 section 3.2.1).
///
/// There is deliberately no `PartialOrd`: the order is not transitive over the whole ring, so
/// callers must say which comparison they mean with [`SeqNo::lt`] and [`SeqNo::gt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNo(pub u16);

impl SeqNo {
    /// `self` is older than `other`: `0 < (other - self) mod 2^16 < 32768`.
    pub fn lt(self, other: Self) -> bool {
        let d = other.0.wrapping_sub(self.0);
        d != 0 && d < 0x8000
    }

    /// `self` is newer than `other`.
    pub fn gt(self, other: Self) -> bool {
        other.lt(self)
    }

    /// The next sequence number, wrapping at 2^16.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0.wrapping_add(1))
    }
}

impl From<u16> for SeqNo {
    fn from(v: u16) -> Self {
        Self(v)
    }
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::SeqNo;

    #[test]
    fn modular_order() {
        assert!(SeqNo(1).lt(SeqNo(2)));
        assert!(!SeqNo(2).lt(SeqNo(2)));
        assert!(SeqNo(65535).lt(SeqNo(0)), "wraps around");
        assert!(SeqNo(0).gt(SeqNo(65535)));
        assert!(SeqNo(0).lt(SeqNo(32767)));
        // Exactly half the ring away is neither older nor newer.
        assert!(!SeqNo(0).lt(SeqNo(32768)));
        assert!(!SeqNo(32768).lt(SeqNo(0)));
        assert_eq!(SeqNo(65535).next(), SeqNo(0));
    }
}
