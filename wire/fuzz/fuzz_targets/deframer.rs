//! The stream deframer over arbitrary bytes, cut at arbitrary points: no panic, the same frames
//! whatever the cuts, and every decoded control frame re-encodes to an equal value.
#![no_main]

use bytes::BytesMut;
use hyphae_wire::deframer::{Deframer, Frame, decode_datagram};
use libfuzzer_sys::fuzz_target;

fn run(data: &[u8], step: usize) -> (Vec<Frame<BytesMut>>, bool) {
    let mut d = Deframer::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in data.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match d.next_frame(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|input: (u8, &[u8])| {
    let (step, data) = input;
    let (whole, whole_err) = run(data, data.len());
    let (cut, cut_err) = run(data, usize::from(step));
    assert_eq!(whole, cut, "frames depend on how the stream was cut");
    assert_eq!(whole_err, cut_err);
    for f in whole {
        if let Frame::Control(t) = f {
            let mut v = Vec::new();
            t.encode_frame(&mut v);
            assert_eq!(v.len(), t.frame_len());
            assert_eq!(decode_datagram(&v[..]).ok(), Some(Frame::Control(t)));
        }
    }
});
