//! One inbound message being reassembled: the receiver side of the protocol.
//!
//! Chunks are stored by index. A chunk is taken only if it lies inside the declared length,
//! its index could exist for that length (at most one chunk per 250 bytes, as the reference
//! bounds it), it is not shorter than 250 bytes unless it ends the message, and it overlaps no
//! stored neighbour. The stored bytes of one message therefore never exceed its declared
//! length. DONE checks that the chunks are exactly `0..chunk_count`, contiguous from offset 0
//! to the declared length, and that the blake3 hash matches.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use hyphae_wire::message::MIN_CHUNK_SIZE;

/// Why a chunk was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkReject {
    /// The chunk contradicts the message (bounds, size, overlap).
    Invalid,
    /// The byte budget is exhausted; the sender will retry.
    Full,
}

/// A pending inbound message.
#[derive(Debug)]
pub(super) struct Inbound {
    pub(super) total_len: u64,
    pub(super) topic: Vec<u8>,
    pub(super) reply: bool,
    chunks: BTreeMap<u64, (u64, Vec<u8>)>,
    pub(super) bytes: usize,
    pub(super) created: Instant,
    pub(super) last_activity: Instant,
    /// The hash of the stored chunks, once a DONE found them whole; forgotten when a chunk
    /// changes. A peer repeating DONEs with wrong checksums costs one pass over the message,
    /// not one per DONE.
    hash: Option<[u8; 32]>,
    /// Passes over the whole message so far (hashing it).
    pub(super) hash_passes: u64,
    pub(super) armed: Option<Instant>,
}

impl Inbound {
    pub(super) fn new(now: Instant, total_len: u64, topic: &[u8], reply: bool) -> Self {
        Self {
            total_len,
            topic: topic.to_vec(),
            reply,
            chunks: BTreeMap::new(),
            bytes: 0,
            created: now,
            last_activity: now,
            hash: None,
            hash_passes: 0,
            armed: None,
        }
    }

    /// Whether an INIT describes this same message.
    pub(super) fn same_init(&self, total_len: u64, topic: &[u8], reply: bool) -> bool {
        self.total_len == total_len && self.topic == topic && self.reply == reply
    }

    /// Stores a chunk: `Ok(Some(replaced_len))` if stored, `Ok(None)` for an exact duplicate
    /// (not stored again); the caller acknowledges both. `budget` is how many more bytes may
    /// be buffered.
    pub(super) fn insert(
        &mut self,
        index: u64,
        offset: u64,
        data: &[u8],
        budget: usize,
    ) -> Result<Option<usize>, ChunkReject> {
        let size = data.len() as u64;
        if !chunk_fits(self.total_len, index, offset, size) {
            return Err(ChunkReject::Invalid);
        }
        let end = offset + size;
        let old = match self.chunks.get(&index) {
            Some((o, d)) if *o == offset && d.len() == data.len() => return Ok(None),
            Some((_, d)) => d.len(),
            None => 0,
        };
        if let Some((_, (po, pd))) = self.chunks.range(..index).next_back()
            && po + pd.len() as u64 > offset
        {
            return Err(ChunkReject::Invalid);
        }
        if let Some((_, (no, _))) = index
            .checked_add(1)
            .and_then(|n| self.chunks.range(n..).next())
            && *no < end
        {
            return Err(ChunkReject::Invalid);
        }
        if data.len().saturating_sub(old) > budget {
            return Err(ChunkReject::Full);
        }
        self.chunks.insert(index, (offset, data.to_vec()));
        self.bytes = self.bytes - old + data.len();
        self.hash = None;
        Ok(Some(old))
    }

    /// Verifies a DONE and, if it holds, returns the message. The chunks are hashed once for
    /// as long as they do not change, whatever checksums DONEs carry.
    pub(super) fn complete(&mut self, chunk_count: u64, checksum: &[u8; 32]) -> Option<Bytes> {
        if !self.whole(chunk_count) {
            return None;
        }
        let chunks = &self.chunks;
        let passes = &mut self.hash_passes;
        let hash = self.hash.get_or_insert_with(|| {
            *passes += 1;
            let mut h = blake3::Hasher::new();
            for (_, data) in chunks.values() {
                h.update(data);
            }
            *h.finalize().as_bytes()
        });
        if hash != checksum {
            return None;
        }
        let mut buf = Vec::with_capacity(self.bytes);
        for (_, data) in self.chunks.values() {
            buf.extend_from_slice(data);
        }
        Some(Bytes::from(buf))
    }

    /// Whether the chunks are exactly `0..chunk_count`, contiguous from offset 0 to the
    /// declared length.
    fn whole(&self, chunk_count: u64) -> bool {
        if self.chunks.len() as u64 != chunk_count {
            return false;
        }
        let mut expect = 0u64;
        for (i, (idx, (off, data))) in self.chunks.iter().enumerate() {
            if *idx != i as u64 || *off != expect {
                return false;
            }
            expect += data.len() as u64;
        }
        expect == self.total_len
    }
}

/// The stateless part of chunk validation, also used to re-acknowledge chunks of messages
/// already delivered.
pub(super) fn chunk_fits(total_len: u64, index: u64, offset: u64, size: u64) -> bool {
    let Some(end) = offset.checked_add(size) else {
        return false;
    };
    if size == 0 || end > total_len {
        return false;
    }
    let max_index = total_len.div_ceil(MIN_CHUNK_SIZE as u64) - 1;
    index <= max_index && (size >= MIN_CHUNK_SIZE as u64 || end == total_len)
}
