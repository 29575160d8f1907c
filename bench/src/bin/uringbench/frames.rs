//! Frame assembly over a pool of fixed buffers, shared by the two hand-written loops: (c) on
//! io_uring, where the kernel picks the buffers (provided-buffer ring), and (d) on epoll, where
//! the loop picks them and calls `recv`.
//!
//! Frames are found in the buffers where the data landed. A frame is queued on its output as
//! (buffer, offset, length) chunks, and consecutive frames for one output in one buffer merge
//! into one chunk. A frame that straddles two buffers becomes two chunks: nothing is copied but
//! the header of such a frame (40 bytes, to parse it). The hop limit is decremented in place.
//! A buffer is free again when no frame, queue or send refers to it.

use std::collections::VecDeque;

use anyhow::{Result, bail, ensure};
use hyphae_wire::data::frame_len;
use hyphae_wire::packet::{PacketType, parse_outer_header};

use super::load::{DST_LAST_AT, HEADER, HOP_AT, route};
use super::sys::{Chunk, MAX_IOV};

/// Where an inbound stream is in its current frame.
#[derive(Debug, Clone, Copy)]
enum Parse {
    /// At a frame start, with this many header bytes seen (in earlier buffers).
    Header(usize),
    /// Inside a frame for output `out`, `left` bytes to come.
    Body { out: usize, left: usize },
}

/// One inbound stream's frame assembly.
#[derive(Debug)]
pub(super) struct Stream {
    parse: Parse,
    /// A straddling header, gathered to be parsed.
    hdr: [u8; HEADER],
    /// The current frame's chunks in earlier buffers.
    partial: Vec<Chunk>,
}

impl Stream {
    pub(super) fn new() -> Self {
        Self {
            parse: Parse::Header(0),
            hdr: [0; HEADER],
            partial: Vec::new(),
        }
    }

    /// Whether the stream is between frames (so it may end here).
    pub(super) fn at_boundary(&self) -> bool {
        self.partial.is_empty() && matches!(self.parse, Parse::Header(0))
    }
}

/// One output's chunks: queued, and in the send under way.
#[derive(Debug, Default)]
pub(super) struct Queue {
    queued: VecDeque<Chunk>,
    sending: Vec<Chunk>,
}

impl Queue {
    /// Whether nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Moves up to [`MAX_IOV`] chunks into the send under way and returns them.
    pub(super) fn start_send(&mut self) -> &[Chunk] {
        debug_assert!(self.sending.is_empty());
        let k = self.queued.len().min(MAX_IOV);
        self.sending.extend(self.queued.drain(..k));
        &self.sending
    }

    /// Accounts `n` bytes sent of the send under way: whole chunks are released (`free` gets
    /// each buffer that is no longer referenced), the rest goes back to the front of the
    /// queue. Returns whether the send was partial.
    pub(super) fn finish_send(
        &mut self,
        mut n: usize,
        refs: &mut Refs,
        mut free: impl FnMut(u16),
    ) -> bool {
        let mut k = 0;
        while k < self.sending.len() && n >= self.sending[k].len as usize {
            n -= self.sending[k].len as usize;
            if refs.release(self.sending[k].bid) {
                free(self.sending[k].bid);
            }
            k += 1;
        }
        let partial = k < self.sending.len();
        if partial {
            self.sending[k].off += n as u32;
            self.sending[k].len -= n as u32;
            for c in self.sending.drain(k..).rev() {
                self.queued.push_front(c);
            }
        }
        self.sending.clear();
        partial
    }

    /// Queues chunk `c`, merging it into the last queued chunk when it continues it.
    fn push(&mut self, c: Chunk, refs: &mut Refs) {
        if let Some(last) = self.queued.back_mut()
            && last.bid == c.bid
            && last.off + last.len == c.off
        {
            last.len += c.len;
            refs.0[usize::from(c.bid)] -= 1;
            return;
        }
        self.queued.push_back(c);
    }
}

/// References to each buffer: the receive being parsed, and every chunk in a partial frame, a
/// queue or a send.
#[derive(Debug)]
pub(super) struct Refs(Vec<u32>);

impl Refs {
    pub(super) fn new(buffers: usize) -> Self {
        Self(vec![0; buffers])
    }

    /// Takes the first reference to a buffer that just received data.
    pub(super) fn hold(&mut self, bid: u16) -> Result<()> {
        let r = &mut self.0[usize::from(bid)];
        ensure!(*r == 0, "buffer {bid} received while referenced");
        *r = 1;
        Ok(())
    }

    /// Drops a reference; true when it was the last one (the buffer is free).
    pub(super) fn release(&mut self, bid: u16) -> bool {
        let r = &mut self.0[usize::from(bid)];
        *r -= 1;
        *r == 0
    }

    /// Whether no buffer is referenced.
    pub(super) fn all_free(&self) -> bool {
        self.0.iter().all(|&r| r == 0)
    }

    fn take(&mut self, c: Chunk) -> Chunk {
        self.0[usize::from(c.bid)] += 1;
        c
    }
}

/// A byte to write into an earlier buffer once the receive's data is no longer borrowed. Only
/// a straddling header's hop limit needs one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Poke {
    pub(super) bid: u16,
    pub(super) off: u32,
    pub(super) value: u8,
}

/// Splits one receive (`data`, at the start of buffer `bid`) into frames, queuing them on
/// their outputs. Returns how many headers straddled into this buffer.
pub(super) fn parse(
    s: &mut Stream,
    bid: u16,
    data: &mut [u8],
    outs: &mut [Queue],
    refs: &mut Refs,
    pokes: &mut Vec<Poke>,
) -> Result<u64> {
    let m = outs.len();
    let n = data.len();
    let mut pos = 0;
    let mut split = 0;
    let chunk = |pos: usize, len: usize| Chunk {
        bid,
        off: pos as u32,
        len: len as u32,
    };
    while pos < n {
        let (out, left) = match s.parse {
            // The common case: the whole header is in this buffer.
            Parse::Header(0) if n - pos >= HEADER => {
                let h = &mut data[pos..pos + HEADER];
                let (len, out) = header(h, m)?;
                h[HOP_AT] -= 1;
                (out, len)
            }
            Parse::Header(have) => {
                let take = (HEADER - have).min(n - pos);
                s.hdr[have..have + take].copy_from_slice(&data[pos..pos + take]);
                if have + take < HEADER {
                    s.partial.push(refs.take(chunk(pos, take)));
                    s.parse = Parse::Header(have + take);
                    pos += take;
                    continue;
                }
                split += 1;
                let (len, out) = header(&s.hdr, m)?;
                let hop = s.hdr[HOP_AT] - 1;
                if HOP_AT >= have {
                    data[pos + HOP_AT - have] = hop;
                } else {
                    pokes.push(locate(&s.partial, HOP_AT, hop));
                }
                (out, len - have)
            }
            Parse::Body { out, left } => (out, left),
        };
        // `left` bytes of the frame from `pos` on.
        let take = left.min(n - pos);
        let c = refs.take(chunk(pos, take));
        if take == left {
            for p in s.partial.drain(..) {
                outs[out].push(p, refs);
            }
            outs[out].push(c, refs);
            s.parse = Parse::Header(0);
        } else {
            s.partial.push(c);
            s.parse = Parse::Body {
                out,
                left: left - take,
            };
        }
        pos += take;
    }
    Ok(split)
}

/// Checks a frame header as the deframer does (outer header, then the data frame's length) and
/// routes it: (frame length, output).
fn header(h: &[u8], outputs: usize) -> Result<(usize, usize)> {
    match parse_outer_header(h) {
        Ok(PacketType::DATA) => {}
        Ok(_) => bail!("unexpected control frame"),
        Err(e) => bail!("corrupt framing: {e}"),
    }
    let len = frame_len(h).map_err(|e| anyhow::anyhow!("corrupt framing: {e}"))?;
    let hop = h[HOP_AT];
    ensure!(hop >= 2, "hop limit {hop}");
    Ok((len, route(h[DST_LAST_AT], outputs)))
}

/// Where byte `at` of a frame whose first bytes are `chunks` lies.
fn locate(chunks: &[Chunk], mut at: usize, value: u8) -> Poke {
    for c in chunks {
        if at < c.len as usize {
            return Poke {
                bid: c.bid,
                off: c.off + at as u32,
                value,
            };
        }
        at -= c.len as usize;
    }
    unreachable!("the chunks hold the whole header")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of mixed sizes, cut into buffers of every size from 1 byte up, come out whole,
    /// in order, on the right outputs, with the hop limit decremented.
    #[test]
    fn frames_survive_any_cut() {
        use hyphae_wire::data::DataHeader;
        use std::net::Ipv6Addr;
        let mut stream = Vec::new();
        let mut want: Vec<Vec<u8>> = vec![Vec::new(); 3];
        for (k, body) in [12usize, 300, 1, 1300, 50, 0, 77].iter().enumerate() {
            let h = DataHeader {
                hop_limit: 9,
                src: Ipv6Addr::LOCALHOST,
                dst: Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, k as u16),
            };
            let mut f = Vec::new();
            h.emit_frame(&vec![k as u8; *body], &mut f).unwrap();
            stream.extend_from_slice(&f);
            f[HOP_AT] = 8;
            want[k % 3].extend_from_slice(&f);
        }
        for size in 1..=stream.len() {
            let mut bufs: Vec<Vec<u8>> = stream.chunks(size).map(<[u8]>::to_vec).collect();
            let mut s = Stream::new();
            let mut outs: Vec<Queue> = (0..3).map(|_| Queue::default()).collect();
            let mut refs = Refs::new(bufs.len());
            let mut pokes = Vec::new();
            for bid in 0..bufs.len() {
                refs.hold(bid as u16).unwrap();
                parse(
                    &mut s,
                    bid as u16,
                    &mut bufs[bid],
                    &mut outs,
                    &mut refs,
                    &mut pokes,
                )
                .unwrap();
                for p in pokes.drain(..) {
                    bufs[usize::from(p.bid)][p.off as usize] = p.value;
                }
                refs.release(bid as u16);
            }
            assert!(s.at_boundary());
            for (o, w) in outs.iter_mut().zip(&want) {
                let mut got = Vec::new();
                while !o.is_empty() {
                    let before = got.len();
                    for c in o.start_send() {
                        let (a, b) = (c.off as usize, (c.off + c.len) as usize);
                        got.extend_from_slice(&bufs[usize::from(c.bid)][a..b]);
                    }
                    // Half the send goes out, then the rest: partial sends resume in order.
                    let n = got.len() - before;
                    let half = n.div_ceil(2);
                    let partial = o.finish_send(half, &mut refs, |_| {});
                    assert_eq!(partial, half < n);
                    got.truncate(before + half);
                }
                assert_eq!(&got, w, "buffer size {size}");
            }
            assert!(refs.all_free(), "buffer size {size}");
        }
    }
}
