//! Receive-buffer sizing for TCP peer links, sans-IO.
//!
//! Left alone, Linux autotunes a receive buffer up to `tcp_rmem`'s maximum (32 MiB on tuned
//! hosts). When this node is the bottleneck (a fast peer on a short path, a CPU-bound worker)
//! that whole buffer fills, and every frame from that peer waits behind it: tens of
//! milliseconds of queue inside the kernel, where nothing can count or drop it. (The window
//! clamp alone does not help: it bounds what is in flight, not what waits unread.)
//!
//! [`BufferGovernor`] replaces autotuning for a link: the buffer starts at a floor and follows
//! twice the bandwidth-delay product (the rate this node drains the link times the kernel's
//! receive-side RTT estimate). A buffer smaller than what the peer could send caps its rate,
//! which then doubles the next target, so the buffer grows as fast as the peer fills it (like
//! slow start). It shrinks only when the link has calmed down and what is queued fits well
//! inside the smaller size, so a shrink never makes the kernel drop data it had already
//! made room for. Standing queue in the buffer is then about one RTT of data (or the floor),
//! and the backlog of a saturated node stays in the sender's own bounded queues, which it can
//! count and drop.
//!
//! The driver sets the floor when the link comes up, then samples every [`SAMPLE_INTERVAL`]:
//! bytes read so far, the RTT estimate and the bytes queued unread in; a new size to apply
//! (`SO_RCVBUF` and `TCP_WINDOW_CLAMP`) out.

use std::time::{Duration, Instant};

/// How often the driver samples a link.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// The buffer a link starts with and never goes below (bytes). Enough for a short path at
/// full speed, with a read or two of slack for a worker that was briefly descheduled.
pub const DEFAULT_FLOOR: u32 = 256 * 1024;

/// The largest buffer the governor asks for (the kernel doubles it for bookkeeping, and caps
/// it at `net.core.rmem_max` unless the process has CAP_NET_ADMIN). The driver lowers it to
/// what autotuning could reach (half of `net.ipv4.tcp_rmem`'s maximum).
pub const CEILING: u32 = 32 << 20;

/// Sizes one link's receive buffer; see the module docs.
#[derive(Debug, Clone)]
pub struct BufferGovernor {
    floor: u32,
    ceiling: u32,
    size: u32,
    /// Time and byte count of the previous sample.
    last: Option<(Instant, u64)>,
}

impl BufferGovernor {
    /// A governor for a link whose buffer was just set to `floor` bytes, never asking for more
    /// than `ceiling` (itself at most [`CEILING`]).
    pub fn new(floor: u32, ceiling: u32) -> Self {
        let ceiling = ceiling.min(CEILING);
        let floor = floor.clamp(64 * 1024, CEILING).min(ceiling.max(64 * 1024));
        Self {
            floor,
            ceiling: ceiling.max(floor),
            size: floor,
            last: None,
        }
    }

    /// The size the link starts with.
    pub fn floor(&self) -> u32 {
        self.floor
    }

    /// The size in force (the last one returned, or the floor).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Whether a sample is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|(t, _)| now.saturating_duration_since(t) >= SAMPLE_INTERVAL)
    }

    /// Takes a sample: `read` is every byte read from the link so far, `rtt` the kernel's
    /// receive-side RTT estimate (`None` while it has none), `queued` the bytes waiting unread.
    /// Returns the new buffer size when it should change.
    pub fn sample(
        &mut self,
        now: Instant,
        read: u64,
        rtt: Option<Duration>,
        queued: u32,
    ) -> Option<u32> {
        let Some((t, bytes)) = self.last else {
            self.last = Some((now, read));
            return None;
        };
        let elapsed = now.saturating_duration_since(t);
        if elapsed < SAMPLE_INTERVAL / 2 {
            return None;
        }
        self.last = Some((now, read));
        let rtt = rtt.filter(|r| !r.is_zero())?;
        let rate = read.saturating_sub(bytes) as f64 / elapsed.as_secs_f64();
        let bdp2 = 2.0 * rate * rtt.as_secs_f64();
        let target = (bdp2.min(f64::from(self.ceiling)) as u32).clamp(self.floor, self.ceiling);
        let size = self.size;
        let new = if target > size + size / 8 {
            target
        } else if target < size - size / 4 && queued < target / 2 {
            // Calm: halve at most, and only while what waits fits well inside.
            target.max(size / 2)
        } else {
            return None;
        };
        self.size = new;
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Drains `rate` bytes/s with `queued` bytes waiting, for `samples` intervals.
    fn run(
        g: &mut BufferGovernor,
        t: &mut Instant,
        read: &mut u64,
        rate: f64,
        rtt: Duration,
        queued: u32,
        samples: usize,
    ) -> u32 {
        for _ in 0..samples {
            *t += SAMPLE_INTERVAL;
            *read += (rate * SAMPLE_INTERVAL.as_secs_f64()) as u64;
            g.sample(*t, *read, Some(rtt), queued);
        }
        g.size()
    }

    fn start() -> (BufferGovernor, Instant, u64) {
        let mut g = BufferGovernor::new(DEFAULT_FLOOR, CEILING);
        let t = Instant::now();
        assert_eq!(g.sample(t, 0, None, 0), None);
        (g, t, 0)
    }

    #[test]
    fn a_saturated_short_link_is_held_at_the_floor() {
        // 1.2 GB/s drained over a 100 us path, buffer full: 2 x BDP is 240 kB, under the floor.
        let (mut g, mut t, mut read) = start();
        let s = run(&mut g, &mut t, &mut read, 1.2e9, MS / 10, DEFAULT_FLOOR, 20);
        assert_eq!(s, DEFAULT_FLOOR);
    }

    #[test]
    fn a_long_fat_link_gets_twice_its_bdp() {
        // 100 MB/s over 80 ms: BDP 8 MB, buffer 16 MB.
        let (mut g, mut t, mut read) = start();
        let s = run(&mut g, &mut t, &mut read, 100e6, 80 * MS, 0, 10);
        assert!((15_000_000..=17_000_000).contains(&s), "{s}");
    }

    #[test]
    fn a_window_limited_sender_grows_it_every_sample() {
        // The peer sends one buffer per RTT: the rate follows the size, the size doubles.
        let rtt = 40 * MS;
        let (mut g, mut t, mut read) = start();
        let mut seen = vec![g.size()];
        for _ in 0..7 {
            t += SAMPLE_INTERVAL;
            read +=
                (f64::from(g.size()) / rtt.as_secs_f64() * SAMPLE_INTERVAL.as_secs_f64()) as u64;
            if let Some(s) = g.sample(t, read, Some(rtt), 0) {
                seen.push(s);
            }
        }
        assert!(seen.windows(2).all(|w| w[1] >= w[0] * 19 / 10), "{seen:?}");
        assert_eq!(g.size(), CEILING, "{seen:?}");
    }

    #[test]
    fn it_shrinks_by_half_at_most_and_only_with_little_queued() {
        let (mut g, mut t, mut read) = start();
        let big = run(&mut g, &mut t, &mut read, 100e6, 80 * MS, 0, 5);
        // Overloaded: the rate falls but the buffer is full; shrinking now would make the
        // kernel drop data it already accepted room for.
        let held = run(&mut g, &mut t, &mut read, 1e6, 80 * MS, big / 2, 3);
        assert_eq!(held, big);
        let after = run(&mut g, &mut t, &mut read, 0.0, 80 * MS, 0, 1);
        assert_eq!(after, big / 2);
        let later = run(&mut g, &mut t, &mut read, 0.0, 80 * MS, 0, 30);
        assert_eq!(later, DEFAULT_FLOOR);
    }

    #[test]
    fn no_rtt_no_change_and_small_changes_are_not_applied() {
        let (mut g, t, _) = start();
        assert!(g.sample(t + SAMPLE_INTERVAL, 1 << 30, None, 0).is_none());
        assert_eq!(g.size(), DEFAULT_FLOOR);
        // 2 x 2.6 MB/s x 50 ms = 262 kB: within an eighth of the floor.
        let n = (2.6e6 * SAMPLE_INTERVAL.as_secs_f64()) as u64;
        assert!(
            g.sample(t + 2 * SAMPLE_INTERVAL, (1 << 30) + n, Some(50 * MS), 0)
                .is_none()
        );
    }

    #[test]
    fn the_ceiling_is_what_autotuning_could_reach() {
        let mut g = BufferGovernor::new(DEFAULT_FLOOR, 3 << 20);
        let (mut t, mut read) = (Instant::now(), 0);
        g.sample(t, read, None, 0);
        assert_eq!(
            run(&mut g, &mut t, &mut read, 100e6, 80 * MS, 0, 5),
            3 << 20
        );
        // A ceiling under the floor wins over it.
        assert_eq!(BufferGovernor::new(DEFAULT_FLOOR, 100_000).size(), 100_000);
    }

    #[test]
    fn samples_too_close_together_are_ignored() {
        let (mut g, t, _) = start();
        assert!(!g.due(t + MS));
        assert!(g.due(t + SAMPLE_INTERVAL));
        assert!(g.sample(t + MS, 1 << 30, Some(10 * MS), 0).is_none());
    }
}
