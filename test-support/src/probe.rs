//! The probes behind `Capability::probe`. This module holds the
//! crate's only `unsafe`: three libc calls and taking ownership of the probe ring's descriptor,
//! each with its `SAFETY` note.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use crate::missing::Missing;

pub(crate) fn root() -> Result<(), Missing> {
    match euid() {
        0 => Ok(()),
        uid => Err(Missing::new(format!("needs root (running as uid {uid})"))),
    }
}

/// Submission-queue entries of the probe ring: the size of the ring the router's `uring` driver
/// sets up (`SQ_ENTRIES` in `router/src/daemon/ring.rs`).
#[cfg(target_os = "linux")]
const RING_ENTRIES: u32 = 256;

#[cfg(target_os = "linux")]
pub(crate) fn io_uring() -> Result<(), Missing> {
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

    // struct io_uring_params (include/uapi/linux/io_uring.h) is 120 bytes, 8-byte aligned (its
    // offset structs end in a __u64). All zero asks for no setup flags; the kernel requires the
    // reserved fields to be zero and fills in the rest.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup(2) takes the entry count and a pointer to one struct
    // io_uring_params, which it reads and writes; `params` has that size and alignment and
    // outlives the call. It returns a new file descriptor or -1 with errno set.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            libc::c_long::from(RING_ENTRIES),
            params.as_mut_ptr(),
        )
    };
    if ret < 0 {
        let e = std::io::Error::last_os_error();
        return Err(Missing::new(format!(
            "needs io_uring (io_uring_setup: {e})"
        )));
    }
    let fd = RawFd::try_from(ret).expect("a file descriptor fits a c_int");
    // SAFETY: `fd` is the ring the call above just opened; nothing else owns it. Dropping the
    // OwnedFd closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn io_uring() -> Result<(), Missing> {
    Err(Missing::new("needs io_uring, which only Linux has"))
}

pub(crate) fn netns() -> Result<(), Missing> {
    let uid = euid();
    if uid != 0 {
        return Err(Missing::new(format!(
            "needs network namespaces, which need root (running as uid {uid})"
        )));
    }
    let ns = format!("hyphae-probe-{}", std::process::id());
    ip(&["netns", "add", &ns])?;
    // The pair lives inside the scratch namespace, so its names clash with nothing, and deleting
    // the namespace deletes it.
    let veth = ip(&[
        "-n", &ns, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1",
    ]);
    // A namespace left behind is empty and harmless; the answer is the probe's either way.
    let _ = ip(&["netns", "del", &ns]);
    veth
}

/// Whether `path` is a file this process may execute; the error says why not (no reason
/// prefix, the caller adds it).
pub(crate) fn executable(path: &Path) -> Result<(), String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(format!("{shown} is not a file")),
        Err(e) => return Err(format!("{shown}: {e}")),
    }
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| format!("{shown}: {e}"))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; faccessat(2) only reads it.
    // AT_EACCESS checks with the effective ids, the ones exec uses.
    let ret = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::X_OK, libc::AT_EACCESS) };
    if ret != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("{shown} may not be executed here ({e})"));
    }
    Ok(())
}

fn euid() -> libc::uid_t {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// Runs iproute2's `ip` with `args`; a failure is a missing capability.
fn ip(args: &[&str]) -> Result<(), Missing> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Missing::new(format!("needs iproute2 (`ip`: {e})")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Missing::new(format!(
        "needs network namespaces with veth pairs (`ip {}`: {})",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}
