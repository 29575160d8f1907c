//! hyphae's internal framing: no panic, lengths capped, and every decoded message re-encodes
//! to the same bytes.
#![no_main]

use bytes::BytesMut;
use hyphae_wire::framing::{Message, split_frame};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
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
