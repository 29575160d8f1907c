//! `--driver auto`, decided by measurement at start: each driver in turn moves a burst of
//! 296-byte frames over a loopback TCP connection, on a thread and runtime of its own, through
//! the same read and write halves the links use (`link`), and the node runs the faster one.
//! io_uring must win by a margin: it is the less portable of the two, and it lost every
//! comparison on the machines measured so far (bench/README.md, "io_uring").

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::super::link::{Driver, LinkRead, LinkWrite, PortableRead, PortableWrite};

/// How long each measurement moves frames.
const SPAN: Duration = Duration::from_millis(25);
/// Measurements per driver, alternating (the best of each counts).
const ROUNDS: usize = 2;
/// The frame size the comparison uses (the transit benchmark's small frames).
const FRAME: usize = 296;
/// Frames per vectored write, as a busy link writes them.
const BATCH: usize = 256;
/// How much faster io_uring must be to be chosen.
pub(crate) const MARGIN: f64 = 1.10;

/// What the measurement found, in bytes per second.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Measured {
    /// The portable driver.
    pub(crate) portable: f64,
    /// io_uring, or why it could not run.
    pub(crate) uring: Result<f64, String>,
}

impl Measured {
    /// The driver to run: io_uring only if it beat the portable driver by [`MARGIN`].
    pub(crate) fn choice(&self) -> Driver {
        match self.uring {
            Ok(u) if u > self.portable * MARGIN => Driver::Uring,
            _ => Driver::Portable,
        }
    }
}

/// Measures both drivers (about 100 ms).
pub(crate) fn measure() -> Measured {
    let mut portable: Result<f64, String> = Err("not measured".into());
    let mut uring: Result<f64, String> = Err("not measured".into());
    for _ in 0..ROUNDS {
        for (driver, best) in [
            (Driver::Portable, &mut portable),
            (Driver::Uring, &mut uring),
        ] {
            let r = on_thread(driver);
            *best = match (&*best, r) {
                (Ok(b), Ok(r)) => Ok(b.max(r)),
                (_, Ok(r)) => Ok(r),
                (Ok(b), Err(_)) => Ok(*b),
                (Err(_), Err(e)) => Err(e),
            };
        }
    }
    Measured {
        portable: portable.unwrap_or(0.0),
        uring,
    }
}

/// One measurement of `driver` on a thread of its own.
fn on_thread(driver: Driver) -> Result<f64, String> {
    std::thread::Builder::new()
        .name("hyphae-probe".into())
        .spawn(move || run(driver).map_err(|e| e.to_string()))
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "the probe thread failed".to_owned())?
}

/// A connected loopback pair: (the side that writes, the side that reads).
fn pair() -> io::Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let w = TcpStream::connect(l.local_addr()?)?;
    let (r, _) = l.accept()?;
    w.set_nodelay(true)?;
    Ok((w, r))
}

fn run(driver: Driver) -> io::Result<f64> {
    let (w, r) = pair()?;
    match driver {
        Driver::Portable => {
            w.set_nonblocking(true)?;
            r.set_nonblocking(true)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            tokio::task::LocalSet::new().block_on(&rt, async move {
                let (_, w) = tokio::net::TcpStream::from_std(w)?.into_split();
                let (r, _keep) = tokio::net::TcpStream::from_std(r)?.into_split();
                Ok(forward(PortableRead(r), PortableWrite(w)).await)
            })
        }
        #[cfg(target_os = "linux")]
        Driver::Uring => {
            let rt = super::uring_runtime(usize::MAX)?;
            rt.block_on(async move {
                use std::rc::Rc;
                let w = Rc::new(tokio_uring::net::TcpStream::from_std(w));
                let r = Rc::new(tokio_uring::net::TcpStream::from_std(r));
                let reader = super::super::link::UringRead(r);
                Ok(forward(reader, super::super::link::UringWrite(w)).await)
            })
        }
        #[cfg(not(target_os = "linux"))]
        Driver::Uring => Err(io::Error::other("io_uring needs Linux")),
    }
}

/// Writes batches of frames on `w` while reading them on `r` for [`SPAN`]; bytes read per
/// second.
async fn forward<R: LinkRead, W: LinkWrite + 'static>(mut r: R, mut w: W) -> f64 {
    let frame = Bytes::from(vec![0x5a; FRAME]);
    let deadline = Instant::now() + SPAN;
    let writer = tokio::task::spawn_local(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while Instant::now() < deadline {
            batch.extend(std::iter::repeat_n(frame.clone(), BATCH));
            let (res, b) = w.write_batch(batch).await;
            batch = b;
            batch.clear();
            if res.is_err() {
                break;
            }
        }
    });
    let mut buf = BytesMut::new();
    let (mut bytes, start) = (0u64, Instant::now());
    while Instant::now() < deadline {
        let (res, b) = r.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes += n as u64,
        }
        buf.clear();
    }
    let secs = start.elapsed().as_secs_f64();
    drop(r);
    writer.abort();
    bytes as f64 / secs.max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_is_chosen_only_when_clearly_faster() {
        let m = |portable, uring| Measured { portable, uring };
        assert_eq!(m(100.0, Ok(200.0)).choice(), Driver::Uring);
        assert_eq!(
            m(100.0, Ok(109.0)).choice(),
            Driver::Portable,
            "inside the margin"
        );
        assert_eq!(m(100.0, Ok(50.0)).choice(), Driver::Portable);
        assert_eq!(m(100.0, Err("no ring".into())).choice(), Driver::Portable);
    }

    #[test]
    fn the_portable_driver_measures_on_any_machine() {
        let r = on_thread(Driver::Portable).expect("portable probe runs");
        assert!(r > 0.0, "moved frames: {r} B/s");
    }
}
