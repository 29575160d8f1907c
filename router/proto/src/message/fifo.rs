//! A first-in first-out queue for the message subsystem's expiry orders, held in fixed-size
//! chunks.
//!
//! The orders keep an entry per record for the record's lifetime (300 or 600 s), so at a
//! steady load they hold thousands. A `VecDeque` holding them doubles its buffer at some
//! moment minutes into the load (8,192 entries of 56 bytes become a 917 KB buffer at once, the
//! old one freed), keeps up to half of it empty and never gives it back. Here memory follows the
//! entries a chunk at a time: at most one chunk more than they need, and chunks go back as the
//! front is consumed.

use std::collections::VecDeque;

/// Bytes of entries per chunk.
const CHUNK_BYTES: usize = 16 * 1024;

/// A FIFO of `Copy` entries in chunks of [`CHUNK_BYTES`]; see the module docs.
#[derive(Debug)]
pub(super) struct ChunkedFifo<T> {
    /// Each chunk has room for [`Self::per_chunk`] entries; the front one is consumed from
    /// `head`, the back one filled by pushes.
    chunks: VecDeque<Vec<T>>,
    head: usize,
    len: usize,
}

impl<T: Copy> ChunkedFifo<T> {
    pub(super) fn new() -> Self {
        Self {
            chunks: VecDeque::new(),
            head: 0,
            len: 0,
        }
    }

    /// Entries per chunk (at least 16, for entries larger than a chunk's worth of bytes).
    fn per_chunk() -> usize {
        (CHUNK_BYTES / size_of::<T>().max(1)).max(16)
    }

    pub(super) fn push_back(&mut self, v: T) {
        let per = Self::per_chunk();
        match self.chunks.back_mut() {
            Some(c) if c.len() < per => c.push(v),
            _ => {
                let mut c = Vec::with_capacity(per);
                c.push(v);
                self.chunks.push_back(c);
            }
        }
        self.len += 1;
    }

    pub(super) fn front(&self) -> Option<&T> {
        self.chunks.front()?.get(self.head)
    }

    pub(super) fn pop_front(&mut self) -> Option<T> {
        let last = self.chunks.len() == 1;
        let c = self.chunks.front_mut()?;
        let v = *c.get(self.head)?;
        self.head += 1;
        self.len -= 1;
        if self.head == c.len() {
            self.head = 0;
            if last {
                // The last chunk stays for the next pushes: a queue that empties and refills
                // does not allocate each time.
                c.clear();
            } else {
                self.chunks.pop_front();
            }
        }
        Some(v)
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Where entry `i` (0 = the front) is: chunk and place in it. Every chunk but the last is
    /// full and the front one keeps its consumed entries, so this is arithmetic.
    fn locate(&self, i: usize) -> Option<(usize, usize)> {
        if i >= self.len {
            return None;
        }
        let per = Self::per_chunk();
        let at = self.head + i;
        Some((at / per, at % per))
    }

    /// Entry `i`, counted from the front.
    pub(super) fn get(&self, i: usize) -> Option<&T> {
        let (c, j) = self.locate(i)?;
        self.chunks.get(c)?.get(j)
    }

    /// Entry `i`, counted from the front, to change it.
    pub(super) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        let (c, j) = self.locate(i)?;
        self.chunks.get_mut(c)?.get_mut(j)
    }

    /// Bytes held in chunks, used or not.
    #[cfg(test)]
    fn capacity_bytes(&self) -> usize {
        self.chunks.len() * Self::per_chunk() * size_of::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random pushes and pops against `VecDeque`, with a fixed-seed generator.
    #[test]
    fn behaves_as_a_vecdeque() {
        let mut q = ChunkedFifo::<(u64, [u8; 40])>::new();
        let mut model = VecDeque::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Phases that grow, drain and hover, so chunks fill, empty and are reused.
            let push_bias = match (i / 20_000) % 3 {
                0 => 70,
                1 => 30,
                _ => 50,
            };
            if x % 100 < push_bias {
                let v = (i, [(x >> 8) as u8; 40]);
                q.push_back(v);
                model.push_back(v);
            } else {
                assert_eq!(q.pop_front(), model.pop_front());
            }
            assert_eq!(q.front(), model.front());
            assert_eq!(q.len(), model.len());
            if !model.is_empty() {
                let k = (x >> 20) as usize % model.len();
                assert_eq!(q.get(k), model.get(k));
                if x.is_multiple_of(7) {
                    let v = (u64::MAX - i, [3; 40]);
                    *q.get_mut(k).unwrap() = v;
                    model[k] = v;
                }
            }
            assert_eq!(q.get(model.len()), None);
        }
        while let Some(v) = model.pop_front() {
            assert_eq!(q.pop_front(), Some(v));
        }
        assert_eq!(q.pop_front(), None);
        assert_eq!(q.front(), None);
    }

    #[test]
    fn memory_follows_the_entries() {
        type E = (u64, [u8; 48]);
        let per = ChunkedFifo::<E>::per_chunk();
        let mut q = ChunkedFifo::<E>::new();
        for i in 0..10_000u64 {
            q.push_back((i, [0; 48]));
        }
        let need = 10_000 * size_of::<E>();
        // At most one chunk more than the entries need.
        assert!(
            q.capacity_bytes() < need + CHUNK_BYTES,
            "{}",
            q.capacity_bytes()
        );
        // Consuming the front gives chunks back.
        for _ in 0..9_000 {
            q.pop_front();
        }
        assert!(
            q.capacity_bytes() <= (1_000 / per + 2) * per * size_of::<E>(),
            "{}",
            q.capacity_bytes()
        );
        // Emptied, one chunk stays for the next pushes.
        while q.pop_front().is_some() {}
        assert_eq!(q.capacity_bytes(), per * size_of::<E>());
        q.push_back((1, [0; 48]));
        assert_eq!(q.front(), Some(&(1, [0; 48])));
    }
}
