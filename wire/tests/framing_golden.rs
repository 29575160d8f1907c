//! Pinned bytes for hyphae's internal framing: postcard is not self-describing, so any change to
//! a message's layout must show up here as a failing test (and a version bump).

use bytes::BytesMut;
use hyphae_wire::framing::{
    BodyPart, Deliver, Destination, Envelope, ErrorCode, ErrorMsg, Header, Message, MessageState,
    Push, Pushed, RelayItem, RelayRequest, RelayResponse, Reply, Status, StatusQuery, Subscribe,
};
use hyphae_wire::message::MessageId;

fn enc(m: &Message<'_>) -> String {
    let mut b = BytesMut::new();
    m.encode(1 << 20, &mut b).unwrap();
    hex::encode(b)
}

const ID: MessageId = MessageId([0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8]);

#[test]
fn local_socket_messages_are_pinned() {
    let push = Message::Push(Push {
        tag: 300,
        dst: Destination::PublicKey([0x11; 32]),
        topic: b"t",
        payload: b"hi",
        reply_to: None,
        reply_timeout_ms: Some(5000),
    });
    // header "HY" v1 kind 1 len 44 | tag varint(300)=ac02 | dst variant 0 + 32 bytes |
    // topic len 1 "t" | payload len 2 "hi" | reply_to None | Some(varint 5000 = 8827)
    assert_eq!(
        enc(&push),
        concat!(
            "48590101",
            "0000002c",
            "ac02",
            "00",
            "1111111111111111111111111111111111111111111111111111111111111111",
            "0174",
            "026869",
            "00",
            "018827"
        )
    );
    assert_eq!(
        enc(&Message::Pushed(Pushed { tag: 1, id: ID })),
        "485901020000000901a1a2a3a4a5a6a7a8"
    );
    assert_eq!(
        enc(&Message::Subscribe(Subscribe {
            tag: 2,
            topic: None
        })),
        "48590103000000020200"
    );
    assert_eq!(
        enc(&Message::Reply(Reply {
            tag: 3,
            id: ID,
            payload: b"ok"
        })),
        "485901050000000c03a1a2a3a4a5a6a7a8026f6b"
    );
    assert_eq!(
        enc(&Message::StatusQuery(StatusQuery { tag: 4, id: ID })),
        "485901060000000904a1a2a3a4a5a6a7a8"
    );
    let status = Message::Status(Status {
        tag: 5,
        id: ID,
        dst_ip: [0x04; 16],
        state: MessageState::Sending {
            pending: 1,
            sent: 2,
            acked: 3,
        },
        created: 10,
        deadline: 310,
        msg_len: 1300,
    });
    assert_eq!(
        enc(&status),
        concat!(
            "48590107",
            "00000022",
            "05",
            "a1a2a3a4a5a6a7a8",
            "04040404040404040404040404040404",
            "01010203",
            "0a",
            "b602",
            "940a"
        )
    );
    assert_eq!(
        enc(&Message::Error(ErrorMsg {
            tag: 6,
            code: ErrorCode::NOT_FOUND,
            message: "no"
        })),
        "4859010800000006069403026e6f"
    );
    let deliver = Message::Deliver(Deliver {
        id: ID,
        src_ip: [1; 16],
        src_pk: [2; 32],
        dst_ip: [3; 16],
        dst_pk: [4; 32],
        topic: b"",
        payload: b"x",
        reply_tag: Some(7),
    });
    let h = enc(&deliver);
    assert_eq!(&h[..16], "485901040000006d");
    assert!(h.ends_with("0001780107"), "{h}");
}

#[test]
fn edge_envelope_is_pinned() {
    let env = Message::Envelope(Envelope {
        items: vec![
            RelayItem::Request(RelayRequest {
                id: 1,
                method: "GET",
                target: b"/a%2F",
                headers: vec![Header {
                    name: "x",
                    value: b"y",
                }],
                body: b"",
                more: false,
            }),
            RelayItem::Response(RelayResponse {
                id: 1,
                status: 200,
                headers: vec![],
                body: b"{}",
                more: true,
            }),
            RelayItem::Body(BodyPart {
                id: 1,
                offset: 2,
                data: b"z",
                more: false,
            }),
            RelayItem::Cancel {
                id: 1,
                code: ErrorCode(504),
            },
        ],
    });
    assert_eq!(
        enc(&env),
        concat!(
            "48590120",
            "00000027",
            "04",
            "00",
            "01",
            "03474554",
            "052f6125324",
            "6",
            "01",
            "0178",
            "0179",
            "00",
            "00",
            "01",
            "01",
            "c801",
            "00",
            "027b7d",
            "01",
            "02",
            "01",
            "02",
            "017a",
            "00",
            "03",
            "01",
            "f803"
        )
    );
}

#[test]
fn edge_flow_control_and_liveness_items_are_pinned() {
    let env = Message::Envelope(Envelope {
        items: vec![
            RelayItem::Window { id: 1, offset: 300 },
            RelayItem::Ping { nonce: 7 },
            RelayItem::Pong { nonce: 7 },
        ],
    });
    // Variants 4, 5 and 6 follow Cancel (3): the schema is append-only.
    assert_eq!(
        enc(&env),
        concat!(
            "48590120", "00000009", "03", "04", "01", "ac02", "05", "07", "06", "07"
        )
    );
}

#[test]
fn an_envelope_of_too_many_items_is_refused_whole() {
    use hyphae_wire::framing::{HEADER_LEN, MAX_ENVELOPE_ITEMS, decode_header};
    let decode = |n: usize| {
        let env = Message::Envelope(Envelope {
            items: (0..n as u64)
                .map(|nonce| RelayItem::Ping { nonce })
                .collect(),
        });
        let mut b = BytesMut::new();
        env.encode(1 << 24, &mut b).unwrap();
        let h = decode_header(&b, 1 << 24).unwrap().unwrap();
        match Message::decode(h.kind, &b[HEADER_LEN..]) {
            Ok(Message::Envelope(e)) => Ok(e.items.len()),
            Ok(_) => panic!("another message"),
            Err(e) => Err(e),
        }
    };
    assert_eq!(decode(MAX_ENVELOPE_ITEMS), Ok(MAX_ENVELOPE_ITEMS));
    assert!(decode(MAX_ENVELOPE_ITEMS + 1).is_err());
}
