//! Publishing a table as immutable snapshots for what changed, not for the whole table.
//!
//! A [`SnapshotWriter`] keeps two copies of its table (left-right): the snapshot readers see
//! (published through an [`ArcSwap`]) and the staged one it changes. Publishing hands the staged
//! copy to the readers and takes the previous snapshot back as the next staged copy; the first
//! change after that replays on it the changes it missed (the last batch), once no reader holds
//! it any more (`Arc::get_mut`), so a publication costs `O(changes)` and readers keep one plain
//! hash map each, a lookup as fast as before. A snapshot is never changed while anyone can see
//! it: the writer changes a copy only when it holds the one reference to it.
//!
//! If a reader still holds the previous snapshot at the first change after a publication (it
//! kept it across a whole batch of the writer), or the missed changes are many compared with
//! the table, the writer copies the current snapshot instead: the cost every publication paid
//! before. [`SnapshotWriter::full_copies`] counts those.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// A table that a [`SnapshotWriter`] publishes: it changes one [`Table::Change`] at a time,
/// and applying the same changes in the same order to equal tables gives equal tables.
pub trait Table: Clone {
    /// One change.
    type Change;

    /// Applies one change in place.
    fn apply_change(&mut self, change: &Self::Change);

    /// Number of entries (what a copy of the table costs, against the changes to replay).
    fn entries(&self) -> usize;
}

/// A map publishes `(key, Some(value))` as an insert and `(key, None)` as a removal.
impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Clone> Table for HashMap<K, V, S> {
    type Change = (K, Option<V>);

    fn apply_change(&mut self, (k, v): &Self::Change) {
        match v {
            Some(v) => self.insert(k.clone(), v.clone()),
            None => self.remove(k),
        };
    }

    fn entries(&self) -> usize {
        self.len()
    }
}

/// Missed changes are replayed while they are at most the entries divided by this (copying a
/// table costs about 1-2 ns an entry, replaying a change 30-80 ns).
const REPLAY_RATIO: usize = 32;

/// The single writer of a published table (see the [module docs](self)).
#[derive(Debug)]
pub struct SnapshotWriter<T: Table> {
    /// The table as published last (shared with the readers).
    published: Arc<T>,
    /// The next snapshot: the staged table, or, while `behind` is not empty, the snapshot
    /// before `published`, which may still have readers.
    staged: Arc<T>,
    /// The changes `published` has and `staged` lacks.
    behind: Vec<T::Change>,
    /// The changes applied since the last publication.
    since: Vec<T::Change>,
    full_copies: u64,
}

impl<T: Table> SnapshotWriter<T> {
    /// A writer whose staged and published tables are `table`; publish it with
    /// [`SnapshotWriter::published`] (an `ArcSwap` that [`SnapshotWriter::publish`] then stores
    /// into must hold a table equal to it).
    pub fn new(table: T) -> Self {
        Self {
            staged: Arc::new(table.clone()),
            published: Arc::new(table),
            behind: Vec::new(),
            since: Vec::new(),
            full_copies: 0,
        }
    }

    /// The table as last published.
    pub fn published(&self) -> &Arc<T> {
        &self.published
    }

    /// The staged table: the published one and every change since.
    pub fn staged(&self) -> &T {
        match self.behind.is_empty() {
            true => &self.staged,
            // Nothing was applied since the publication (the first change catches up).
            false => &self.published,
        }
    }

    /// Whether anything was applied since the last publication.
    pub fn is_dirty(&self) -> bool {
        !self.since.is_empty()
    }

    /// How many times the writer copied the whole table because replaying the missed changes
    /// was not possible (a reader held the previous snapshot) or not worth it.
    pub fn full_copies(&self) -> u64 {
        self.full_copies
    }

    /// Stages one change (readers don't see it until [`SnapshotWriter::publish`]).
    pub fn apply(&mut self, change: T::Change) {
        self.catch_up();
        Arc::make_mut(&mut self.staged).apply_change(&change);
        self.since.push(change);
    }

    /// Publishes the staged table into `to` if anything was applied since the last
    /// publication; returns whether it did. Costs `O(1)` here and the replay of the changes at
    /// the next [`SnapshotWriter::apply`]. `to` must be the one place this writer publishes to.
    pub fn publish(&mut self, to: &ArcSwap<T>) -> bool {
        if self.since.is_empty() {
            return false;
        }
        // `since` is only non-empty after an apply, which emptied `behind`.
        debug_assert!(self.behind.is_empty());
        self.published = Arc::clone(&self.staged);
        self.staged = to.swap(Arc::clone(&self.published));
        std::mem::swap(&mut self.behind, &mut self.since);
        true
    }

    /// Brings `staged` up to `published`: replays `behind` on it if no reader holds it, else
    /// copies `published`.
    fn catch_up(&mut self) {
        if self.behind.is_empty() {
            return;
        }
        let replay = self.behind.len() * REPLAY_RATIO <= self.published.entries();
        match Arc::get_mut(&mut self.staged).filter(|_| replay) {
            Some(t) => {
                for c in &self.behind {
                    t.apply_change(c);
                }
            }
            None => {
                self.staged = Arc::new(T::clone(&self.published));
                self.full_copies += 1;
            }
        }
        self.behind.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Map = HashMap<u32, u32>;

    fn writer(n: u32) -> (SnapshotWriter<Map>, ArcSwap<Map>) {
        let w = SnapshotWriter::new((0..n).map(|k| (k, k)).collect::<Map>());
        let to = ArcSwap::new(Arc::clone(w.published()));
        (w, to)
    }

    #[test]
    fn publishes_what_was_staged_and_replays_it_on_the_previous_copy() {
        let (mut w, to) = writer(1000);
        assert!(!w.publish(&to), "nothing staged");
        w.apply((1, Some(10)));
        w.apply((2, None));
        assert!(w.is_dirty());
        assert_eq!(to.load().get(&1), Some(&1), "not published yet");
        assert_eq!(w.staged().get(&1), Some(&10));
        assert!(w.publish(&to));
        assert!(!w.is_dirty());
        assert_eq!(to.load().get(&1), Some(&10));
        assert_eq!(to.load().get(&2), None);
        assert_eq!(
            w.staged(),
            &**to.load(),
            "staged = published after a publication"
        );
        // No reader holds the previous snapshot: the next change replays two, copies nothing.
        w.apply((3, Some(30)));
        assert_eq!(w.full_copies(), 0);
        assert_eq!(w.staged().get(&1), Some(&10));
        assert_eq!(w.staged().get(&2), None);
        assert_eq!(w.staged().get(&3), Some(&30));
        assert_eq!(w.staged().len(), 999);
        assert!(w.publish(&to));
        assert_eq!(&**to.load(), w.staged());
        w.apply((4, None));
        assert!(w.publish(&to));
        let expect: Map = (0..1000)
            .filter(|k| ![2, 4].contains(k))
            .map(|k| {
                (
                    k,
                    [(1, 10), (3, 30)]
                        .into_iter()
                        .find(|e| e.0 == k)
                        .map_or(k, |e| e.1),
                )
            })
            .collect();
        assert_eq!(**to.load(), expect);
        assert_eq!(w.full_copies(), 0);
    }

    #[test]
    fn a_snapshot_a_reader_holds_never_changes() {
        let (mut w, to) = writer(1000);
        w.apply((1, Some(10)));
        w.publish(&to);
        let held = to.load_full();
        let guard = to.load();
        w.apply((1, Some(11)));
        w.publish(&to);
        // `held` is the previous snapshot now, pinned: the writer copies the current one.
        w.apply((1, Some(12)));
        assert_eq!(w.full_copies(), 1);
        assert_eq!(held.get(&1), Some(&10));
        assert_eq!(guard.get(&1), Some(&10));
        assert_eq!(to.load().get(&1), Some(&11));
        assert_eq!(w.staged().get(&1), Some(&12));
        drop((held, guard));
        w.publish(&to);
        w.apply((5, None));
        assert_eq!(w.full_copies(), 1, "unpinned again: replayed");
        w.publish(&to);
        assert_eq!(to.load().get(&1), Some(&12));
        assert_eq!(to.load().get(&5), None);
        assert_eq!(to.load().len(), 999);
    }

    #[test]
    fn many_missed_changes_are_copied_not_replayed() {
        let (mut w, to) = writer(100);
        for k in 0..50 {
            w.apply((k, None));
        }
        w.publish(&to);
        w.apply((200, Some(1)));
        assert_eq!(w.full_copies(), 1);
        w.publish(&to);
        assert_eq!(to.load().len(), 51);
        assert!(to.load().contains_key(&200));
    }

    /// Random changes and publications against a model, with snapshots held for a while
    /// (some replays, some copies).
    #[test]
    fn matches_a_model() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let (mut w, to) = writer(0);
        let mut model = Map::new();
        let mut held: Vec<(Arc<Map>, Map)> = Vec::new();
        for _ in 0..50_000 {
            let r = next();
            let k = ((r >> 8) % 3000) as u32;
            match r % 64 {
                0 => {
                    assert_eq!(w.staged(), &model);
                    w.publish(&to);
                    assert_eq!(**to.load(), model);
                    if r % 3 == 0 {
                        held.push((to.load_full(), model.clone()));
                    }
                    if !held.is_empty() && (held.len() > 2 || r % 5 == 0) {
                        let (snap, then) = held.remove(0);
                        assert_eq!(*snap, then, "a held snapshot never changes");
                    }
                }
                1..=40 => {
                    w.apply((k, Some(r as u32)));
                    model.insert(k, r as u32);
                }
                _ => {
                    w.apply((k, None));
                    model.remove(&k);
                }
            }
            assert_eq!(w.staged().get(&k), model.get(&k));
            assert_eq!(w.staged().len(), model.len());
        }
        assert!(w.full_copies() > 0);
        for (snap, then) in held {
            assert_eq!(*snap, then);
        }
    }
}
