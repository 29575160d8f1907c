//! The io_uring driver: one ring per worker, on the `io-uring` crate, inside the worker's
//! tokio runtime.
//!
//! Tasks submit operations (a receive into a link's buffer, a vectored send of its queue, a
//! packet written to the TUN queue) by pushing an entry onto the submission queue, which costs
//! no system call. The worker's [`Ring::drive`] task then enters the kernel once for everything
//! pushed since its last turn, takes every completion there is and wakes the tasks they belong
//! to; a busy worker thus does one `io_uring_enter` per turn however many links it serves,
//! where the portable driver does a `read` or `writev` per operation and an `epoll_wait` in
//! between. When nothing is pushed and nothing completes, the driver waits for the ring's
//! descriptor to become readable through the runtime's reactor, with the worker's other
//! sockets (QUIC's UDP socket, timers, channels): there is one wait point per thread.
//!
//! The ring is set up for its thread only (`SINGLE_ISSUER`, where the kernel has it) and with
//! cooperative task work (`COOP_TASKRUN` and `TASKRUN_FLAG`: completions are not forced on the
//! worker by an interrupt; the flag tells [`Ring::drive`] when some wait to be posted).
//!
//! An operation owns the memory the kernel works on (the buffer, the `iovec`s and the message
//! header) until its completion arrives, whether or not its future is still waited on: a future
//! dropped early asks the kernel to cancel, and the memory is freed when the cancellation
//! completes. A ring dropped with operations still in flight cancels them, waits a bounded time
//! and leaks what the kernel never gave back rather than free memory it may still write.
//!
//! With `sockopt` and `tun`, this is where the crate's unsafe code is: the entries pushed here
//! point into memory their operation owns.

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, opcode, squeue};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Submission-queue entries. A full queue is submitted on the spot, so this bounds nothing
/// but the batch one `io_uring_enter` can carry.
const SQ_ENTRIES: u32 = 256;
/// Completion-queue entries. More completions at once go to the kernel's overflow list,
/// which only an `io_uring_enter` moves back into the queue (see [`Ring::turn`]): so this too
/// is only a batch size.
const CQ_ENTRIES: u32 = 4096;
/// Most `iovec`s in one send (the kernel's `UIO_MAXIOV`).
const MAX_IOV: usize = 1024;
/// Most detached writes ([`Ring::write_detached`]) in flight at once.
const MAX_DETACHED: usize = 1024;
/// Most idle batches kept for detached writes.
const SPARE_BATCHES: usize = 64;
/// Times an entry is offered to a full submission queue (entering the kernel in between)
/// before the operation fails.
const PUSH_TRIES: usize = 64;
/// The `user_data` of cancellation requests, whose completions carry nothing.
const CANCEL: u64 = u64::MAX;
/// How long a dropped ring waits for the kernel to give back operations in flight.
const DRAIN_WAIT: Duration = Duration::from_millis(500);

/// What an operation in flight owns, so it outlives the operation.
#[derive(Debug)]
pub(crate) enum Hold {
    /// A buffer being read into (its spare capacity) or written from.
    Buf(BytesMut),
    /// Frames being sent, with their `iovec`s and message header.
    Batch(Box<Batch>),
}

/// A vectored send or write in flight: the frames and the kernel's view of them.
#[derive(Debug)]
pub(crate) struct Batch {
    bufs: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl Batch {
    /// An empty batch, reused from one send to the next.
    pub(crate) fn new() -> Box<Self> {
        Box::new(Self {
            bufs: Vec::new(),
            iov: Vec::new(),
            // SAFETY: msghdr is plain data; all zeroes is a valid (empty) header.
            msg: unsafe { std::mem::zeroed() },
        })
    }

    /// Points the `iovec`s and the header at the first [`MAX_IOV`] buffers of `bufs` (which
    /// the batch then owns); the number of bytes they hold.
    fn load(&mut self, bufs: Vec<Bytes>) -> usize {
        self.bufs = bufs;
        self.iov.clear();
        let mut len = 0;
        for b in self.bufs.iter().take(MAX_IOV) {
            len += b.len();
            self.iov.push(libc::iovec {
                iov_base: b.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            });
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len();
        len
    }

    /// Gives the buffers back.
    fn take(&mut self) -> Vec<Bytes> {
        self.iov.clear();
        self.msg.msg_iov = std::ptr::null_mut();
        self.msg.msg_iovlen = 0;
        std::mem::take(&mut self.bufs)
    }
}

/// The file an operation works on. The kernel looks a descriptor's number up only when it
/// takes the entry, which may be after the task that pushed it is gone: the operation keeps
/// the file open until its completion, so the number cannot name another file meanwhile.
pub(crate) type File = Rc<dyn AsRawFd>;

/// One operation's place in the ring's table (its index is the entry's `user_data`).
enum Slot {
    Free,
    /// In flight, its future waiting.
    Waiting {
        waker: Option<Waker>,
        hold: Hold,
        file: File,
    },
    /// Completed, its future not yet polled.
    Done {
        res: i32,
        hold: Hold,
    },
    /// In flight, its future dropped: freed when the completion arrives.
    Orphan {
        hold: Hold,
        file: File,
    },
    /// A write nobody waits for, of `want` bytes carrying `packets` packets.
    Detached {
        hold: Box<Batch>,
        file: File,
        want: usize,
        packets: u64,
    },
}

/// What one ring has done, for the log at its end.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    enters: u64,
    submitted: u64,
    completions: u64,
    /// Entries the kernel never took (the submission queue stayed full).
    refused: u64,
}

struct State {
    uring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Entries pushed since the last `io_uring_enter`.
    pushed: usize,
    /// Operations whose completion has not arrived (orphans and detached writes included).
    in_flight: usize,
    /// Detached writes in flight.
    detached: usize,
    /// Packets of completed detached writes, written and failed, not yet taken.
    detached_done: (u64, u64),
    /// Batches of finished detached writes, for the next ones.
    #[allow(
        clippy::vec_box,
        reason = "each goes back into a slot as the box it was"
    )]
    spare: Vec<Box<Batch>>,
    /// Wakers of operations completed while an entry waited for room, for the next turn.
    wake_later: Vec<Waker>,
    /// Slots whose operation's cancellation found the submission queue full: pushed on the
    /// next turns until one takes it (an orphan must not wait for its peer, which may never
    /// send again). Not a reason to turn on its own: the queue was full for want of an enter,
    /// which the next turn makes anyway, and a kernel that keeps refusing must not make the
    /// drive spin.
    cancel_later: Vec<u32>,
    tally: Tally,
}

/// The ring's descriptor as the runtime's reactor sees it (the ring owns it).
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Where the counts of completed detached writes go.
type DetachedSink = Box<dyn Fn(u64, u64)>;

/// A worker's ring. Only its own thread uses it (`Rc`).
pub(crate) struct Ring {
    /// Declared first so it is deregistered before `state` closes the descriptor.
    readable: AsyncFd<RingFd>,
    state: RefCell<State>,
    /// [`Ring::drive`]'s waker while it is idle: pushing an entry wakes it.
    idle: Cell<Option<Waker>>,
    /// Told what detached writes did ([`Ring::on_detached`]).
    detached_sink: RefCell<Option<DetachedSink>>,
    setup: &'static str,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("setup", &self.setup).finish()
    }
}

/// A ring of `sq` submission and `cq` completion entries, with the setup flags tried best
/// first; and how the log names the flags it got.
fn build(sq: u32, cq: u32) -> io::Result<(IoUring, &'static str)> {
    type Set = fn(&mut io_uring::Builder);
    let tries: [(Set, &'static str); 3] = [
        (
            |b| {
                b.setup_single_issuer()
                    .setup_coop_taskrun()
                    .setup_taskrun_flag();
            },
            "single issuer, cooperative task work",
        ),
        (
            |b| {
                b.setup_coop_taskrun().setup_taskrun_flag();
            },
            "cooperative task work",
        ),
        (|_| {}, "no setup flags"),
    ];
    let mut last = None;
    for (set, name) in tries {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq);
        set(&mut b);
        match b.build(sq) {
            Ok(r) => return Ok((r, name)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("io_uring setup")))
}

/// Whether this kernel lets the process build a ring that has every operation the driver
/// uses (`kernel.io_uring_disabled`, seccomp and old kernels say no).
pub(crate) fn available() -> Result<(), String> {
    let (ring, _) = build(SQ_ENTRIES, CQ_ENTRIES).map_err(|e| e.to_string())?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("probing operations: {e}"))?;
    let needed = [
        (opcode::Recv::CODE, "recv"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::Writev::CODE, "writev"),
        (opcode::AsyncCancel::CODE, "cancel"),
    ];
    match needed.iter().find(|(code, _)| !probe.is_supported(*code)) {
        Some((_, name)) => Err(format!("the kernel's io_uring has no {name}")),
        None => Ok(()),
    }
}

impl Ring {
    /// Builds a ring and registers its descriptor with the current runtime.
    pub(crate) fn new() -> io::Result<Rc<Self>> {
        Self::sized(SQ_ENTRIES, CQ_ENTRIES)
    }

    /// The same with `sq` submission and `cq` completion entries.
    fn sized(sq: u32, cq: u32) -> io::Result<Rc<Self>> {
        let (uring, setup) = build(sq, cq)?;
        let fd = uring.as_raw_fd();
        // SAFETY: the ring owns `fd` and closes it only when `State` drops, after `readable`
        // (declared before it in `Ring`) has deregistered it.
        let readable = unsafe { AsyncFd::register_with_interest(RingFd(fd), Interest::READABLE) }?;
        Ok(Rc::new(Self {
            readable,
            state: RefCell::new(State {
                uring,
                slots: Vec::new(),
                free: Vec::new(),
                pushed: 0,
                in_flight: 0,
                detached: 0,
                detached_done: (0, 0),
                spare: Vec::new(),
                wake_later: Vec::new(),
                cancel_later: Vec::new(),
                tally: Tally::default(),
            }),
            idle: Cell::new(None),
            detached_sink: RefCell::new(None),
            setup,
        }))
    }

    /// The setup flags the kernel took.
    pub(crate) fn setup(&self) -> &'static str {
        self.setup
    }

    /// Pushes `entry`, whose memory `hold` owns, and returns the future of its completion.
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` points into `hold` (heap memory that moving `hold` does not
    /// move) or stays valid until the completion arrives for another reason.
    unsafe fn start(self: &Rc<Self>, entry: squeue::Entry, hold: Hold, file: File) -> Op {
        let mut st = self.state.borrow_mut();
        let idx = st.slot(Slot::Waiting {
            waker: None,
            hold,
            file,
        });
        if st.push(&entry.user_data(u64::from(idx))) {
            st.in_flight += 1;
        } else if let Slot::Waiting { hold, .. } =
            std::mem::replace(&mut st.slots[idx as usize], Slot::Free)
        {
            // Never submitted: it fails at once, with its memory back.
            st.slots[idx as usize] = Slot::Done {
                res: -libc::EAGAIN,
                hold,
            };
        }
        drop(st);
        self.kick();
        Op {
            ring: self.clone(),
            idx,
            done: false,
        }
    }

    /// Wakes [`Ring::drive`] if it is waiting.
    fn kick(&self) {
        if let Some(w) = self.idle.take() {
            w.wake();
        }
    }

    /// Runs the ring for its worker: submits what tasks pushed and hands out completions,
    /// until the worker's runtime stops.
    pub(crate) async fn drive(self: Rc<Self>) {
        let mut wake = Vec::new();
        loop {
            let busy = self.turn(&mut wake);
            for w in wake.drain(..) {
                w.wake();
            }
            if busy {
                // Let the woken tasks run (and push their next operations) before the next
                // turn, so one enter carries them all. Not `yield_now`, which would also make
                // the runtime poll its epoll reactor on every turn.
                requeue().await;
            } else {
                poll_fn(|cx| self.poll_idle(cx)).await;
            }
        }
    }

    /// One turn: enter the kernel if anything was pushed or completions wait to be posted
    /// (task work, or completions the full completion queue sent to the kernel's overflow
    /// list), then take every completion. True if it did anything.
    fn turn(&self, wake: &mut Vec<Waker>) -> bool {
        let mut st = self.state.borrow_mut();
        let mut busy = false;
        st.push_cancels();
        let kernel_work = {
            let sq = st.uring.submission();
            sq.taskrun() || sq.cq_overflow()
        };
        if st.pushed > 0 || kernel_work {
            busy |= st.pushed > 0;
            st.enter();
        }
        busy |= st.reap(wake) > 0;
        wake.append(&mut st.wake_later);
        let (written, failed) = std::mem::take(&mut st.detached_done);
        drop(st);
        if (written, failed) != (0, 0)
            && let Some(sink) = &*self.detached_sink.borrow()
        {
            sink(written, failed);
        }
        busy
    }

    /// Waits until something is pushed or the ring's descriptor says completions are there.
    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.idle.set(Some(cx.waker().clone()));
        {
            let mut st = self.state.borrow_mut();
            if st.pushed > 0
                || st.uring.submission().cq_overflow()
                || !st.uring.completion().is_empty()
            {
                return Poll::Ready(());
            }
        }
        loop {
            match self.readable.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    // Not expected from a registered descriptor; the turn that follows
                    // enters the kernel anyway.
                    tracing::warn!("io_uring readiness: {e}");
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(mut guard)) => {
                    let mut st = self.state.borrow_mut();
                    if !st.uring.completion().is_empty() || st.uring.submission().cq_overflow() {
                        return Poll::Ready(());
                    }
                    drop(st);
                    guard.clear_ready();
                }
            }
        }
    }
}

/// Puts the calling task at the back of the worker's run queue once: the tasks woken before
/// it run first.
async fn requeue() {
    let mut queued = false;
    poll_fn(|cx| {
        if std::mem::replace(&mut queued, true) {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

impl State {
    /// Pushes the cancellations that found no room before; keeps those that still find none.
    fn push_cancels(&mut self) {
        let mut later = std::mem::take(&mut self.cancel_later);
        later.retain(|&idx| {
            // Its operation may have completed meanwhile.
            matches!(self.slots.get(idx as usize), Some(Slot::Orphan { .. }))
                && !self.push(&cancel(idx))
        });
        self.cancel_later = later;
    }

    /// Takes a free place in the table for `slot`; its index.
    fn slot(&mut self, slot: Slot) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        }
    }

    /// Pushes an entry, entering the kernel first if the submission queue is full (and
    /// taking completions, if the completion queue is what holds it up). False if the kernel
    /// kept refusing: the entry was not pushed.
    fn push(&mut self, entry: &squeue::Entry) -> bool {
        for _ in 0..PUSH_TRIES {
            // SAFETY: the caller of `Ring::start` vouched for the entry's pointers;
            // cancellations carry none.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                self.pushed += 1;
                return true;
            }
            self.enter();
            if self.uring.submission().is_full() {
                let mut later = std::mem::take(&mut self.wake_later);
                self.reap(&mut later);
                self.wake_later = later;
            }
        }
        self.tally.refused += 1;
        false
    }

    /// Submits what was pushed (and lets the kernel post completed work).
    fn enter(&mut self) {
        self.tally.enters += 1;
        match self.uring.submit() {
            Ok(n) => {
                self.tally.submitted += n as u64;
                self.pushed = self.pushed.saturating_sub(n);
            }
            // EBUSY: the completion queue is full and completions wait in the overflow list;
            // the next reap makes room and the next turn's enter moves them in. EINTR and
            // EAGAIN: try again on the next turn.
            Err(e) => tracing::trace!("io_uring_enter: {e}"),
        }
    }

    /// Takes every completion: a waiting operation is marked done and its waker collected, an
    /// orphan's memory is freed. Returns how many there were.
    fn reap(&mut self, wake: &mut Vec<Waker>) -> usize {
        let mut n = 0;
        let Self {
            uring,
            slots,
            free,
            in_flight,
            detached,
            detached_done,
            spare,
            ..
        } = self;
        for cqe in uring.completion() {
            n += 1;
            if cqe.user_data() == CANCEL {
                continue;
            }
            let Ok(idx) = usize::try_from(cqe.user_data()) else {
                continue;
            };
            let Some(slot) = slots.get_mut(idx) else {
                continue;
            };
            match std::mem::replace(slot, Slot::Free) {
                Slot::Waiting { waker, hold, file } => {
                    drop(file);
                    *slot = Slot::Done {
                        res: cqe.result(),
                        hold,
                    };
                    wake.extend(waker);
                }
                Slot::Orphan { hold, file } => {
                    drop((hold, file));
                    free.push(idx as u32);
                }
                Slot::Detached {
                    mut hold,
                    file,
                    want,
                    packets,
                } => {
                    drop(file);
                    if usize::try_from(cqe.result()).ok() == Some(want) {
                        detached_done.0 += packets;
                    } else {
                        detached_done.1 += packets;
                    }
                    drop(hold.take());
                    if spare.len() < SPARE_BATCHES {
                        spare.push(hold);
                    }
                    *detached -= 1;
                    free.push(idx as u32);
                }
                // Not ours (cannot happen: every entry with a slot's index is in flight).
                other => {
                    *slot = other;
                    continue;
                }
            }
            *in_flight -= 1;
        }
        self.tally.completions += n as u64;
        n
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            let live: Vec<usize> = (self.slots.iter().enumerate())
                .filter(|(_, s)| {
                    matches!(
                        s,
                        Slot::Waiting { .. } | Slot::Orphan { .. } | Slot::Detached { .. }
                    )
                })
                .map(|(i, _)| i)
                .collect();
            for i in live {
                // One that cannot be pushed leaves its operation to end with the ring.
                let _ = self.push(&cancel(u32::try_from(i).unwrap_or(u32::MAX)));
            }
            let ts = Timespec::from(DRAIN_WAIT / 10);
            let args = SubmitArgs::new().timespec(&ts);
            let mut sink = Vec::new();
            for _ in 0..10 {
                if self.in_flight == 0 {
                    break;
                }
                let _ = self.uring.submitter().submit_with_args(1, &args);
                self.reap(&mut sink);
                // The tasks are gone: nobody polls these again.
                for s in &mut self.slots {
                    if let Slot::Done { .. } = s {
                        *s = Slot::Free;
                    }
                }
            }
            if self.in_flight > 0 {
                tracing::warn!(
                    in_flight = self.in_flight,
                    "io_uring: operations still in flight at the end; their memory is leaked"
                );
                for s in self.slots.drain(..) {
                    match s {
                        // The files too: the kernel may still use their numbers.
                        Slot::Waiting { hold, file, .. } | Slot::Orphan { hold, file } => {
                            std::mem::forget((hold, file))
                        }
                        Slot::Detached { hold, file, .. } => std::mem::forget((hold, file)),
                        Slot::Free | Slot::Done { .. } => {}
                    }
                }
            }
        }
        tracing::debug!(
            enters = self.tally.enters,
            submitted = self.tally.submitted,
            completions = self.tally.completions,
            refused = self.tally.refused,
            "io_uring ring closed"
        );
    }
}

/// The completion of one operation: its result (a count, or minus an errno) and what it held.
pub(crate) struct Op {
    ring: Rc<Ring>,
    idx: u32,
    done: bool,
}

impl Future for Op {
    type Output = (i32, Hold);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.done {
            // Its slot may hold another operation by now.
            return Poll::Pending;
        }
        let ring = self.ring.clone();
        let mut st = ring.state.borrow_mut();
        let State { slots, free, .. } = &mut *st;
        let slot = &mut slots[self.idx as usize];
        match slot {
            Slot::Waiting { waker, .. } => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Slot::Done { .. } => {
                let Slot::Done { res, hold } = std::mem::replace(slot, Slot::Free) else {
                    return Poll::Pending;
                };
                free.push(self.idx);
                self.done = true;
                Poll::Ready((res, hold))
            }
            // Polled after it finished: never again ready.
            Slot::Free | Slot::Orphan { .. } | Slot::Detached { .. } => Poll::Pending,
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.ring.state.borrow_mut();
        let idx = self.idx as usize;
        match std::mem::replace(&mut st.slots[idx], Slot::Free) {
            Slot::Waiting { hold, file, .. } => {
                st.slots[idx] = Slot::Orphan { hold, file };
                // One that cannot be pushed now is pushed on a later turn: the operation
                // holds its file open, so closing the link's socket would not end it.
                if !st.push(&cancel(self.idx)) {
                    st.cancel_later.push(self.idx);
                }
                drop(st);
                self.ring.kick();
            }
            Slot::Done { hold, .. } => {
                drop(hold);
                st.free.push(self.idx);
            }
            other => st.slots[idx] = other,
        }
    }
}

/// The cancellation of the operation in slot `idx` (its completion carries nothing).
fn cancel(idx: u32) -> squeue::Entry {
    opcode::AsyncCancel::new(u64::from(idx))
        .build()
        .user_data(CANCEL)
}

/// A result as the kernel gives it: a count, or minus an errno.
fn result(res: i32) -> io::Result<usize> {
    usize::try_from(res).map_err(|_| io::Error::from_raw_os_error(-res))
}

impl Ring {
    /// Receives from the stream socket `file` into `buf`'s spare capacity (which must not be
    /// empty); `buf`'s length grows by what was received.
    pub(crate) async fn recv(
        self: &Rc<Self>,
        file: File,
        mut buf: BytesMut,
    ) -> (io::Result<usize>, BytesMut) {
        let fd = file.as_raw_fd();
        let spare = buf.spare_capacity_mut();
        let len = u32::try_from(spare.len()).unwrap_or(u32::MAX);
        let entry = opcode::Recv::new(Fd(fd), spare.as_mut_ptr().cast(), len).build();
        // SAFETY: the entry points into `buf`'s heap allocation, which the hold owns.
        let (res, hold) = unsafe { self.start(entry, Hold::Buf(buf), file) }.await;
        let Hold::Buf(mut buf) = hold else {
            return (
                Err(io::Error::other("io_uring: operation lost its buffer")),
                BytesMut::new(),
            );
        };
        let r = result(res);
        if let Ok(n) = r {
            // SAFETY: the kernel wrote `n <= len` bytes at the start of the spare capacity.
            unsafe { buf.set_len(buf.len() + n.min(len as usize)) };
        }
        (r, buf)
    }

    /// Writes `bufs` to `file` in one `writev` without waiting for it: for a TUN queue, where
    /// a write is one whole packet and never waits for room, so the writes of a turn go to the
    /// kernel together in the turn's one enter. What became of them is counted (see
    /// [`Ring::on_detached`]). At most [`MAX_DETACHED`] such writes are in flight, and
    /// a batch has at most [`MAX_IOV`] buffers: past either, the buffers come back and the
    /// caller writes them itself.
    pub(crate) fn write_detached(
        self: &Rc<Self>,
        file: File,
        bufs: Vec<Bytes>,
        packets: u64,
    ) -> Result<(), Vec<Bytes>> {
        let mut st = self.state.borrow_mut();
        if st.detached >= MAX_DETACHED || bufs.len() > MAX_IOV {
            return Err(bufs);
        }
        let mut batch = st.spare.pop().unwrap_or_else(Batch::new);
        let want = batch.load(bufs);
        let iovs = u32::try_from(batch.iov.len()).unwrap_or(0);
        let entry = opcode::Writev::new(Fd(file.as_raw_fd()), batch.iov.as_ptr(), iovs)
            .offset(u64::MAX)
            .build();
        // The `iovec`s live in the batch the slot owns until the completion, and point into
        // the buffers it owns.
        let idx = st.slot(Slot::Detached {
            hold: batch,
            file,
            want,
            packets,
        });
        if !st.push(&entry.user_data(u64::from(idx))) {
            // Never submitted: the caller writes the buffers itself.
            let Slot::Detached { mut hold, .. } =
                std::mem::replace(&mut st.slots[idx as usize], Slot::Free)
            else {
                return Err(Vec::new());
            };
            st.free.push(idx);
            return Err(hold.take());
        }
        st.in_flight += 1;
        st.detached += 1;
        drop(st);
        self.kick();
        Ok(())
    }

    /// Sets what is told, after each turn that completed detached writes, how many packets
    /// they carried: written, and failed (an error, or less written than the packet).
    pub(crate) fn on_detached(&self, sink: impl Fn(u64, u64) + 'static) {
        *self.detached_sink.borrow_mut() = Some(Box::new(sink));
    }

    /// Sends the first [`MAX_IOV`] buffers of `bufs` on the stream socket `file` in one
    /// `sendmsg`; returns how many bytes went (possibly fewer than all) and the buffers.
    pub(crate) async fn send(
        self: &Rc<Self>,
        file: File,
        mut batch: Box<Batch>,
        bufs: Vec<Bytes>,
    ) -> (io::Result<usize>, Box<Batch>, Vec<Bytes>) {
        batch.load(bufs);
        let entry = opcode::SendMsg::new(Fd(file.as_raw_fd()), &raw const batch.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        // SAFETY: the header and its `iovec`s live in the box and point into the buffers it
        // owns; moving the box moves none of them.
        let (res, hold) = unsafe { self.start(entry, Hold::Batch(batch), file) }.await;
        match hold {
            Hold::Batch(mut b) => {
                let bufs = b.take();
                (result(res), b, bufs)
            }
            _ => (
                Err(io::Error::other("io_uring: operation lost its buffers")),
                Batch::new(),
                Vec::new(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use hyphae_test_support::tcp_pair;

    use super::*;

    /// Runs `f` on a current-thread runtime with a ring driven beside it; the runtime, its
    /// tasks and the ring are gone when this returns.
    fn on_ring<T, F: Future<Output = T>>(f: impl FnOnce(Rc<Ring>) -> F) -> T {
        on_sized_ring(SQ_ENTRIES, CQ_ENTRIES, f)
    }

    /// The same with a ring of `sq` submission and `cq` completion entries.
    fn on_sized_ring<T, F: Future<Output = T>>(
        sq: u32,
        cq: u32,
        f: impl FnOnce(Rc<Ring>) -> F,
    ) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, async {
            let ring = Ring::sized(sq, cq).expect("io_uring on this host");
            tokio::task::spawn_local(ring.clone().drive());
            f(ring).await
        })
    }

    fn in_flight(ring: &Ring) -> usize {
        ring.state.borrow().in_flight
    }

    #[test]
    fn receives_and_sends_in_order_across_many_buffers() {
        on_ring(|ring| async move {
            let (a, mut b) = tcp_pair();
            let a: File = Rc::new(a);
            // 3,000 buffers: more than one sendmsg can carry.
            let bufs: Vec<Bytes> = (0..3000u32)
                .map(|i| Bytes::from(i.to_be_bytes().to_vec()))
                .collect();
            let want: Vec<u8> = bufs.iter().flat_map(|b| b.to_vec()).collect();
            let reader = std::thread::spawn(move || {
                let mut got = vec![0; 12_000];
                b.read_exact(&mut got).unwrap();
                b.write_all(b"pong").unwrap();
                got
            });
            let mut batch = Batch::new();
            let mut rest = bufs;
            while !rest.is_empty() {
                let (n, h, back) = ring.send(a.clone(), batch, rest).await;
                batch = h;
                rest = back;
                crate::daemon::link::advance_batch(&mut rest, n.unwrap());
            }
            let got = tokio::task::spawn_blocking(move || reader.join().unwrap())
                .await
                .unwrap();
            assert_eq!(got, want);
            let mut buf = BytesMut::from(&b"pre"[..]);
            buf.reserve(64);
            let (n, buf) = ring.recv(a.clone(), buf).await;
            assert_eq!(n.unwrap(), 4);
            assert_eq!(&buf[..], b"prepong", "appended after what was there");
            assert_eq!(in_flight(&ring), 0);
        });
    }

    #[test]
    fn a_dropped_receive_is_cancelled_and_its_buffer_freed() {
        on_ring(|ring| async move {
            let (a, _b) = tcp_pair();
            let a: File = Rc::new(a);
            let mut buf = BytesMut::with_capacity(1 << 16);
            buf.extend_from_slice(b"x");
            let recv = ring.recv(a.clone(), buf);
            // Nothing arrives: the receive is still in flight when it is given up.
            let timed_out = tokio::time::timeout(Duration::from_millis(50), recv).await;
            assert!(timed_out.is_err());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while in_flight(&ring) > 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cancel never completed"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let st = ring.state.borrow();
            assert!(st.slots.iter().all(|s| matches!(s, Slot::Free)));
        });
    }

    #[test]
    fn errors_come_back_as_errors_with_the_buffer() {
        on_ring(|ring| async move {
            let (a, b) = tcp_pair();
            let a: File = Rc::new(a);
            drop(b);
            let mut buf = BytesMut::with_capacity(64);
            buf.extend_from_slice(b"kept");
            // The peer closed: end of stream first, then a send fails (reset or broken pipe).
            let (n, buf) = ring.recv(a.clone(), buf).await;
            assert_eq!(n.unwrap(), 0);
            assert_eq!(&buf[..], b"kept");
            let mut batch = Batch::new();
            let mut failed = None;
            for _ in 0..100 {
                let (r, h, _) = ring
                    .send(a.clone(), batch, vec![Bytes::from(vec![0; 65536])])
                    .await;
                batch = h;
                if let Err(e) = r {
                    failed = Some(e);
                    break;
                }
            }
            let e = failed.expect("a send to a closed peer fails");
            assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ),
                "{e}"
            );
        });
    }

    #[test]
    fn detached_writes_are_written_in_order_and_counted_when_they_complete() {
        on_ring(|ring| async move {
            let counts = Rc::new(Cell::new((0u64, 0u64)));
            let c = counts.clone();
            ring.on_detached(move |w, f| c.set((c.get().0 + w, c.get().1 + f)));
            let (a, mut b) = tcp_pair();
            let a: File = Rc::new(a);
            for i in 0..10u8 {
                let bufs = vec![Bytes::from(vec![i; 100]), Bytes::from(vec![i; 28])];
                ring.write_detached(a.clone(), bufs, 2).unwrap();
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while counts.get().0 < 20 {
                assert!(tokio::time::Instant::now() < deadline, "{:?}", counts.get());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(counts.get(), (20, 0), "20 packets written, none failed");
            let got = tokio::task::spawn_blocking(move || {
                let mut v = vec![0; 1280];
                b.read_exact(&mut v).unwrap();
                v
            })
            .await
            .unwrap();
            let want: Vec<u8> = (0..10u8).flat_map(|i| [i; 128]).collect();
            assert_eq!(got, want);

            // To a socket whose peer is gone, writes fail and are counted as failed.
            let (a, b) = tcp_pair();
            let a: File = Rc::new(a);
            drop(b);
            for _ in 0..50 {
                let _ = ring.write_detached(a.clone(), vec![Bytes::from(vec![0; 4096])], 1);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            assert!(counts.get().1 > 0, "failures counted: {:?}", counts.get());
            assert_eq!(in_flight(&ring), 0);
        });
    }

    #[test]
    fn a_ring_dropped_with_operations_in_flight_ends() {
        let (a, _b) = tcp_pair();
        let a: File = Rc::new(a);
        on_ring(|ring| async move {
            // Left in flight when the runtime, its tasks and the ring go away.
            tokio::task::spawn_local(async move {
                let _ = ring.recv(a, BytesMut::with_capacity(4096)).await;
            });
            tokio::task::yield_now().await;
        });
    }

    /// A link that ends before the ring's next turn (here: the worker stops) leaves a receive
    /// pushed but not yet submitted. The operation keeps its socket open, so the number is
    /// not given to a new socket meanwhile, and whatever the receive does, it does on its own
    /// socket: a new socket's bytes stay where they are.
    #[test]
    fn an_operation_keeps_its_socket_open_until_it_ends() {
        use std::os::unix::net::UnixStream;
        let (new, _new_peer) = on_ring(|ring| async move {
            let (old, _old_peer) = UnixStream::pair().unwrap();
            let fd = old.as_raw_fd();
            let old: File = Rc::new(old);
            let mut recv = Box::pin(ring.recv(old.clone(), BytesMut::with_capacity(4096)));
            poll_fn(|cx| {
                assert!(recv.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            drop((recv, old));
            let (new, mut new_peer) = UnixStream::pair().unwrap();
            for s in [&new, &new_peer] {
                assert_ne!(s.as_raw_fd(), fd, "the old socket's number is still taken");
            }
            new_peer.write_all(b"secret").unwrap();
            (new, new_peer)
        });
        // The ring has ended: whatever the receive did, it did by now.
        let mut got = [0; 6];
        new.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (&new)
            .read_exact(&mut got)
            .expect("the new socket's bytes are there");
        assert_eq!(&got, b"secret");
    }

    /// More completions at once than the completion queue holds (here 40 receives against 8
    /// entries, completing while the worker runs without entering the kernel) go to the
    /// kernel's overflow list. The ring takes them all without anything else being pushed.
    #[test]
    fn completions_beyond_the_queue_are_all_taken() {
        use std::os::unix::net::UnixStream;
        const N: usize = 40;
        on_sized_ring(4, 8, |ring| async move {
            let done = Rc::new(Cell::new(0));
            let mut peers = Vec::new();
            for _ in 0..N {
                let (a, p) = UnixStream::pair().unwrap();
                let (ring, done) = (ring.clone(), done.clone());
                tokio::task::spawn_local(async move {
                    let (r, _) = ring.recv(Rc::new(a), BytesMut::with_capacity(64)).await;
                    r.unwrap();
                    done.set(done.get() + 1);
                });
                peers.push(p);
            }
            // Every receive submitted and waiting.
            for _ in 0..500 {
                if in_flight(&ring) == N && ring.state.borrow().pushed == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(in_flight(&ring), N, "every receive waiting");
            let writer = std::thread::spawn(move || {
                for p in &mut peers {
                    p.write_all(b"x").unwrap();
                }
                peers
            });
            // No system call on this thread meanwhile: the completions wait as task work,
            // and are posted all at once when it next enters the kernel.
            let peers = writer.join().unwrap();
            for _ in 0..500 {
                if done.get() == N {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(done.get(), N, "every receive completed");
            drop(peers);
        });
    }
}
