//! The TUN device that carries the node's IPv6 overlay traffic: created with one queue per
//! worker (`IFF_MULTI_QUEUE`, so each worker reads and writes its own descriptor and the
//! kernel spreads flows over them), configured as the reference configures its device (MTU
//! 1400, the node's address with prefix length 7 so all of `400::/7` routes into it, up), and
//! read and written without blocking. Like the reference's, it carries a virtio-net header
//! before every packet (`IFF_VNET_HDR`) with TCP segmentation offloads on, so the host hands
//! over and takes back TCP super-packets (`hyphae_wire::offload`). The device is not persistent: it goes away when the
//! last queue is closed, that is when the node stops.
//!
//! With `sockopt`, the only unsafe code in the crate: the TUN and interface ioctls and the
//! reads and writes, each on a descriptor this module owns.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{self, IoSlice};
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

/// The device's MTU, as the reference's (`LINK_MTU`).
pub(crate) const TUN_MTU: u32 = 1400;
/// The prefix length of the node's address on the device: the overlay's global prefix,
/// `400::/7`.
pub(crate) const OVERLAY_PREFIX_LEN: u32 = 7;

/// Why the TUN device could not be set up.
#[derive(Debug, thiserror::Error)]
#[error(
    "TUN device {name:?}: {what}: {source} (is the name free, and does the node have CAP_NET_ADMIN and /dev/net/tun?)"
)]
pub struct TunError {
    name: String,
    what: &'static str,
    source: io::Error,
}

/// Creates the device `name` with `queues` queues and configures it for `address`. Fails if
/// an interface of that name exists already (the reference refuses a name in use too).
pub(crate) fn create(
    name: &str,
    queues: usize,
    address: Ipv6Addr,
) -> Result<Vec<OwnedFd>, TunError> {
    let fail = |what, source| TunError {
        name: name.to_owned(),
        what,
        source,
    };
    let cname = CString::new(name)
        .map_err(|_| fail("name", io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: a valid NUL-terminated string.
    if unsafe { libc::if_nametoindex(cname.as_ptr()) } != 0 {
        return Err(fail(
            "name in use",
            io::Error::from(io::ErrorKind::AlreadyExists),
        ));
    }
    let fds = (0..queues.max(1))
        .map(|_| open_queue(name))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| fail("create", e))?;
    let ctl = ioctl_socket(libc::AF_INET6).map_err(|e| fail("control socket", e))?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_mtu = TUN_MTU as libc::c_int;
    ioctl(&ctl, libc::SIOCSIFMTU, &mut req).map_err(|e| fail("set MTU", e))?;
    let mut req = ifreq(name);
    ioctl(&ctl, libc::SIOCGIFINDEX, &mut req).map_err(|e| fail("interface index", e))?;
    // SAFETY: SIOCGIFINDEX filled in the index member.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    let mut addr = libc::in6_ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: address.octets(),
        },
        ifr6_prefixlen: OVERLAY_PREFIX_LEN,
        ifr6_ifindex: index,
    };
    ioctl(&ctl, libc::SIOCSIFADDR, &mut addr).map_err(|e| fail("set address", e))?;
    let mut req = ifreq(name);
    ioctl(&ctl, libc::SIOCGIFFLAGS, &mut req).map_err(|e| fail("read flags", e))?;
    // SAFETY: SIOCGIFFLAGS filled in the flags member.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(&ctl, libc::SIOCSIFFLAGS, &mut req).map_err(|e| fail("set up", e))?;
    Ok(fds)
}

/// Opens one more queue of the multi-queue device `name` (creating it with the first).
fn open_queue(name: &str) -> io::Result<OwnedFd> {
    // SAFETY: a static NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | libc::IFF_VNET_HDR)
            as libc::c_short;
    ioctl(&fd, libc::TUNSETIFF, &mut req)?;
    // TCP super-packets both ways, and checksums left to whoever cuts them; without this
    // every packet still carries a (zero) virtio-net header and nothing else changes.
    let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    // SAFETY: TUNSETOFFLOAD takes its flags by value.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            offloads as libc::c_ulong,
        )
    } < 0
    {
        tracing::debug!("TUN offloads: {}", io::Error::last_os_error());
    }
    Ok(fd)
}

fn ioctl_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `ifreq` naming `name` (at most 15 bytes: longer names are cut, and the kernel then
/// refers to another device; the configuration checks names first).
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    req
}

fn ioctl<T>(fd: &impl AsRawFd, request: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is the structure `request` reads or writes, and lives across the call.
    match unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) } {
        0.. => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// One queue of the device, driven by the worker's runtime: readiness through the reactor,
/// reads and writes as plain non-blocking system calls.
#[derive(Debug)]
pub(crate) struct TunQueue(AsyncFd<OwnedFd>);

/// The queue's descriptor, for the worker's ring.
impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.get_ref().as_raw_fd()
    }
}

impl TunQueue {
    /// Registers a queue with the current runtime.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: the queue owns `fd` and neither closes nor replaces it while registered.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map(Self)
            .map_err(io::Error::from)
    }

    /// Waits until the queue may have a packet to read.
    pub(crate) async fn readable(&self) -> io::Result<Readable<'_>> {
        self.0.readable().await.map(Readable)
    }

    /// Writes one packet (virtio-net header first) gathered from `parts`. A TUN write hands
    /// the packet to the kernel's receive path at once; it does not wait for room.
    pub(crate) fn write(&self, parts: &[IoSlice<'_>]) -> io::Result<()> {
        let fd = self.as_raw_fd();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let count = libc::c_int::try_from(parts.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: IoSlice is ABI-compatible with iovec, and every slice is readable.
        let n = unsafe { libc::writev(fd, parts.as_ptr().cast(), count) };
        match usize::try_from(n) {
            Ok(n) if n == len => Ok(()),
            Ok(_) => Err(io::ErrorKind::WriteZero.into()),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }
}

/// A queue that was found readable: read packets until [`Readable::read`] says it is empty.
pub(crate) struct Readable<'a>(AsyncFdReadyGuard<'a, OwnedFd>);

impl Readable<'_> {
    /// Reads one packet into `buf` (a packet longer than `buf` is cut, as the kernel does);
    /// `None` once the queue is empty, after which the worker waits for readiness again.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let fd = self.0.get_inner().as_raw_fd();
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(n) => Some(Ok(n)),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.0.clear_ready();
                    return None;
                }
                Some(Err(e))
            }
        }
    }
}
