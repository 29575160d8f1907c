//! `--driver auto`: at start, the node moves the same stream of frames over a loopback TCP
//! connection with each driver's link halves, in turns, and keeps io_uring only where it was
//! clearly faster in every turn. On the machine of bench/README.md ("io_uring") the two are at
//! parity, so `auto` is the portable driver there; a host where system calls cost more (older
//! CPUs, heavier mitigations) gets the ring.
//!
//! [`verdict`] is the decision, with no I/O; [`measure`] is the thin driver that times the
//! turns.

use std::io;
use std::net::{Ipv4Addr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::link::{Driver, LinkRead, LinkWrite, PortableRead, PortableWrite, READ_MAX};
use super::ring::Ring;

/// Turns of each driver; io_uring must win every one.
pub(crate) const TURNS: usize = 5;
/// What io_uring must save in a turn to count as faster: less is within the noise of a turn.
pub(crate) const MARGIN: f64 = 0.05;
/// Bytes each driver moves in a turn (about 2 ms of loopback TCP here).
const TURN_BYTES: usize = 4 << 20;
/// A data frame's size on a busy link (a 296-byte packet, as `transit` sends).
const FRAME: usize = 296;
/// Frames per vectored write, as a link's writer gathers them under load.
const BATCH: usize = 64;
/// A turn that takes longer than this failed (the whole measurement takes about 30 ms).
const TURN_LIMIT: Duration = Duration::from_secs(2);
/// The whole measurement, warm-up included, fails past this: a host slow enough to need it
/// gets the portable driver rather than a start held up by twelve slow turns.
const MEASURE_LIMIT: Duration = Duration::from_secs(3);

/// One turn of each driver: the time each took to move [`TURN_BYTES`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Turn {
    pub(crate) portable: Duration,
    pub(crate) uring: Duration,
}

impl Turn {
    /// io_uring's time over the portable driver's (below 1: io_uring was faster).
    pub(crate) fn ratio(&self) -> f64 {
        self.uring.as_secs_f64() / self.portable.as_secs_f64().max(1e-9)
    }
}

/// What `auto` chose, and why.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) driver: Driver,
    /// io_uring's time over the portable driver's, lowest and highest turn.
    pub(crate) ratios: Option<(f64, f64)>,
}

/// The driver `turns` argue for: io_uring when it took at most `1 - MARGIN` of the portable
/// driver's time in every one of at least [`TURNS`] turns, otherwise the portable driver,
/// which also runs where io_uring is disabled and was never slower outside the noise.
pub(crate) fn verdict(turns: &[Turn]) -> Verdict {
    let ratios: Vec<f64> = turns.iter().map(Turn::ratio).collect();
    let range = ratios.iter().fold(None, |r: Option<(f64, f64)>, &x| {
        Some(r.map_or((x, x), |(lo, hi)| (lo.min(x), hi.max(x))))
    });
    let faster = turns.len() >= TURNS && ratios.iter().all(|&r| r <= 1.0 - MARGIN);
    Verdict {
        driver: if faster {
            Driver::Uring
        } else {
            Driver::Portable
        },
        ratios: range,
    }
}

/// Times [`TURNS`] turns of each driver, alternating which goes first, after one warm-up
/// turn of each; on a thread of its own, so that its runtime never meets the caller's.
pub(crate) fn measure() -> io::Result<Vec<Turn>> {
    std::thread::Builder::new()
        .name("hyphae-calibrate".into())
        .spawn(measure_here)?
        .join()
        .map_err(|_| io::Error::other("the measurement panicked"))?
}

fn measure_here() -> io::Result<Vec<Turn>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&rt, async {
        let ring = Ring::new()?;
        let driving = tokio::task::spawn_local(ring.clone().drive());
        let turns = tokio::time::timeout(MEASURE_LIMIT, all_turns(&ring))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the measurement took over {MEASURE_LIMIT:?}"),
                ))
            });
        driving.abort();
        turns
    })
}

/// A warm-up turn of each driver, not counted (the first turn pays for the runtime's and the
/// allocator's first use), then [`TURNS`] timed turns of each, alternating which goes first.
async fn all_turns(ring: &Rc<Ring>) -> io::Result<Vec<Turn>> {
    timed(Driver::Portable, ring).await?;
    timed(Driver::Uring, ring).await?;
    let mut turns = Vec::with_capacity(TURNS);
    for i in 0..TURNS {
        let (portable, uring) = if i % 2 == 0 {
            let p = timed(Driver::Portable, ring).await?;
            (p, timed(Driver::Uring, ring).await?)
        } else {
            let u = timed(Driver::Uring, ring).await?;
            (timed(Driver::Portable, ring).await?, u)
        };
        turns.push(Turn { portable, uring });
    }
    Ok(turns)
}

/// One driver's turn, connection included, bounded by [`TURN_LIMIT`].
async fn timed(driver: Driver, ring: &Rc<Ring>) -> io::Result<Duration> {
    tokio::time::timeout(TURN_LIMIT, turn(driver, ring))
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "turn timed out")))
}

async fn turn(driver: Driver, ring: &Rc<Ring>) -> io::Result<Duration> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let (tx, (rx, _)) = tokio::try_join!(tokio::net::TcpStream::connect(addr), listener.accept())?;
    tx.set_nodelay(true)?;
    match driver {
        Driver::Portable => {
            let (r, _) = rx.into_split();
            let (_, w) = tx.into_split();
            pump(PortableRead(r), PortableWrite(w)).await
        }
        Driver::Uring => {
            // The ring's sockets are blocking ones, as the workers' (see `tcp`).
            let blocking = |s: tokio::net::TcpStream| -> io::Result<TcpStream> {
                let s = s.into_std()?;
                s.set_nonblocking(false)?;
                Ok(s)
            };
            let (r, _) = super::link::uring_halves(ring, blocking(rx)?);
            let (_, w) = super::link::uring_halves(ring, blocking(tx)?);
            pump(r, w).await
        }
    }
}

/// Writes [`TURN_BYTES`] of frames in batches from `w` while reading them at `r`; the time
/// from the first write to the last byte read.
async fn pump<R: LinkRead, W: LinkWrite + 'static>(mut r: R, mut w: W) -> io::Result<Duration> {
    let frame = Bytes::from(vec![0x5a; FRAME]);
    let start = Instant::now();
    let writer = tokio::task::spawn_local(async move {
        let mut batch = Vec::with_capacity(BATCH);
        let mut sent = 0;
        while sent < TURN_BYTES {
            batch.extend(std::iter::repeat_n(frame.clone(), BATCH));
            sent += BATCH * FRAME;
            let (res, back) = w.write_batch(batch).await;
            res?;
            batch = back;
        }
        io::Result::Ok(())
    });
    let mut buf = BytesMut::with_capacity(READ_MAX);
    let mut got = 0;
    let want = TURN_BYTES.div_ceil(BATCH * FRAME) * BATCH * FRAME;
    while got < want {
        buf.clear();
        buf.reserve(READ_MAX);
        let (n, back) = r.read(buf).await;
        buf = back;
        match n? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let elapsed = start.elapsed();
    writer
        .await
        .map_err(|e| io::Error::other(format!("writer: {e}")))??;
    Ok(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(portable_us: u64, uring_us: u64) -> Turn {
        Turn {
            portable: Duration::from_micros(portable_us),
            uring: Duration::from_micros(uring_us),
        }
    }

    #[test]
    fn io_uring_only_when_clearly_faster_in_every_turn() {
        let clear = vec![turn(1000, 900); TURNS];
        let v = verdict(&clear);
        assert_eq!(v.driver, Driver::Uring);
        let (lo, hi) = v.ratios.unwrap();
        assert!(
            (lo - 0.9).abs() < 1e-9 && (hi - 0.9).abs() < 1e-9,
            "{lo} {hi}"
        );

        // One turn inside the margin: not shown.
        let mut one_close = clear.clone();
        one_close[3] = turn(1000, 960);
        assert_eq!(verdict(&one_close).driver, Driver::Portable);

        // One turn the other way round.
        let mut one_slower = clear.clone();
        one_slower[0] = turn(1000, 1200);
        let v = verdict(&one_slower);
        assert_eq!(v.driver, Driver::Portable);
        let (lo, hi) = v.ratios.unwrap();
        assert!(
            (lo - 0.9).abs() < 1e-9 && (hi - 1.2).abs() < 1e-9,
            "{lo} {hi}"
        );

        // Parity and a slower ring.
        assert_eq!(verdict(&[turn(1000, 1000); TURNS]).driver, Driver::Portable);
        assert_eq!(verdict(&[turn(1000, 1500); TURNS]).driver, Driver::Portable);
    }

    #[test]
    fn too_few_turns_are_no_evidence() {
        assert_eq!(
            verdict(&[turn(1000, 500); TURNS - 1]).driver,
            Driver::Portable
        );
        let none = verdict(&[]);
        assert_eq!(none.driver, Driver::Portable);
        assert_eq!(none.ratios, None);
    }

    #[test]
    fn both_drivers_move_the_whole_stream() {
        // Every turn completes on both drivers (a short read or a lost frame would hang it
        // past TURN_LIMIT or end it early with an error) and takes measurable time.
        let turns = measure().expect("both drivers run on this host");
        assert_eq!(turns.len(), TURNS);
        for t in &turns {
            assert!(
                t.portable > Duration::ZERO && t.uring > Duration::ZERO,
                "{t:?}"
            );
            assert!(t.ratio().is_finite());
        }
    }
}
