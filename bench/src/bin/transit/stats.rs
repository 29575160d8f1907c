//! Figures measured once per round, their spread, and when a difference counts as a result.
//!
//! Every figure `transit` reports is measured in rounds that take turns with the runs it is
//! compared against, so a round of one path and the matching round of the other see the same
//! state of a shared machine. A figure is the median over rounds, given with its spread: the
//! lowest and highest round. A difference (an added latency, a hyphae/stock ratio) whose spread
//! reaches the value that means "no difference" (0 us, a ratio of 1) is inside the run-to-run
//! noise: it is printed as *inconclusive* with its spread, never as a number.

use serde_json::{Value, json};

/// Rounds an added latency needs before it can be a result. With paired rounds, "every round's
/// difference is above zero" happens by chance with probability 2^-n when the paths are in fact
/// equal (a sign test): 12.5 % for 3 rounds, 3.1 % for 5, 0.02 % for 12. Below 5 rounds the
/// spread cannot tell a hop's cost from noise, so the figure stays inconclusive.
pub(crate) const MIN_ROUNDS_FOR_ADDED: usize = 5;

/// One figure over rounds: every round's value (NaN where a round measured nothing).
#[derive(Clone, Debug, Default)]
pub(crate) struct Spread {
    per_round: Vec<f64>,
}

impl Spread {
    pub(crate) fn new(per_round: Vec<f64>) -> Self {
        Self { per_round }
    }

    /// The rounds that measured something.
    fn finite(&self) -> impl Iterator<Item = f64> + '_ {
        self.per_round.iter().copied().filter(|v| v.is_finite())
    }

    /// Rounds that measured something.
    pub(crate) fn rounds(&self) -> usize {
        self.finite().count()
    }

    /// The median over the rounds that measured something (NaN when none did).
    pub(crate) fn median(&self) -> f64 {
        median(&self.finite().collect::<Vec<_>>())
    }

    /// The lowest round (NaN when no round measured anything).
    pub(crate) fn min(&self) -> f64 {
        self.finite().reduce(f64::min).unwrap_or(f64::NAN)
    }

    /// The highest round (NaN when no round measured anything).
    pub(crate) fn max(&self) -> f64 {
        self.finite().reduce(f64::max).unwrap_or(f64::NAN)
    }

    /// `median (min..max)` with `digits` decimals, each value divided by `scale`.
    pub(crate) fn show(&self, scale: f64, digits: usize, unit: &str) -> String {
        if self.rounds() == 0 {
            return "not measured".into();
        }
        let (md, lo, hi) = (
            self.median() / scale,
            self.min() / scale,
            self.max() / scale,
        );
        format!("{md:.digits$}{unit} ({lo:.digits$}..{hi:.digits$})")
    }

    /// `{"median", "min", "max", "per_round"}`; NaN becomes null.
    pub(crate) fn json(&self) -> Value {
        json!({
            "median": self.median(), "min": self.min(), "max": self.max(),
            "per_round": self.per_round,
        })
    }
}

/// What a hop adds over a base path at one percentile: each round's difference of that
/// round's percentiles (the two rounds ran moments apart), and the difference of the
/// percentiles of the merged distributions.
#[derive(Clone, Debug)]
pub(crate) struct Added {
    pub(crate) per_round: Spread,
    pub(crate) merged: f64,
}

impl Added {
    /// A result only when there are enough rounds, every round shows the hop slower (the
    /// spread lies above zero) and the merged distributions agree. Anything else is inside the
    /// noise, and a negative added latency cannot be a hop's cost.
    pub(crate) fn conclusive(&self) -> bool {
        self.per_round.rounds() >= MIN_ROUNDS_FOR_ADDED
            && self.per_round.min() > 0.0
            && self.merged > 0.0
    }

    /// `13.6 us (spread 8.6..23.7 us)`, or `inconclusive (spread -120.4..210.5 us)`.
    pub(crate) fn show(&self) -> String {
        let s = &self.per_round;
        if s.rounds() == 0 {
            return "inconclusive (no round measured)".into();
        }
        let spread = format!("spread {:.1}..{:.1} us", s.min(), s.max());
        if self.conclusive() {
            format!("{:.1} us ({spread})", s.median())
        } else if s.rounds() < MIN_ROUNDS_FOR_ADDED {
            format!(
                "inconclusive ({spread}; {} rounds, fewer than {MIN_ROUNDS_FOR_ADDED})",
                s.rounds()
            )
        } else {
            format!("inconclusive ({spread})")
        }
    }

    pub(crate) fn json(&self) -> Value {
        let mut v = self.per_round.json();
        v["merged"] = json!(self.merged);
        v["rounds"] = json!(self.per_round.rounds());
        v["conclusive"] = json!(self.conclusive());
        v
    }
}

/// A ratio over paired rounds (hyphae's figure over stock's in the same round).
#[derive(Clone, Debug)]
pub(crate) struct Ratio(pub(crate) Spread);

impl Ratio {
    /// Each round's `a / b`, where both measured something.
    pub(crate) fn of(a: &Spread, b: &Spread) -> Self {
        let per = a
            .per_round
            .iter()
            .zip(&b.per_round)
            .map(|(x, y)| if *y > 0.0 { x / y } else { f64::NAN })
            .collect();
        Self(Spread::new(per))
    }

    /// A result when the whole spread is on one side of 1.
    pub(crate) fn conclusive(&self) -> bool {
        let s = &self.0;
        s.rounds() > 0 && (s.min() > 1.0 || s.max() < 1.0)
    }

    /// `3.12x (spread 2.95..3.30)`, or `inconclusive (spread 0.97..1.04)`.
    pub(crate) fn show(&self) -> String {
        let s = &self.0;
        if s.rounds() == 0 {
            return "not measured".into();
        }
        let spread = format!("spread {:.2}..{:.2}", s.min(), s.max());
        if self.conclusive() {
            format!("{:.2}x ({spread})", s.median())
        } else {
            format!("inconclusive ({spread})")
        }
    }

    pub(crate) fn json(&self) -> Value {
        let mut v = self.0.json();
        v["conclusive"] = json!(self.conclusive());
        v
    }
}

/// The median of `v` (NaN when empty).
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(rounds: &[f64], merged: f64) -> Added {
        Added {
            per_round: Spread::new(rounds.to_vec()),
            merged,
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn spread_skips_rounds_that_measured_nothing() {
        let s = Spread::new(vec![3.0, f64::NAN, 1.0, 2.0]);
        assert_eq!(
            (s.rounds(), s.median(), s.min(), s.max()),
            (3, 2.0, 1.0, 3.0)
        );
        assert_eq!(s.show(1.0, 1, " us"), "2.0 us (1.0..3.0)");
        assert!(Spread::new(vec![f64::NAN]).median().is_nan());
        assert_eq!(Spread::default().show(1.0, 1, ""), "not measured");
        // NaN is written as null, so the JSON stays valid.
        assert_eq!(s.json()["per_round"][1], Value::Null);
    }

    #[test]
    fn added_is_a_number_only_above_the_noise() {
        let up = [8.6, 12.0, 13.6, 14.0, 23.7];
        assert_eq!(added(&up, 14.2).show(), "13.6 us (spread 8.6..23.7 us)");
        // A spread that reaches zero, a negative merged difference, a negative median, too
        // few rounds: never a number.
        let across = [-1289.1, 30.0, 61.1, 70.0, 417.2];
        assert_eq!(
            added(&across, 20.0).show(),
            "inconclusive (spread -1289.1..417.2 us)"
        );
        assert!(!added(&up, -78.6).conclusive());
        assert!(!added(&[-5.0, -4.0, -3.0, -2.0, -1.0], -3.0).conclusive());
        assert_eq!(
            added(&[10.0, 11.0, 12.0], 11.0).show(),
            "inconclusive (spread 10.0..12.0 us; 3 rounds, fewer than 5)"
        );
        assert_eq!(added(&[], 1.0).show(), "inconclusive (no round measured)");
    }

    #[test]
    fn ratio_pairs_rounds_and_is_inconclusive_across_one() {
        let a = Spread::new(vec![10.0, 12.0, 9.0]);
        let b = Spread::new(vec![2.0, 3.0, 0.0]);
        let r = Ratio::of(&a, &b);
        assert_eq!(r.0.rounds(), 2);
        assert_eq!(r.show(), "4.50x (spread 4.00..5.00)");
        let even = Ratio::of(&Spread::new(vec![0.97, 1.04]), &Spread::new(vec![1.0, 1.0]));
        assert_eq!(even.show(), "inconclusive (spread 0.97..1.04)");
    }
}
