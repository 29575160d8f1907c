//! What receive-buffer sizing needs from a TCP socket and socket2 does not wrap: the kernel's
//! RTT estimates (`TCP_INFO`), the bytes waiting unread (`FIONREAD`), the buffer size (with
//! `SO_RCVBUFFORCE`) and the window clamp (`TCP_WINDOW_CLAMP`), on a descriptor the caller
//! keeps open; a non-blocking send (a link's direct writes); and two process settings (descriptor limit, huge pages). With `tun`, the only
//! unsafe code in the crate.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// The smaller of the kernel's receive-side RTT estimate and the smoothed RTT of our sends on
/// a TCP socket; `None` if it has neither (or on a platform without `TCP_INFO`).
#[cfg(target_os = "linux")]
pub(crate) fn rtt(fd: RawFd) -> Option<Duration> {
    // SAFETY: tcp_info is plain integers, valid when zeroed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    if !get_opt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info) {
        return None;
    }
    // Both overestimate, each in its own way: the receive-side estimate takes the idle time
    // before a burst for delay, the smoothed RTT of our own sends the peer's delayed ACKs. The
    // smaller one is the closer.
    let us = match (info.tcpi_rcv_rtt, info.tcpi_rtt) {
        (0, 0) => return None,
        (0, s) | (s, 0) => s,
        (r, s) => r.min(s),
    };
    Some(Duration::from_micros(u64::from(us)))
}

/// See the Linux version.
#[cfg(not(target_os = "linux"))]
pub(crate) fn rtt(_fd: RawFd) -> Option<Duration> {
    None
}

/// Bytes received and not yet read.
#[cfg(target_os = "linux")]
pub(crate) fn queued(fd: RawFd) -> Option<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into `v`, which lives for the call.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &raw mut v) };
    (r == 0).then(|| u32::try_from(v).ok()).flatten()
}

/// Sets the receive buffer to `bytes` (the kernel doubles it for bookkeeping). Past
/// `net.core.rmem_max` only with CAP_NET_ADMIN (SO_RCVBUFFORCE); otherwise capped there.
#[cfg(target_os = "linux")]
pub(crate) fn set_rcvbuf(fd: RawFd, bytes: u32) -> io::Result<()> {
    let set = |opt| int_opt(fd, libc::SOL_SOCKET, opt, bytes);
    set(libc::SO_RCVBUFFORCE).or_else(|_| set(libc::SO_RCVBUF))
}

#[cfg(target_os = "linux")]
fn int_opt(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
    // SAFETY: the kernel reads `size_of::<c_int>()` bytes from `v`, which lives for the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The window clamp in force.
#[cfg(target_os = "linux")]
pub(crate) fn window_clamp(fd: RawFd) -> Option<u32> {
    let mut v: libc::c_int = 0;
    get_opt(fd, libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, &mut v)
        .then(|| u32::try_from(v).ok())
        .flatten()
}

/// Reads option `opt` into `out` (an integer, or a struct of integers the kernel fills in,
/// possibly only in part); whether the call succeeded.
#[cfg(target_os = "linux")]
fn get_opt<T: Copy>(fd: RawFd, level: libc::c_int, opt: libc::c_int, out: &mut T) -> bool {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `out`, which lives for the call;
    // `fd` is owned by the caller for its duration.
    let r = unsafe { libc::getsockopt(fd, level, opt, (out as *mut T).cast(), &raw mut len) };
    r == 0
}

/// See the Linux version.
#[cfg(not(target_os = "linux"))]
pub(crate) fn window_clamp(_fd: RawFd) -> Option<u32> {
    None
}

/// Caps the window this socket advertises at `bytes`.
#[cfg(target_os = "linux")]
pub(crate) fn set_window_clamp(fd: RawFd, bytes: u32) -> io::Result<()> {
    int_opt(fd, libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, bytes)
}

/// See the Linux version.
#[cfg(not(target_os = "linux"))]
pub(crate) fn queued(_fd: RawFd) -> Option<u32> {
    None
}

/// See the Linux version.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_rcvbuf(_fd: RawFd, _bytes: u32) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// See the Linux version.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_window_clamp(_fd: RawFd, _bytes: u32) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Turns transparent huge pages off for this process. The allocator (mimalloc) asks for them
/// on its arenas, so every thread's first small allocations fault in 2 MiB pages: an idle
/// node was 31 MB resident, 22.5 MB of it huge pages, against 9.5 MB without. A router's
/// memory should follow what it holds. Only later faults are affected, so the binary calls it
/// first thing in `main` (the daemon again at start, for embedders).
#[cfg(target_os = "linux")]
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    // SAFETY: prctl with these arguments only sets a flag on this process.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Nothing to do off Linux.
#[cfg(not(target_os = "linux"))]
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard limit (at most 1 Mi): every link is a
/// descriptor, and the usual soft limit of 1024 would refuse links long before the caps do.
/// Returns the limit now in force.
#[cfg(target_os = "linux")]
pub(crate) fn raise_nofile_limit() -> io::Result<u64> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut l) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let want = l.rlim_max.min(1 << 20);
    if l.rlim_cur < want {
        l.rlim_cur = want;
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const l) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(l.rlim_cur)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn raise_nofile_limit() -> io::Result<u64> {
    Err(io::Error::other("not Linux"))
}

/// Sends `buf` on the connected socket `fd` without waiting (`MSG_DONTWAIT`) and without
/// `SIGPIPE`; the bytes the kernel took.
pub(crate) fn send_nonblocking(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length; a bad `fd` is an error, not UB.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
