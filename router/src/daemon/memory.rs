//! Giving the allocator's idle memory back while the node runs.
//!
//! The binary picks the allocator and says how to trim it ([`set_trim`]); every thread that
//! allocates for the node (the workers, the control thread, the API thread) calls that every
//! [`TRIM_EVERY`] from a task of its own ([`trim_periodically`]). With mimalloc, a block
//! freed by another thread than the one that allocated it only goes back to its page when the
//! owning thread next takes from that page's size class: a thread gone quiet (the API thread
//! between requests, a worker whose links went away) otherwise keeps such pages resident.

use std::sync::OnceLock;
use std::time::Duration;

/// How often each thread trims.
pub(crate) const TRIM_EVERY: Duration = Duration::from_secs(2);

static TRIM: OnceLock<fn()> = OnceLock::new();

/// Sets what each of the node's threads calls for itself, once per period: the
/// allocator's "collect this thread's freed memory". Only the first call counts; without
/// one, nothing is trimmed.
pub fn set_trim(trim: fn()) {
    let _ = TRIM.set(trim);
}

/// Trims the current thread's allocator memory now, if [`set_trim`] was called.
pub(crate) fn trim() {
    if let Some(f) = TRIM.get() {
        f();
    }
}

/// Trims this thread's allocator memory every [`TRIM_EVERY`], for ever (until its runtime
/// stops); does nothing if no trim was set.
pub(crate) async fn trim_periodically() {
    trim_every(TRIM_EVERY).await;
}

async fn trim_every(period: Duration) {
    if TRIM.get().is_none() {
        return;
    }
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        trim();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::*;

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    fn count() {
        CALLS.fetch_add(1, Relaxed);
    }

    #[test]
    fn each_thread_trims_its_memory_every_period() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Nothing is trimmed before a trim is set.
        rt.block_on(async {
            let _ = tokio::time::timeout(
                Duration::from_millis(60),
                trim_every(Duration::from_millis(10)),
            )
            .await;
        });
        assert_eq!(CALLS.load(Relaxed), 0);
        set_trim(count);
        // Trims keep coming, period after period, while the thread runs.
        let kept_on = rt.block_on(async {
            let trims = trim_every(Duration::from_millis(10));
            let three = async {
                while CALLS.load(Relaxed) < 3 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::select! {
                _ = trims => false,
                _ = three => true,
                _ = tokio::time::sleep(Duration::from_secs(10)) => false,
            }
        });
        assert!(kept_on, "{} trims", CALLS.load(Relaxed));
    }
}
