//! The I/O driver behind a small trait: read into the spare capacity of a `BytesMut`, write a
//! batch of `Bytes` with vectored writes. Two drivers implement it for TCP:
//!
//! * io_uring, on the worker's [`Ring`](super::ring::Ring) (owned buffers: the kernel writes
//!   straight into the receive buffer and reads straight out of the queued frames, and one
//!   `io_uring_enter` carries every link's operations of a turn);
//! * portable, plain tokio (epoll), used where io_uring is unavailable and in tests.
//!
//! QUIC streams implement the same trait (in `quic.rs`).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The I/O driver a worker runs, and so the halves its TCP links get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    /// io_uring, one ring per worker (`ring`).
    Uring,
    /// Plain tokio (epoll).
    Portable,
}

/// The most spare room a link's read is offered, under load. Reads of 512 KiB into two
/// buffers in turn moved about a fifth more 296-byte frames per CPU-second through the router
/// than reads of 256 KiB into a new allocation each (`transit`, bench/README.md "Transit").
/// With the partial frame a read ends with ([`READ_SLACK`]) a busy link's buffer is 512 KiB,
/// mimalloc's largest size class: a larger one has pages of its own, returned to the system
/// when it is freed and faulted in again, page by page, when the next is allocated (a link
/// whose frames wait to be written, so that its spare cannot be reused, then costs twice the
/// CPU per frame).
pub(crate) const READ_MAX: usize = 512 * 1024 - READ_SLACK;
/// The least, on a quiet link (Hellos, IHUs and the odd Update). Small enough for the
/// allocator's small-block pages, which links coming and going share without leaving larger
/// pages partly used.
pub(crate) const READ_MIN: usize = 4 * 1024;

/// How much spare room a link's next read is offered: it follows what the reads return.
///
/// A read that fills at least half of its room doubles it, up to [`READ_MAX`]; after
/// [`ReadSizer::QUIET_READS`] reads in a row that use less than an eighth of it, it halves, down to
/// [`READ_MIN`]. A busy link thus reads up to [`READ_MAX`] at a time while an idle one holds
/// 4 KiB (every link, busy or not, once held 512 KiB).
#[derive(Debug, Clone)]
pub(crate) struct ReadSizer {
    room: usize,
    quiet: u32,
    /// The room shrank since the last [`ReadSizer::prepare`]: the buffer moves to a smaller
    /// allocation there.
    shrunk: bool,
    /// A busy link's previous buffer, emptied: its frames may still be on their way out. Once
    /// they are gone it is read into again, so a busy link takes turns between two buffers
    /// instead of a fresh allocation (page faults and all) for nearly every read.
    spare: Option<BytesMut>,
}

impl Default for ReadSizer {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadSizer {
    /// Small reads in a row before the room halves.
    pub(crate) const QUIET_READS: u32 = 64;

    pub(crate) fn new() -> Self {
        Self {
            room: READ_MIN,
            quiet: 0,
            shrunk: false,
            spare: None,
        }
    }

    /// Spare room to offer the next read.
    pub(crate) fn room(&self) -> usize {
        self.room
    }

    /// Records a read of `n` bytes; true when the room just shrank. The next
    /// [`ReadSizer::prepare`] then moves the buffer to an allocation of the new size (the old
    /// one would otherwise be reused at its old size as long as the link lives).
    pub(crate) fn record(&mut self, n: usize) -> bool {
        if n >= self.room / 2 {
            self.room = (self.room * 2).min(READ_MAX);
            self.quiet = 0;
            return false;
        }
        if n >= self.room / 8 || self.room == READ_MIN {
            self.quiet = 0;
            return false;
        }
        self.quiet += 1;
        if self.quiet < Self::QUIET_READS {
            return false;
        }
        self.quiet = 0;
        self.room = (self.room / 2).max(READ_MIN);
        self.shrunk = true;
        true
    }

    /// Makes room in `buf` for the next read; after a shrink, first moves its unread bytes to
    /// an allocation of the new size.
    ///
    /// A buffer whose frames have all gone is reused in place. One whose frames are still
    /// queued or being written cannot be: at the most room, its unread bytes move to the
    /// spare (the buffer before it, once its own frames are gone), or else to a new
    /// allocation, and the buffer becomes the spare.
    pub(crate) fn prepare(&mut self, buf: &mut BytesMut) {
        let room = self.room();
        if std::mem::take(&mut self.shrunk) {
            self.spare = None;
            let mut fresh = BytesMut::with_capacity(buf.len() + room);
            fresh.extend_from_slice(buf);
            *buf = fresh;
        }
        if buf.capacity() - buf.len() >= room || buf.try_reclaim(room) {
            return;
        }
        if room < READ_MAX {
            buf.reserve(room);
            return;
        }
        let need = buf.len() + room;
        let reclaimed = self
            .spare
            .take()
            .and_then(|mut s| s.try_reclaim(need).then_some(s));
        // Room for a partial frame besides, so the next turn can reuse it in place.
        let mut next =
            reclaimed.unwrap_or_else(|| BytesMut::with_capacity(need.max(READ_MAX + READ_SLACK)));
        next.extend_from_slice(buf);
        let mut old = std::mem::replace(buf, next);
        old.clear();
        self.spare = Some(old);
    }
}

/// What a busy link's buffer holds beyond [`READ_MAX`]: the partial frame a read ends with,
/// moved to the front before the next read.
pub(crate) const READ_SLACK: usize = 4 * 1024;

/// The read half of a link.
#[allow(async_fn_in_trait)]
pub(crate) trait LinkRead {
    /// Reads into `buf`'s spare capacity (the caller reserves it, see [`ReadSizer`]); returns
    /// the buffer and the number of bytes read, 0 at end of stream.
    async fn read(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut);

    /// The TCP socket underneath, for window sizing (`None`: not TCP).
    fn tcp_fd(&self) -> Option<RawFd> {
        None
    }
}

/// The write half of a link.
#[allow(async_fn_in_trait)]
pub(crate) trait LinkWrite {
    /// Writes every frame of `batch`, in order, with as few system calls as it can. The batch
    /// comes back empty for reuse.
    async fn write_batch(&mut self, batch: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>);
}

/// Drops the first `n` written bytes from the front of `batch`.
pub(crate) fn advance_batch(batch: &mut Vec<Bytes>, mut n: usize) {
    let mut done = 0;
    for b in batch.iter_mut() {
        if n >= b.len() {
            n -= b.len();
            done += 1;
        } else {
            b.advance(n);
            break;
        }
    }
    batch.drain(..done);
}

/// Plain tokio halves.
pub(crate) struct PortableRead(pub(crate) tokio::net::tcp::OwnedReadHalf);
/// Plain tokio halves.
pub(crate) struct PortableWrite(pub(crate) tokio::net::tcp::OwnedWriteHalf);

impl LinkRead for PortableRead {
    async fn read(&mut self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        let r = self.0.read_buf(&mut buf).await;
        (r, buf)
    }

    fn tcp_fd(&self) -> Option<RawFd> {
        Some(self.0.as_ref().as_raw_fd())
    }
}

impl LinkWrite for PortableWrite {
    async fn write_batch(&mut self, mut batch: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
        while !batch.is_empty() {
            let slices: Vec<IoSlice<'_>> =
                batch.iter().take(1024).map(|b| IoSlice::new(b)).collect();
            let n = match self.0.write_vectored(&slices).await {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), batch),
                Ok(n) => n,
                Err(e) => return (Err(e), batch),
            };
            drop(slices);
            advance_batch(&mut batch, n);
        }
        (Ok(()), batch)
    }
}

pub(crate) use uring::halves as uring_halves;

mod uring {
    use std::io;
    use std::net::TcpStream;
    use std::os::fd::{AsRawFd, RawFd};
    use std::rc::Rc;

    use bytes::{Bytes, BytesMut};

    use super::super::ring::{Batch, Ring};
    use super::{LinkRead, LinkWrite, READ_MIN, advance_batch};

    /// A TCP link's socket on the worker's ring, shared by its reader and writer tasks; the
    /// socket closes when both are gone.
    pub(crate) struct UringRead {
        ring: Rc<Ring>,
        sock: Rc<TcpStream>,
    }

    /// See [`UringRead`].
    pub(crate) struct UringWrite {
        ring: Rc<Ring>,
        sock: Rc<TcpStream>,
        batch: Option<Box<Batch>>,
    }

    /// The two halves of `sock` on `ring`.
    pub(crate) fn halves(ring: &Rc<Ring>, sock: TcpStream) -> (UringRead, UringWrite) {
        let sock = Rc::new(sock);
        (
            UringRead {
                ring: ring.clone(),
                sock: sock.clone(),
            },
            UringWrite {
                ring: ring.clone(),
                sock,
                batch: Some(Batch::new()),
            },
        )
    }

    impl LinkRead for UringRead {
        async fn read(&mut self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
            if buf.capacity() == buf.len() {
                buf.reserve(READ_MIN);
            }
            self.ring.recv(self.sock.clone(), buf).await
        }

        fn tcp_fd(&self) -> Option<RawFd> {
            Some(self.sock.as_raw_fd())
        }
    }

    impl LinkWrite for UringWrite {
        async fn write_batch(&mut self, mut batch: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
            let mut held = self.batch.take().unwrap_or_else(Batch::new);
            let mut r = Ok(());
            while !batch.is_empty() {
                let (n, h, sent) = self.ring.send(self.sock.clone(), held, batch).await;
                held = h;
                batch = sent;
                match n {
                    Ok(0) => r = Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => advance_batch(&mut batch, n),
                    Err(e) => r = Err(e),
                }
                if r.is_err() {
                    break;
                }
            }
            self.batch = Some(held);
            (r, batch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_batch_partial_writes() {
        let mut b = vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"f"),
        ];
        advance_batch(&mut b, 4);
        assert_eq!(b, vec![Bytes::from_static(b"e"), Bytes::from_static(b"f")]);
        advance_batch(&mut b, 2);
        assert!(b.is_empty());
    }

    #[test]
    fn read_room_grows_under_load_and_comes_back_when_quiet() {
        let mut s = ReadSizer::new();
        assert_eq!(s.room(), READ_MIN);
        // Full reads: the room doubles each time up to the cap.
        let mut steps = 0;
        while s.room() < READ_MAX {
            assert!(!s.record(s.room()));
            steps += 1;
        }
        assert_eq!(steps, 7, "4 KiB to the most in seven full reads");
        assert!(!s.record(READ_MAX));
        assert_eq!(s.room(), READ_MAX, "capped");

        // Reads between an eighth and a half keep it where it is.
        for _ in 0..1000 {
            assert!(!s.record(READ_MAX / 4));
        }
        assert_eq!(s.room(), READ_MAX);

        // Small reads: it halves after QUIET_READS of them, and only then.
        for _ in 1..ReadSizer::QUIET_READS {
            assert!(!s.record(100));
        }
        assert_eq!(s.room(), READ_MAX);
        assert!(s.record(100), "the shrink is reported");
        assert_eq!(s.room(), READ_MAX / 2);
        // A busy read in between starts the count again.
        for _ in 1..ReadSizer::QUIET_READS {
            s.record(100);
        }
        assert!(!s.record(READ_MAX / 8));
        for _ in 1..ReadSizer::QUIET_READS {
            assert!(!s.record(100));
        }
        assert_eq!(s.room(), READ_MAX / 2);
        // Down to the floor, never below.
        for _ in 0..10_000 {
            s.record(0);
        }
        assert_eq!(s.room(), READ_MIN);
    }

    #[test]
    fn a_shrink_moves_unread_bytes_to_a_small_buffer() {
        let mut s = busy();
        let mut buf = BytesMut::with_capacity(2 * READ_MAX);
        buf.extend_from_slice(&[1; 300]);
        s.prepare(&mut buf);
        assert!(buf.capacity() >= READ_MAX + 300);
        let mut shrunk = false;
        while !shrunk {
            shrunk = s.record(10);
        }
        s.prepare(&mut buf);
        assert_eq!(&buf[..], &[1; 300][..], "the unread bytes are kept");
        assert!(
            buf.capacity() < READ_MAX,
            "the big allocation is let go: {}",
            buf.capacity()
        );
        assert!(buf.capacity() - buf.len() >= s.room());
    }

    /// A sizer at the most room, as on a busy link.
    fn busy() -> ReadSizer {
        let mut s = ReadSizer::new();
        while s.room() < READ_MAX {
            s.record(s.room());
        }
        s
    }

    /// Fills `buf`'s room as a read would and splits off its whole frames (all but a partial
    /// one of 100 bytes at the end), as the deframer does; returns them.
    fn read_and_split(buf: &mut BytesMut, room: usize) -> Vec<Bytes> {
        let n = buf.capacity() - buf.len();
        assert!(n >= room);
        buf.extend_from_slice(&vec![7; n]);
        let mut frames = Vec::new();
        while buf.len() >= 1000 + 100 {
            frames.push(buf.split_to(1000).freeze());
        }
        frames.push(buf.split_to(buf.len() - 100).freeze());
        frames
    }

    #[test]
    fn a_busy_link_takes_turns_between_two_buffers() {
        let mut s = busy();
        let mut buf = BytesMut::new();
        let mut bases = Vec::new();
        let mut in_flight = Vec::new();
        // Blocks of a buffer's size taken by others as soon as one is free: a buffer let go
        // is never seen again.
        let mut others = Vec::new();
        for turn in 0..20 {
            // The frames of the read before this one are still queued when the next read
            // needs room; those of the one before that have been written.
            s.prepare(&mut buf);
            assert!(buf.capacity() - buf.len() >= s.room());
            if turn > 0 {
                assert_eq!(&buf[..], &[7; 100][..], "the partial frame moves along");
            }
            bases.push(buf.as_ptr() as usize - buf.len());
            let frames = read_and_split(&mut buf, s.room());
            s.record(READ_MAX);
            in_flight = frames;
            others.push(vec![1u8; READ_MAX + READ_SLACK]);
        }
        drop(in_flight);
        // After the first turns, the same two allocations in turn.
        for t in 4..bases.len() {
            assert_eq!(bases[t], bases[t - 2], "turn {t}: {bases:x?}");
        }
        assert_ne!(bases[4], bases[5]);
    }

    #[test]
    fn a_buffer_whose_frames_are_gone_is_reused_in_place() {
        let mut s = busy();
        let mut buf = BytesMut::new();
        s.prepare(&mut buf);
        drop(read_and_split(&mut buf, s.room()));
        s.prepare(&mut buf);
        let base = buf.as_ptr();
        for _ in 0..10 {
            drop(read_and_split(&mut buf, s.room()));
            s.prepare(&mut buf);
            assert_eq!(buf.as_ptr(), base);
            assert_eq!(&buf[..], &[7; 100][..]);
        }
        assert!(s.spare.is_none() || s.spare.as_ref().is_some_and(|b| b.capacity() <= READ_MAX));
    }
}
