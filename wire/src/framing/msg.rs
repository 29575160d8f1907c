//! The messages carried in frames. Append-only: add variants and kinds at the end, never
//! reorder fields; bump [`VERSION`](super::VERSION) for anything incompatible.
//!
//! Byte strings borrow from the frame body (`&'a [u8]`), so a router can hand payloads on as
//! `Bytes::slice_ref` of the receive buffer without copying.

use alloc::vec::Vec;

use bytes::BufMut;
use serde::{Deserialize, Serialize};

use super::{EncodeError, Kind, Truncate, decode_body, encode_frame};
use crate::error::DecodeError;
use crate::message::MessageId;

/// Where a pushed message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Destination {
    /// A node's x25519 public key.
    PublicKey([u8; 32]),
    /// An overlay IPv6 address.
    Ip([u8; 16]),
}

/// An application sends a message (kind [`Kind::PUSH`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push<'a> {
    /// The application's correlation tag, echoed in the answer.
    pub tag: u64,
    /// The destination node.
    pub dst: Destination,
    /// The topic (at most 255 bytes on the overlay).
    #[serde(borrow, with = "serde_bytes")]
    pub topic: &'a [u8],
    /// The message.
    #[serde(borrow, with = "serde_bytes")]
    pub payload: &'a [u8],
    /// Set when this message is the reply to a delivered message.
    pub reply_to: Option<MessageId>,
    /// Wait this long for a reply, delivered to this connection as [`Deliver`] with the same tag.
    pub reply_timeout_ms: Option<u32>,
}

/// The router accepted a push (kind [`Kind::PUSHED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    /// The push's tag.
    pub tag: u64,
    /// The id the message travels under.
    pub id: MessageId,
}

/// Deliver messages on a topic to this connection (kind [`Kind::SUBSCRIBE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe<'a> {
    /// The application's correlation tag.
    pub tag: u64,
    /// The topic; `None` subscribes to messages on every topic no other subscriber holds.
    #[serde(borrow, with = "serde_bytes")]
    pub topic: Option<&'a [u8]>,
}

/// A message for the application (kind [`Kind::DELIVER`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver<'a> {
    /// The message id (a reply carries its request's id).
    pub id: MessageId,
    /// The sender's overlay address.
    pub src_ip: [u8; 16],
    /// The sender's public key.
    pub src_pk: [u8; 32],
    /// Our overlay address.
    pub dst_ip: [u8; 16],
    /// Our public key.
    pub dst_pk: [u8; 32],
    /// The topic.
    #[serde(borrow, with = "serde_bytes")]
    pub topic: &'a [u8],
    /// The message.
    #[serde(borrow, with = "serde_bytes")]
    pub payload: &'a [u8],
    /// When this is the reply to a push that waited, that push's tag.
    pub reply_tag: Option<u64>,
}

/// The application answers a delivered message (kind [`Kind::REPLY`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply<'a> {
    /// The application's correlation tag.
    pub tag: u64,
    /// The id of the message being answered.
    pub id: MessageId,
    /// The reply.
    #[serde(borrow, with = "serde_bytes")]
    pub payload: &'a [u8],
}

/// Ask for a sent message's state (kind [`Kind::STATUS_QUERY`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusQuery {
    /// The application's correlation tag.
    pub tag: u64,
    /// The message.
    pub id: MessageId,
}

/// Where a sent message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    /// Not yet started (no route yet).
    Pending,
    /// Chunks are in flight.
    Sending {
        /// Chunks not yet sent.
        pending: u64,
        /// Chunks sent, not acknowledged.
        sent: u64,
        /// Chunks acknowledged.
        acked: u64,
    },
    /// The receiver has the whole message.
    Received,
    /// An application at the receiver took it.
    Read,
    /// Given up.
    Aborted,
}

/// A sent message's state (kind [`Kind::STATUS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The query's tag.
    pub tag: u64,
    /// The message.
    pub id: MessageId,
    /// Its destination's overlay address.
    pub dst_ip: [u8; 16],
    /// Its state.
    pub state: MessageState,
    /// When it was created, Unix seconds.
    pub created: u64,
    /// When it will be given up, Unix seconds.
    pub deadline: u64,
    /// Its length in bytes.
    pub msg_len: u64,
}

/// An error code (open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The request was malformed.
    pub const BAD_REQUEST: Self = Self(400);
    /// No such message.
    pub const NOT_FOUND: Self = Self(404);
    /// A wait for a reply ran out.
    pub const TIMEOUT: Self = Self(408);
    /// The payload is over the limit.
    pub const TOO_LARGE: Self = Self(413);
    /// The destination is not reachable.
    pub const UNREACHABLE: Self = Self(502);
    /// The router is shutting down or overloaded.
    pub const UNAVAILABLE: Self = Self(503);
}

/// A request failed (kind [`Kind::ERROR`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg<'a> {
    /// The failed request's tag.
    pub tag: u64,
    /// What went wrong.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: &'a str,
}

/// One HTTP header of a relayed request or response. Names are ASCII; values are raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header<'a> {
    /// Header name.
    pub name: &'a str,
    /// Header value.
    #[serde(borrow, with = "serde_bytes")]
    pub value: &'a [u8],
}

/// A relayed HTTP request: exactly what the Matrix signature covers, and the headers the
/// destination needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRequest<'a> {
    /// Relay-wide request id, chosen by the sending edge.
    pub id: u64,
    /// The HTTP method.
    pub method: &'a str,
    /// The raw request target, never percent-decoded.
    #[serde(borrow, with = "serde_bytes")]
    pub target: &'a [u8],
    /// Selected headers (Authorization, Content-Type, ...).
    #[serde(borrow)]
    pub headers: Vec<Header<'a>>,
    /// The body, or its first part.
    #[serde(borrow, with = "serde_bytes")]
    pub body: &'a [u8],
    /// Whether [`BodyPart`]s follow.
    pub more: bool,
}

/// A relayed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayResponse<'a> {
    /// The request's id.
    pub id: u64,
    /// HTTP status code.
    pub status: u16,
    /// Selected headers.
    #[serde(borrow)]
    pub headers: Vec<Header<'a>>,
    /// The body, or its first part.
    #[serde(borrow, with = "serde_bytes")]
    pub body: &'a [u8],
    /// Whether [`BodyPart`]s follow.
    pub more: bool,
}

/// A continuation of a streamed request or response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyPart<'a> {
    /// The request's id.
    pub id: u64,
    /// Offset of `data` in the body.
    pub offset: u64,
    /// The bytes.
    #[serde(borrow, with = "serde_bytes")]
    pub data: &'a [u8],
    /// Whether more parts follow.
    pub more: bool,
}

/// One item of an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayItem<'a> {
    /// A request.
    #[serde(borrow)]
    Request(RelayRequest<'a>),
    /// A response.
    #[serde(borrow)]
    Response(RelayResponse<'a>),
    /// A body continuation.
    #[serde(borrow)]
    Body(BodyPart<'a>),
    /// The request was abandoned; the code says why (an HTTP status, 502 or 504 typically).
    Cancel {
        /// The request's id.
        id: u64,
        /// Why.
        code: ErrorCode,
    },
    /// Flow control for a streamed body: the receiver has room for the body of request `id`
    /// up to byte `offset` (exclusive). A streamed body waits for the first one.
    Window {
        /// The request's id.
        id: u64,
        /// The body may be sent up to this offset.
        offset: u64,
    },
    /// Liveness probe to the other edge; answered by [`RelayItem::Pong`] at once.
    Ping {
        /// Echoed in the answer.
        nonce: u64,
    },
    /// The answer to a [`RelayItem::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
}

/// Most items one [`Envelope`] may hold. An envelope with more is refused whole when decoded:
/// a ping takes 2 bytes on the wire and about 100 in memory once decoded, so a large frame of
/// them must not be taken apart item by item. Senders stop a batch here.
pub const MAX_ENVELOPE_ITEMS: usize = 16 * 1024;

/// A batch of relayed requests and responses between two edges (kind [`Kind::ENVELOPE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// The items, in order; at most [`MAX_ENVELOPE_ITEMS`].
    #[serde(borrow, deserialize_with = "capped_items")]
    pub items: Vec<RelayItem<'a>>,
}

/// Decodes an envelope's items, refusing more than [`MAX_ENVELOPE_ITEMS`] before any is
/// decoded.
fn capped_items<'de: 'a, 'a, D>(d: D) -> Result<Vec<RelayItem<'a>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Items<'a>(core::marker::PhantomData<&'a ()>);

    impl<'de: 'a, 'a> serde::de::Visitor<'de> for Items<'a> {
        type Value = Vec<RelayItem<'a>>;

        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "at most {MAX_ENVELOPE_ITEMS} relay items")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let n = seq.size_hint().unwrap_or(0);
            if n > MAX_ENVELOPE_ITEMS {
                return Err(serde::de::Error::invalid_length(n, &self));
            }
            let mut items = Vec::with_capacity(n.min(1024));
            while let Some(item) = seq.next_element()? {
                if items.len() == MAX_ENVELOPE_ITEMS {
                    return Err(serde::de::Error::invalid_length(items.len() + 1, &self));
                }
                items.push(item);
            }
            Ok(items)
        }
    }

    d.deserialize_seq(Items(core::marker::PhantomData))
}

/// Any framed message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message<'a> {
    /// See [`Push`].
    Push(Push<'a>),
    /// See [`Pushed`].
    Pushed(Pushed),
    /// See [`Subscribe`].
    Subscribe(Subscribe<'a>),
    /// See [`Deliver`].
    Deliver(Deliver<'a>),
    /// See [`Reply`].
    Reply(Reply<'a>),
    /// See [`StatusQuery`].
    StatusQuery(StatusQuery),
    /// See [`Status`].
    Status(Status),
    /// See [`ErrorMsg`].
    Error(ErrorMsg<'a>),
    /// See [`Envelope`]: from the requesting edge.
    Envelope(Envelope<'a>),
    /// See [`Envelope`]: from the serving edge.
    ResponseEnvelope(Envelope<'a>),
}

impl<'a> Message<'a> {
    /// The kind written in the frame header.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Push(_) => Kind::PUSH,
            Self::Pushed(_) => Kind::PUSHED,
            Self::Subscribe(_) => Kind::SUBSCRIBE,
            Self::Deliver(_) => Kind::DELIVER,
            Self::Reply(_) => Kind::REPLY,
            Self::StatusQuery(_) => Kind::STATUS_QUERY,
            Self::Status(_) => Kind::STATUS,
            Self::Error(_) => Kind::ERROR,
            Self::Envelope(_) => Kind::ENVELOPE,
            Self::ResponseEnvelope(_) => Kind::RESPONSE_ENVELOPE,
        }
    }

    /// Decodes the body of a frame of `kind`.
    pub fn decode(kind: Kind, body: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(match kind {
            Kind::PUSH => Self::Push(decode_body(body)?),
            Kind::PUSHED => Self::Pushed(decode_body(body)?),
            Kind::SUBSCRIBE => Self::Subscribe(decode_body(body)?),
            Kind::DELIVER => Self::Deliver(decode_body(body)?),
            Kind::REPLY => Self::Reply(decode_body(body)?),
            Kind::STATUS_QUERY => Self::StatusQuery(decode_body(body)?),
            Kind::STATUS => Self::Status(decode_body(body)?),
            Kind::ERROR => Self::Error(decode_body(body)?),
            Kind::ENVELOPE => Self::Envelope(decode_body(body)?),
            Kind::RESPONSE_ENVELOPE => Self::ResponseEnvelope(decode_body(body)?),
            Kind(_) => return Err(DecodeError::InvalidValue("frame kind")),
        })
    }

    /// Appends this message as one frame.
    pub fn encode<B>(&self, max_body: usize, out: &mut B) -> Result<(), EncodeError>
    where
        B: BufMut + AsMut<[u8]> + Truncate,
    {
        let k = self.kind();
        match self {
            Self::Push(m) => encode_frame(k, m, max_body, out),
            Self::Pushed(m) => encode_frame(k, m, max_body, out),
            Self::Subscribe(m) => encode_frame(k, m, max_body, out),
            Self::Deliver(m) => encode_frame(k, m, max_body, out),
            Self::Reply(m) => encode_frame(k, m, max_body, out),
            Self::StatusQuery(m) => encode_frame(k, m, max_body, out),
            Self::Status(m) => encode_frame(k, m, max_body, out),
            Self::Error(m) => encode_frame(k, m, max_body, out),
            Self::Envelope(m) | Self::ResponseEnvelope(m) => encode_frame(k, m, max_body, out),
        }
    }
}
