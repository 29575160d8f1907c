use core::fmt;
use core::time::Duration;

/// A Babel interval, carried on the wire in centiseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Interval(pub u16);

impl Interval {
    /// Builds from a duration, rounding down to centiseconds and saturating at 655.35 s.
    pub fn from_duration(d: Duration) -> Self {
        let cs = d.as_millis() / 10;
        Self(u16::try_from(cs).unwrap_or(u16::MAX))
    }

    /// Builds from whole seconds, saturating.
    pub const fn from_secs(secs: u16) -> Self {
        Self(secs.saturating_mul(100))
    }

    /// The interval as a duration.
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(u64::from(self.0) * 10)
    }

    /// The raw number of centiseconds.
    pub fn centis(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}s", self.0 / 100, self.0 % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centiseconds() {
        assert_eq!(Interval::from_secs(20), Interval(2000));
        assert_eq!(Interval(30000).as_duration(), Duration::from_secs(300));
        assert_eq!(
            Interval::from_duration(Duration::from_millis(6)),
            Interval(0)
        );
        assert_eq!(
            Interval::from_duration(Duration::from_secs(1000)),
            Interval(u16::MAX)
        );
        assert_eq!(Interval::from_secs(700), Interval(u16::MAX));
    }
}
