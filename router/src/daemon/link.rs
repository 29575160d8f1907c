//! The I/O driver behind a small trait: read into the spare capacity of a `BytesMut`, write a
//! batch of `Bytes` with vectored writes. Two drivers implement it for TCP:
//!
//! * io_uring, through tokio-uring (owned buffers: the kernel writes straight into the
//!   receive buffer and reads straight out of the queued frames);
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
    /// io_uring through tokio-uring.
    Uring,
    /// Plain tokio (epoll).
    Portable,
}

/// Receive-buffer growth step: at least this much spare room is offered to every read.
pub(crate) const READ_CHUNK: usize = 256 * 1024;

/// The read half of a link.
#[allow(async_fn_in_trait)]
pub(crate) trait LinkRead {
    /// Reads into `buf`'s spare capacity (at least [`READ_CHUNK`] is reserved first); returns
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
        buf.reserve(READ_CHUNK);
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

#[cfg(target_os = "linux")]
pub(crate) use uring::{UringRead, UringWrite};

#[cfg(target_os = "linux")]
mod uring {
    use std::io;
    use std::os::fd::{AsRawFd, RawFd};
    use std::rc::Rc;

    use bytes::{Bytes, BytesMut};
    use tokio_uring::buf::BoundedBuf;

    use super::{LinkRead, LinkWrite, READ_CHUNK, advance_batch};

    /// A tokio-uring stream shared by the link's reader and writer tasks (same thread).
    pub(crate) struct UringRead(pub(crate) Rc<tokio_uring::net::TcpStream>);
    /// See [`UringRead`].
    pub(crate) struct UringWrite(pub(crate) Rc<tokio_uring::net::TcpStream>);

    impl LinkRead for UringRead {
        async fn read(&mut self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
            buf.reserve(READ_CHUNK);
            let (len, cap) = (buf.len(), buf.capacity());
            // The kernel writes into the spare capacity; the slice's length update moves
            // `buf.len()` past what it wrote.
            let (r, slice) = self.0.read(BoundedBuf::slice(buf, len..cap)).await;
            (r, slice.into_inner())
        }

        fn tcp_fd(&self) -> Option<RawFd> {
            Some(self.0.as_raw_fd())
        }
    }

    impl LinkWrite for UringWrite {
        async fn write_batch(&mut self, mut batch: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
            while !batch.is_empty() {
                let rest = batch.split_off(batch.len().min(1024));
                let (r, mut sent) = self.0.writev(batch).await;
                match r {
                    Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), sent),
                    Ok(n) => advance_batch(&mut sent, n),
                    Err(e) => return (Err(e), sent),
                }
                sent.extend(rest);
                batch = sent;
            }
            (Ok(()), batch)
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
}
