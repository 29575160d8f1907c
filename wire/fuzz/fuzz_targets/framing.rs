//! hyphae's internal framing: no panic, lengths capped, and every decoded message re-encodes
//! to the same bytes.
//!
//! The first input byte picks how the rest is read. Even: as a byte stream, headers and all.
//! Odd: as a run of `kind, length (2 bytes, big endian), body` records, each given a valid
//! header, so that bodies reach the message decoders without the fuzzer first having to guess
//! the magic and version (from an empty corpus it does not: every input stopped at the magic).
#![no_main]

use bytes::BytesMut;
use hyphae_wire::framing::{HEADER_LEN, MAGIC, Message, VERSION, split_frame};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut buf = if mode & 1 == 0 {
        BytesMut::from(rest)
    } else {
        framed(rest)
    };
    while let Ok(Some((kind, body))) = split_frame(&mut buf, MAX) {
        if let Ok(m) = Message::decode(kind, &body) {
            let mut out = BytesMut::new();
            m.encode(MAX, &mut out).expect("re-encodes");
            let (k2, b2) = split_frame(&mut out, MAX).expect("valid").expect("whole");
            assert_eq!(k2, kind);
            assert_eq!(Message::decode(k2, &b2).ok(), Some(m));
        }
    }
});

/// Frames `kind, length, body` records of `rest` with valid headers (a body is cut short where
/// the input ends).
fn framed(mut rest: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(rest.len() + rest.len() / 3 * HEADER_LEN);
    while let [kind, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, *kind]);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&tail[..len]);
        rest = &tail[len..];
    }
    out
}
