use core::fmt;

/// A Babel route metric: `0xFFFF` is infinite (a retraction), and addition saturates just below
/// it so that a finite route never becomes a retraction by being far away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Metric(pub u16);

impl Metric {
    /// The infinite metric: the route is retracted.
    pub const INFINITE: Self = Self(0xFFFF);
    /// The largest finite metric.
    pub const MAX_FINITE: Self = Self(0xFFFE);

    /// Whether this is the infinite metric.
    pub fn is_infinite(self) -> bool {
        self == Self::INFINITE
    }

    /// Absolute difference, for "did the metric change by more than N" checks.
    pub fn delta(self, other: Self) -> u16 {
        self.0.abs_diff(other.0)
    }
}

/// `a + b` is infinite if either is, else saturates at [`Metric::MAX_FINITE`].
impl core::ops::Add for Metric {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        if self.is_infinite() || other.is_infinite() {
            return Self::INFINITE;
        }
        Self(self.0.saturating_add(other.0).min(Self::MAX_FINITE.0))
    }
}

impl From<u16> for Metric {
    fn from(v: u16) -> Self {
        Self(v)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.is_infinite() {
            true => f.write_str("infinite"),
            false => self.0.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Metric;

    #[test]
    fn saturates_below_infinity() {
        assert_eq!(Metric(10) + Metric(5), Metric(15));
        assert_eq!(Metric(0xFFF0) + Metric(0x100), Metric::MAX_FINITE);
        assert_eq!(Metric::MAX_FINITE + Metric(1), Metric::MAX_FINITE);
        assert_eq!(Metric::INFINITE + Metric(0), Metric::INFINITE);
        assert_eq!(Metric(0) + Metric::INFINITE, Metric::INFINITE);
        assert_eq!(Metric(3).delta(Metric(10)), 7);
    }
}
