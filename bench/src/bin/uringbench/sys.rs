//! Everything `unsafe` in `uringbench`: an io_uring ring with a provided-buffer ring and one
//! send slot per outbound connection, an epoll instance, thread pinning, one socket option, and
//! per-thread system call counters (`perf_event_open` on tracepoints).
//!
//! The io-uring crate's push and register calls are unsafe because the kernel reads and writes
//! memory the SQEs point at until their CQEs arrive. [`Uring`] owns all of that memory, so the
//! rules that make it sound are kept here and checked (with panics), not left to the caller:
//!
//! * the buffer memory, the buffer-ring entries and each slot's `iovec`s and `msghdr` live in
//!   [`Uring`] and are freed only when no receive is armed and no send is in flight; otherwise
//!   they are leaked on drop;
//! * the kernel writes only into buffers that are in the buffer ring. A buffer leaves it when a
//!   receive CQE names it (it is then *owned*) and goes back only through [`Uring::recycle`],
//!   which refuses while a send in flight reads it;
//! * the caller gets `&mut` access only to an owned buffer that no send in flight reads
//!   ([`Uring::data_mut`]), and single-byte writes ([`Uring::poke`]) only outside every range a
//!   send in flight reads;
//! * a slot's `iovec`s and `msghdr` are rewritten only while the slot has no send in flight.

#![allow(unsafe_code)]

use std::alloc::{Layout, alloc, dealloc};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd};
use io_uring::{IoUring, cqueue, opcode};

/// The buffer group of the provided-buffer ring.
const BGID: u16 = 0;
/// `user_data` tags: the low 32 bits are the connection or slot index.
const RECV_TAG: u64 = 1 << 32;
const SEND_TAG: u64 = 2 << 32;
/// Linux's `UIO_MAXIOV`: most `iovec`s one `sendmsg` takes.
pub(super) const MAX_IOV: usize = 1024;

/// How the ring runs completion work ("task work"); the first mode the kernel accepts wins,
/// falling back in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum TaskRun {
    /// `SINGLE_ISSUER|DEFER_TASKRUN` (6.1): task work runs only inside `io_uring_enter`.
    Defer,
    /// `SINGLE_ISSUER|COOP_TASKRUN` (6.0), then `COOP_TASKRUN` alone (5.19): no interrupt of
    /// the running thread to deliver completions.
    Coop,
    /// No setup flags.
    Plain,
}

/// A byte range of one provided buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Chunk {
    /// Buffer id.
    pub(super) bid: u16,
    /// Offset in the buffer.
    pub(super) off: u32,
    /// Length.
    pub(super) len: u32,
}

/// One completion, decoded.
#[derive(Debug, Clone, Copy)]
pub(super) enum Completion {
    /// A multishot receive posted: `res` bytes into buffer `bid` (owned from now on), or end of
    /// stream (0), or an error. `more`: the receive is still armed.
    Recv {
        conn: usize,
        res: i32,
        bid: Option<u16>,
        more: bool,
    },
    /// The send of `slot` finished: `res` bytes sent, or an error.
    Send { slot: usize, res: i32 },
}

/// Page-aligned memory the kernel may touch; freed on drop unless leaked.
#[derive(Debug)]
struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
    leaked: bool,
}

impl Region {
    fn new(len: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(len.max(1), 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        let ptr = NonNull::new(ptr).ok_or(io::ErrorKind::OutOfMemory)?;
        // SAFETY: `ptr` is valid for `layout.size()` bytes just allocated. Writing every byte
        // also faults the pages in now rather than during the measurement.
        unsafe { ptr.as_ptr().write_bytes(0, layout.size()) };
        Ok(Self {
            ptr,
            layout,
            leaked: false,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if !self.leaked {
            // SAFETY: allocated in `new` with this layout; `leaked` is set whenever the kernel
            // may still use the memory.
            unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
        }
    }
}

/// The memory one `sendmsg` in flight reads: its `iovec`s and `msghdr`, and what they cover.
#[derive(Debug)]
struct Slot {
    iov: Vec<libc::iovec>,
    msg: Box<libc::msghdr>,
    chunks: Vec<Chunk>,
    busy: bool,
}

/// An io_uring ring with one provided-buffer ring (buffer group [`BGID`]) and one send slot per
/// outbound connection. Not `Send`: it lives and dies on the thread that made it.
pub(super) struct Uring {
    // Dropped first: the ring goes before the memory it may have used.
    ring: IoUring,
    setup: &'static str,
    entries: Region,
    mem: Region,
    buf_size: usize,
    nbufs: u16,
    /// Next buffer-ring tail (published to the kernel before each submit).
    tail: u16,
    tail_dirty: bool,
    /// Taken out of the ring by a receive CQE and not recycled yet.
    owned: Vec<bool>,
    owned_count: usize,
    /// Sends in flight reading each buffer.
    in_send: Vec<u32>,
    slots: Vec<Slot>,
    /// Multishot receives armed.
    armed: usize,
    /// Sends in flight.
    sending: usize,
}

impl Uring {
    /// A ring of `sq_entries` SQEs (and 16 times as many CQEs) with `nbufs` (a power of two)
    /// provided buffers of `buf_size` bytes and `slots` send slots, asking for `want` first.
    pub(super) fn new(
        sq_entries: u32,
        nbufs: u16,
        buf_size: u32,
        slots: usize,
        want: TaskRun,
    ) -> io::Result<Self> {
        if !nbufs.is_power_of_two() || nbufs > 1 << 15 || buf_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two up to 32768, buffer size non-zero",
            ));
        }
        let (ring, setup) = build_ring(sq_entries, want)?;
        let buf_size = buf_size as usize;
        let entries = Region::new(usize::from(nbufs) * size_of::<BufRingEntry>())?;
        let mem = Region::new(usize::from(nbufs) * buf_size)?;
        // SAFETY: `entries` is page-aligned, holds `nbufs` entries and lives in `self` until
        // the ring is gone (or is leaked); the kernel only reads it.
        unsafe {
            ring.submitter()
                .register_buf_ring(entries.ptr.as_ptr() as u64, nbufs, BGID)?;
        }
        let slots = (0..slots)
            .map(|_| Slot {
                iov: Vec::with_capacity(MAX_IOV),
                // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
                msg: Box::new(unsafe { std::mem::zeroed() }),
                chunks: Vec::with_capacity(MAX_IOV),
                busy: false,
            })
            .collect();
        let mut u = Self {
            ring,
            setup,
            entries,
            mem,
            buf_size,
            nbufs,
            tail: 0,
            tail_dirty: false,
            owned: vec![true; usize::from(nbufs)],
            owned_count: usize::from(nbufs),
            in_send: vec![0; usize::from(nbufs)],
            slots,
            armed: 0,
            sending: 0,
        };
        for bid in 0..nbufs {
            u.recycle(bid);
        }
        u.publish_tail();
        Ok(u)
    }

    /// The setup flags the kernel accepted.
    pub(super) fn setup(&self) -> &'static str {
        self.setup
    }

    /// Buffers in the kernel's ring, free for receives.
    pub(super) fn free_buffers(&self) -> usize {
        usize::from(self.nbufs) - self.owned_count
    }

    /// Whether any receive is armed or any send in flight.
    pub(super) fn busy(&self) -> bool {
        self.armed > 0 || self.sending > 0
    }

    /// Arms a multishot receive on `fd` into the provided buffers; its CQEs carry `conn`.
    pub(super) fn push_recv(&mut self, fd: RawFd, conn: usize) -> io::Result<()> {
        let e = opcode::RecvMulti::new(Fd(fd), BGID)
            .build()
            .user_data(RECV_TAG | conn as u64);
        self.push(&e)?;
        self.armed += 1;
        Ok(())
    }

    /// Sends `chunks` (at most [`MAX_IOV`], all of owned buffers) on `fd` with one `sendmsg`
    /// from send slot `slot`, which must be idle.
    pub(super) fn push_send(&mut self, slot: usize, fd: RawFd, chunks: &[Chunk]) -> io::Result<()> {
        assert!(chunks.len() <= MAX_IOV && !chunks.is_empty());
        let base = self.mem.ptr.as_ptr();
        let s = &mut self.slots[slot];
        assert!(!s.busy, "send slot {slot} is busy");
        s.iov.clear();
        s.chunks.clear();
        for c in chunks {
            let (bid, off, len) = (usize::from(c.bid), c.off as usize, c.len as usize);
            assert!(
                self.owned[bid],
                "send from buffer {bid}, which the kernel owns"
            );
            assert!(off + len <= self.buf_size);
            // SAFETY: in bounds of `mem` (checked above).
            let p = unsafe { base.add(bid * self.buf_size + off) };
            s.iov.push(libc::iovec {
                iov_base: p.cast(),
                iov_len: len,
            });
            s.chunks.push(*c);
        }
        s.msg.msg_iov = s.iov.as_mut_ptr();
        s.msg.msg_iovlen = s.iov.len();
        let e = opcode::SendMsg::new(Fd(fd), &*s.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(SEND_TAG | slot as u64);
        self.push(&e)?;
        let s = &mut self.slots[slot];
        s.busy = true;
        for c in &s.chunks {
            self.in_send[usize::from(c.bid)] += 1;
        }
        self.sending += 1;
        Ok(())
    }

    /// Publishes recycled buffers, submits every queued SQE and waits for at least `want`
    /// completions: one `io_uring_enter`.
    pub(super) fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        self.publish_tail();
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            // Interrupted, or completions overflowed: the caller reaps and comes back.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves every posted completion into `out`, updating buffer ownership and slots.
    pub(super) fn reap(&mut self, out: &mut Vec<Completion>) {
        for e in self.ring.completion() {
            let (ud, res, flags) = (e.user_data(), e.result(), e.flags());
            let idx = (ud & 0xffff_ffff) as usize;
            if ud & RECV_TAG != 0 {
                let bid = cqueue::buffer_select(flags);
                if let Some(b) = bid {
                    let b = usize::from(b);
                    assert!(!self.owned[b], "the kernel returned buffer {b} twice");
                    self.owned[b] = true;
                    self.owned_count += 1;
                }
                let more = cqueue::more(flags);
                if !more {
                    self.armed -= 1;
                }
                out.push(Completion::Recv {
                    conn: idx,
                    res,
                    bid,
                    more,
                });
            } else {
                let s = &mut self.slots[idx];
                s.busy = false;
                for c in &s.chunks {
                    self.in_send[usize::from(c.bid)] -= 1;
                }
                self.sending -= 1;
                out.push(Completion::Send { slot: idx, res });
            }
        }
    }

    /// The first `len` bytes of owned buffer `bid`, which no send in flight reads.
    pub(super) fn data_mut(&mut self, bid: u16, len: usize) -> &mut [u8] {
        let b = usize::from(bid);
        assert!(self.owned[b] && self.in_send[b] == 0 && len <= self.buf_size);
        // SAFETY: in bounds of `mem`; the kernel neither writes (the buffer is not in the
        // ring) nor reads (no send in flight covers it) this buffer while the borrow of `self`
        // lasts, and nothing else in this program aliases it.
        unsafe { std::slice::from_raw_parts_mut(self.mem.ptr.as_ptr().add(b * self.buf_size), len) }
    }

    /// Writes one byte of owned buffer `bid`, outside every range a send in flight reads.
    pub(super) fn poke(&mut self, bid: u16, off: u32, value: u8) {
        let (b, off) = (usize::from(bid), off as usize);
        assert!(self.owned[b] && off < self.buf_size);
        if self.in_send[b] > 0 {
            let read = |c: &Chunk| {
                c.bid == bid && (c.off as usize..(c.off + c.len) as usize).contains(&off)
            };
            let clash = self
                .slots
                .iter()
                .any(|s| s.busy && s.chunks.iter().any(read));
            assert!(!clash, "poke into bytes a send in flight reads");
        }
        // SAFETY: in bounds of `mem`; no kernel access to this byte is possible (checked
        // above), and no reference into the buffer is live (`&mut self`).
        unsafe {
            self.mem
                .ptr
                .as_ptr()
                .add(b * self.buf_size + off)
                .write(value)
        };
    }

    /// Gives owned buffer `bid` back to the kernel (published at the next submit). Panics if a
    /// send in flight still reads it.
    pub(super) fn recycle(&mut self, bid: u16) {
        let b = usize::from(bid);
        assert!(self.owned[b], "recycling buffer {b}, which the kernel owns");
        assert!(self.in_send[b] == 0, "recycling buffer {b} under a send");
        self.owned[b] = false;
        self.owned_count -= 1;
        let mask = self.nbufs - 1;
        let base = self.entries.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: the entry index is masked into the ring; the kernel reads entries only
        // between its head and the published tail, and this one is at the unpublished tail.
        // The setters leave the entry's `resv` (the tail, in entry 0) alone.
        let e = unsafe { &mut *base.add(usize::from(self.tail & mask)) };
        e.set_addr(self.mem.ptr.as_ptr() as u64 + (b * self.buf_size) as u64);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.tail_dirty = true;
    }

    fn publish_tail(&mut self) {
        if !self.tail_dirty {
            return;
        }
        let base = self.entries.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: the tail is a naturally aligned u16 inside entry 0 that the kernel reads
        // atomically (acquire); publishing with release makes the entries written before visible.
        let tail = unsafe { &*BufRingEntry::tail(base).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
        self.tail_dirty = false;
    }

    fn push(&mut self, e: &io_uring::squeue::Entry) -> io::Result<()> {
        if self.ring.submission().is_full() {
            self.ring.submit()?;
        }
        // SAFETY: every pointer in the SQE is into memory owned by `self` that stays put
        // until the matching CQE: the buffer ring and buffers (receives), a slot's `msghdr`
        // and `iovec`s, which are not touched while the slot is busy (sends).
        unsafe { self.ring.submission().push(e) }
            .map_err(|_| io::Error::other("submission queue full"))
    }
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("setup", &self.setup)
            .field("free_buffers", &self.free_buffers())
            .field("armed", &self.armed)
            .field("sending", &self.sending)
            .finish_non_exhaustive()
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        if self.busy() {
            // The kernel may still write into the buffers or read a slot: leak the memory.
            self.entries.leaked = true;
            self.mem.leaked = true;
            std::mem::forget(std::mem::take(&mut self.slots));
        } else {
            let _ = self.ring.submitter().unregister_buf_ring(BGID);
        }
    }
}

/// A set of ring setup flags, by name.
struct Mode {
    name: &'static str,
    set: fn(&mut io_uring::Builder),
}

/// The setup flag sets, best first.
const MODES: [Mode; 4] = [
    Mode {
        name: "SINGLE_ISSUER|DEFER_TASKRUN",
        set: |b| {
            b.setup_single_issuer().setup_defer_taskrun();
        },
    },
    Mode {
        name: "SINGLE_ISSUER|COOP_TASKRUN",
        set: |b| {
            b.setup_single_issuer().setup_coop_taskrun();
        },
    },
    Mode {
        name: "COOP_TASKRUN",
        set: |b| {
            b.setup_coop_taskrun();
        },
    },
    Mode {
        name: "no setup flags",
        set: |_| {},
    },
];

/// Builds a ring with the first task-run mode from `want` on that the kernel accepts.
fn build_ring(sq_entries: u32, want: TaskRun) -> io::Result<(IoUring, &'static str)> {
    let skip = match want {
        TaskRun::Defer => 0,
        TaskRun::Coop => 1,
        TaskRun::Plain => 3,
    };
    let mut last = None;
    for m in &MODES[skip..] {
        let mut b = IoUring::builder();
        b.setup_cqsize(sq_entries * 16);
        (m.set)(&mut b);
        match b.build(sq_entries) {
            Ok(r) => return Ok((r, m.name)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no ring")))
}

/// What this kernel's io_uring offers, as (feature, finding) lines.
pub(super) fn probe_kernel() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let found = |r: io::Result<()>| match r {
        Ok(()) => "yes".to_string(),
        Err(e) => format!("no ({e})"),
    };
    for (m, since) in MODES[..3].iter().zip(["6.1", "6.0", "5.19"]) {
        let mut b = IoUring::builder();
        (m.set)(&mut b);
        out.push((
            format!("setup {} ({since})", m.name),
            found(b.build(4).map(drop)),
        ));
    }
    let ring = match IoUring::new(4) {
        Ok(r) => r,
        Err(e) => {
            out.push(("io_uring_setup".into(), format!("no ({e})")));
            return out;
        }
    };
    let p = ring.params();
    for (name, on) in [
        ("feature NODROP (5.5)", p.is_feature_nodrop()),
        ("feature FAST_POLL (5.7)", p.is_feature_fast_poll()),
        ("feature EXT_ARG (5.11)", p.is_feature_ext_arg()),
    ] {
        out.push((name.into(), if on { "yes" } else { "no" }.into()));
    }
    let mut probe = io_uring::Probe::new();
    match ring.submitter().register_probe(&mut probe) {
        Ok(()) => {
            // Opcode numbers from include/uapi/linux/io_uring.h.
            for (name, op) in [
                ("op WRITEV", 2u8),
                ("op SENDMSG (5.3)", 9),
                ("op RECV (5.6; multishot flag 6.0)", 27),
                ("op SEND_ZC (6.0)", 47),
                ("op SENDMSG_ZC (6.1)", 48),
                ("op READ_MULTISHOT (6.7, for TUN)", 49),
                ("op RECV_ZC (6.15, needs NIC queue)", 58),
            ] {
                let s = probe.is_supported(op);
                out.push((name.into(), if s { "yes" } else { "no" }.into()));
            }
        }
        Err(e) => out.push(("opcode probe".into(), format!("no ({e})"))),
    }
    let pbuf = Uring::new(4, 2, 4096, 0, TaskRun::Plain).map(drop);
    out.push(("register PBUF_RING (5.19)".into(), found(pbuf)));
    out
}

/// An epoll instance.
#[derive(Debug)]
pub(super) struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// A new instance that reports up to `max_events` events per wait.
    pub(super) fn new(max_events: usize) -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers and returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; max_events.max(1)],
        })
    }

    /// Watches `fd` for `events` (`EPOLL*` flags), reported with `token`.
    pub(super) fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: epoll_ctl reads one epoll_event from a live local.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) and appends (token, events) to `out`: one
    /// `epoll_wait`.
    pub(super) fn wait(&mut self, timeout_ms: i32, out: &mut Vec<(u64, u32)>) -> io::Result<()> {
        let max = self.events.len().min(i32::MAX as usize) as i32;
        // SAFETY: the kernel writes at most `max` events into `self.events`, which holds that
        // many.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                max,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        out.extend(self.events[..n as usize].iter().map(|e| (e.u64, e.events)));
        Ok(())
    }
}

/// Pins the calling thread to `cpu`.
pub(super) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed; CPU_SET writes one bit of it
    // (it checks the index against the set's size).
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    };
    // SAFETY: sched_setaffinity reads `size_of::<cpu_set_t>()` bytes from a live local.
    let r = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `TCP_NOTSENT_LOWAT` on a TCP socket.
pub(super) fn set_notsent_lowat(fd: RawFd, bytes: u32) -> io::Result<()> {
    let v = bytes as libc::c_int;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clock ticks per second (`/proc` CPU times are in these).
pub(super) fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Counts one tracepoint's hits by one thread (`perf_event_open`, counting mode).
#[derive(Debug)]
pub(super) struct TraceCounter(File);

impl TraceCounter {
    /// Starts counting tracepoint `id` (from tracefs `events/*/*/id`) for thread `tid`.
    pub(super) fn open(tid: i32, id: u64) -> io::Result<Self> {
        // `struct perf_event_attr` at PERF_ATTR_SIZE_VER0 (64 bytes): type (u32) and size (u32),
        // config (u64), then zeros: enabled from the start, not inherited, no sampling.
        const PERF_TYPE_TRACEPOINT: u64 = 2;
        const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
        let mut attr = [0u64; 8];
        attr[0] = if cfg!(target_endian = "little") {
            PERF_TYPE_TRACEPOINT | (64 << 32)
        } else {
            (PERF_TYPE_TRACEPOINT << 32) | 64
        };
        attr[1] = id;
        // SAFETY: the kernel reads 64 bytes of `attr` (its `size` field says so) and returns a
        // new file descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                tid as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(Self(unsafe { File::from_raw_fd(fd as RawFd) }))
    }

    /// The count so far.
    pub(super) fn read(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.0.read_exact(&mut b)?;
        Ok(u64::from_ne_bytes(b))
    }
}
