//! Moving HTTP bodies through the relay: the first part that travels with its head, the rest
//! sent as the receiver's window allows, and a body fed from a channel.
//!
//! Both directions use the same code: a relayed request's body (proxy to overlay) and a
//! delivered request's response body (homeserver to overlay).

use std::future::Future;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

/// The start of a body: what travels inline with its head.
#[derive(Debug)]
pub struct FirstPart {
    /// Up to the inline limit.
    pub first: Bytes,
    /// Bytes already read beyond it (from the frame that crossed the limit).
    pub carry: Bytes,
    /// Whether anything follows (`carry` or more frames).
    pub more: bool,
}

/// Why the start of a body could not be read.
#[derive(Debug)]
pub enum FirstPartError<E> {
    /// The body failed.
    Body(E),
    /// No frame came for the idle time.
    Stalled,
}

/// Reads `body` up to `limit` bytes, and far enough to know whether more follows, waiting at
/// most `idle` for each frame.
pub async fn read_first<B>(
    body: &mut B,
    limit: usize,
    idle: std::time::Duration,
) -> Result<FirstPart, FirstPartError<B::Error>>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut next = async || match tokio::time::timeout(idle, body.frame()).await {
        Ok(f) => f.map(|f| f.map_err(FirstPartError::Body)),
        Err(_) => Some(Err(FirstPartError::Stalled)),
    };
    let mut first = BytesMut::new();
    let mut carry = Bytes::new();
    loop {
        if first.len() >= limit || !carry.is_empty() {
            break;
        }
        match next().await {
            Some(f) => {
                let Ok(d) = f?.into_data() else { continue };
                let room = limit - first.len();
                if d.len() > room {
                    first.extend_from_slice(&d[..room]);
                    carry = d.slice(room..);
                } else {
                    first.extend_from_slice(&d);
                }
            }
            None => {
                return Ok(FirstPart {
                    first: first.freeze(),
                    carry,
                    more: false,
                });
            }
        }
    }
    if carry.is_empty() {
        // Exactly `limit` bytes so far: see whether anything follows.
        loop {
            match next().await {
                Some(f) => match f?.into_data() {
                    Ok(d) if !d.is_empty() => {
                        carry = d;
                        break;
                    }
                    _ => {}
                },
                None => {
                    return Ok(FirstPart {
                        first: first.freeze(),
                        carry,
                        more: false,
                    });
                }
            }
        }
    }
    Ok(FirstPart {
        first: first.freeze(),
        carry,
        more: true,
    })
}

/// Why streaming stopped before the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The whole body was sent.
    Done,
    /// The source body failed (or stalled past `idle`).
    SourceFailed,
    /// The receiver went away (no more credit will come) or the relay refused a part.
    Abandoned,
    /// The receiver granted no room for `idle` while the body had bytes to send.
    ReceiverStalled,
}

/// Sends the rest of `body` (starting with `carry`) in parts of at most `part_size`, never
/// beyond the credit received on `credits`, through `send(data, more)`. Nothing is sent before
/// the first credit: it proves the head arrived. The last part carries `more = false`. Waits at
/// most `idle` for the source's next bytes, and as long for credit while there is something to
/// send.
pub async fn send_rest<B, F, Fut>(
    body: &mut B,
    mut pending: Bytes,
    part_size: usize,
    idle: std::time::Duration,
    credits: &mut mpsc::Receiver<u64>,
    mut send: F,
) -> StreamEnd
where
    B: Body<Data = Bytes> + Unpin,
    F: FnMut(Bytes, bool) -> Fut,
    Fut: Future<Output = bool>,
{
    let (mut credit, mut got_credit, mut done) = (0u64, false, false);
    loop {
        if pending.is_empty() && !done {
            match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(f))) => pending = f.into_data().unwrap_or_default(),
                Ok(None) => done = true,
                Ok(Some(Err(_))) | Err(_) => return StreamEnd::SourceFailed,
            }
            continue;
        }
        while credit == 0 && (!pending.is_empty() || !got_credit) {
            match tokio::time::timeout(idle, credits.recv()).await {
                Ok(Some(c)) => credit += c,
                Ok(None) => return StreamEnd::Abandoned,
                Err(_) => return StreamEnd::ReceiverStalled,
            }
            got_credit = true;
        }
        let n = (pending.len() as u64).min(credit).min(part_size as u64) as usize;
        let data = pending.split_to(n);
        credit -= n as u64;
        let last = done && pending.is_empty();
        if n == 0 && !last {
            continue;
        }
        if !send(data, !last).await {
            return StreamEnd::Abandoned;
        }
        if last {
            return StreamEnd::Done;
        }
    }
}

/// A body fed through a channel, a frame at a time. An `Err` item fails the body, so a
/// cut-off stream is never taken for a whole one.
#[derive(Debug)]
pub struct ChannelBody(pub mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const IDLE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_body_that_stalls_before_its_first_part_is_given_up_on() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Frame::data(Bytes::from_static(b"{"))))
            .unwrap();
        let mut b = ChannelBody(rx);
        let idle = Duration::from_millis(50);
        let r = tokio::time::timeout(Duration::from_secs(10), read_first(&mut b, 100, idle)).await;
        assert!(matches!(r, Ok(Err(FirstPartError::Stalled))), "{r:?}");
        drop(tx);
    }

    fn body(chunks: &[&'static [u8]]) -> ChannelBody {
        let (tx, rx) = mpsc::channel(chunks.len() + 1);
        for c in chunks {
            tx.try_send(Ok(Frame::data(Bytes::from_static(c)))).unwrap();
        }
        ChannelBody(rx)
    }

    #[tokio::test]
    async fn the_first_part_is_cut_at_the_limit_and_knows_what_follows() {
        let p = read_first(&mut body(&[b"abc", b"defg"]), 5, IDLE)
            .await
            .unwrap();
        assert_eq!(
            (&p.first[..], &p.carry[..], p.more),
            (&b"abcde"[..], &b"fg"[..], true)
        );
        let p = read_first(&mut body(&[b"abc", b"de"]), 5, IDLE)
            .await
            .unwrap();
        assert_eq!(
            (&p.first[..], p.carry.is_empty(), p.more),
            (&b"abcde"[..], true, false)
        );
        let p = read_first(&mut body(&[b"abc", b"de", b"", b"f"]), 5, IDLE)
            .await
            .unwrap();
        assert_eq!(
            (&p.first[..], &p.carry[..], p.more),
            (&b"abcde"[..], &b"f"[..], true)
        );
        let p = read_first(&mut body(&[]), 5, IDLE).await.unwrap();
        assert!(p.first.is_empty() && !p.more);
    }

    #[tokio::test]
    async fn the_rest_waits_for_credit_and_never_exceeds_it() {
        let mut b = body(&[b"0123456789"]);
        let (ctx, mut crx) = mpsc::channel(8);
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = sent.clone();
        ctx.try_send(4).unwrap();
        let task = tokio::spawn(async move {
            send_rest(
                &mut b,
                Bytes::from_static(b"xy"),
                3,
                Duration::from_secs(5),
                &mut crx,
                |d, more| {
                    s2.lock().unwrap().push((d, more));
                    async { true }
                },
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // 4 bytes of credit: "xy" and "01" went, in parts of at most 3.
        let got: Vec<u8> = sent
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(d, _)| d.to_vec())
            .collect();
        assert_eq!(got, b"xy01");
        ctx.try_send(100).unwrap();
        assert_eq!(task.await.unwrap(), StreamEnd::Done);
        let parts = sent.lock().unwrap().clone();
        let all: Vec<u8> = parts.iter().flat_map(|(d, _)| d.to_vec()).collect();
        assert_eq!(all, b"xy0123456789");
        assert!(parts.iter().all(|(d, _)| d.len() <= 3));
        assert_eq!(parts.last().map(|p| p.1), Some(false));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.1));
    }

    #[tokio::test]
    async fn without_credit_nothing_is_sent_and_a_closed_window_abandons() {
        let mut b = body(&[b"abc"]);
        let (ctx, mut crx) = mpsc::channel::<u64>(1);
        drop(ctx);
        let end = send_rest(
            &mut b,
            Bytes::new(),
            3,
            Duration::from_secs(5),
            &mut crx,
            |_, _| async { panic!("sent without credit") },
        )
        .await;
        assert_eq!(end, StreamEnd::Abandoned);
    }

    #[tokio::test]
    async fn a_receiver_that_grants_no_room_ends_the_stream() {
        // The receiver keeps its credit channel open but never grants anything after the
        // first 3 bytes.
        let mut b = body(&[b"abc"]);
        let (ctx, mut crx) = mpsc::channel::<u64>(1);
        ctx.try_send(3).unwrap();
        let sent = std::sync::Mutex::new(Vec::new());
        let idle = Duration::from_millis(50);
        let stream = send_rest(
            &mut b,
            Bytes::from_static(b"xyz"),
            3,
            idle,
            &mut crx,
            |d, _| {
                sent.lock().unwrap().push(d);
                async { true }
            },
        );
        let end = tokio::time::timeout(Duration::from_secs(10), stream).await;
        assert_eq!(end, Ok(StreamEnd::ReceiverStalled));
        assert_eq!(sent.lock().unwrap().concat(), b"xyz");
        drop(ctx);
    }
}
