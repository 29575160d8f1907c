//! Message-subsystem packets: the payload of a sealed data frame of kind
//! [`UserDataKind::MESSAGE`](crate::seal::UserDataKind::MESSAGE).
//!
//! ```text
//! header (12)   id [8] | flags u16 | reserved [2]
//! INIT          total_len u64 | topic_len u8 | topic [topic_len]
//! INIT|ACK      total_len u64 | topic_len u8            (the topic itself is not echoed)
//! CHUNK         chunk_idx u64 | chunk_offset u64 | chunk_size u64 | data [chunk_size]
//! CHUNK|ACK     chunk_idx u64 | chunk_offset u64 | chunk_size u64  (no data since 0.7.5)
//! DONE[|ACK]    chunk_count u64 | blake3 checksum [32]
//! READ, ABORTED header only
//! ```
//!
//! Exactly one of INIT, CHUNK, DONE, READ and ABORTED is set; REPLY and ACK modify it. Bodies
//! must be consumed exactly, except that acknowledgements may carry the rest of the packet they
//! echo (older peers did), which is ignored.

use core::fmt;

use bytes::BufMut;

use crate::coding::Reader;
use crate::error::DecodeError;

/// Message header length.
pub const MESSAGE_HEADER_LEN: usize = 12;
/// The chunk size the reference uses.
pub const CHUNK_SIZE: usize = 1300;
/// The smallest chunk the reference accepts, except for the last one.
pub const MIN_CHUNK_SIZE: usize = 250;

/// A message id: 8 random bytes, printed as 16 hex digits. A reply reuses its request's id.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct MessageId(pub [u8; 8]);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// Message flags (open: unknown bits are kept).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MessageFlags(pub u16);

impl MessageFlags {
    /// Start of a message.
    pub const INIT: Self = Self(0x8000);
    /// End of a message.
    pub const DONE: Self = Self(0x4000);
    /// The sender gave up.
    pub const ABORTED: Self = Self(0x2000);
    /// A chunk of data.
    pub const CHUNK: Self = Self(0x1000);
    /// The receiver handed the message to an application.
    pub const READ: Self = Self(0x0800);
    /// The message is a reply to the message with the same id.
    pub const REPLY: Self = Self(0x0400);
    /// Acknowledges the packet it echoes.
    pub const ACK: Self = Self(0x0100);

    const KINDS: u16 = 0x8000 | 0x4000 | 0x2000 | 0x1000 | 0x0800;

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union.
    #[must_use]
    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl fmt::Debug for MessageFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::INIT, "INIT"),
            (Self::DONE, "DONE"),
            (Self::ABORTED, "ABORTED"),
            (Self::CHUNK, "CHUNK"),
            (Self::READ, "READ"),
            (Self::REPLY, "REPLY"),
            (Self::ACK, "ACK"),
        ];
        let mut first = true;
        let mut rest = self.0;
        for (flag, name) in names {
            if self.contains(flag) {
                f.write_str(if first { "" } else { "|" })?;
                f.write_str(name)?;
                first = false;
                rest &= !flag.0;
            }
        }
        if rest != 0 || first {
            write!(f, "{}{rest:#06x}", if first { "" } else { "|" })?;
        }
        Ok(())
    }
}

/// The body of a message packet, chosen by its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageBody<'a> {
    /// INIT: a new message of `total_len` bytes on `topic`.
    Init {
        /// Total message length.
        total_len: u64,
        /// Topic, at most 255 bytes.
        topic: &'a [u8],
    },
    /// INIT|ACK.
    InitAck {
        /// Echoed total length.
        total_len: u64,
        /// Echoed topic length.
        topic_len: u8,
    },
    /// CHUNK.
    Chunk {
        /// Chunk index.
        index: u64,
        /// Byte offset in the message.
        offset: u64,
        /// The data.
        data: &'a [u8],
    },
    /// CHUNK|ACK.
    ChunkAck {
        /// Chunk index.
        index: u64,
        /// Byte offset in the message.
        offset: u64,
        /// Chunk size.
        size: u64,
    },
    /// DONE, or DONE|ACK.
    Done {
        /// Number of chunks.
        chunk_count: u64,
        /// blake3 hash of the whole message.
        checksum: [u8; 32],
    },
    /// READ or ABORTED: no body.
    Empty,
}

/// One message-subsystem packet, borrowing its topic or data from the decrypted payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessagePacket<'a> {
    /// The message id.
    pub id: MessageId,
    /// The flags.
    pub flags: MessageFlags,
    /// The body.
    pub body: MessageBody<'a>,
}

impl<'a> MessagePacket<'a> {
    /// Decodes a packet that fills `buf`.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let id = MessageId(r.array()?);
        let flags = MessageFlags(r.u16()?);
        let _reserved = r.u16()?;
        let ack = flags.contains(MessageFlags::ACK);
        let body = match MessageFlags(flags.0 & MessageFlags::KINDS) {
            MessageFlags::INIT if ack => MessageBody::InitAck {
                total_len: r.u64()?,
                topic_len: r.u8()?,
            },
            MessageFlags::INIT => {
                let total_len = r.u64()?;
                let n = r.u8()?;
                MessageBody::Init {
                    total_len,
                    topic: r.take(usize::from(n))?,
                }
            }
            MessageFlags::CHUNK => {
                let (index, offset, size) = (r.u64()?, r.u64()?, r.u64()?);
                match ack {
                    true => MessageBody::ChunkAck {
                        index,
                        offset,
                        size,
                    },
                    false => {
                        // A size beyond usize can't be in the buffer either.
                        let n = usize::try_from(size).unwrap_or(usize::MAX);
                        MessageBody::Chunk {
                            index,
                            offset,
                            data: r.take(n)?,
                        }
                    }
                }
            }
            MessageFlags::DONE => MessageBody::Done {
                chunk_count: r.u64()?,
                checksum: r.array()?,
            },
            MessageFlags::READ | MessageFlags::ABORTED => MessageBody::Empty,
            _ => return Err(DecodeError::InvalidValue("message flags")),
        };
        if !ack {
            r.finish("message packet")?;
        }
        Ok(Self { id, flags, body })
    }

    /// The encoded length.
    pub fn encoded_len(&self) -> usize {
        MESSAGE_HEADER_LEN
            + match self.body {
                MessageBody::Init { topic, .. } => 9 + topic.len(),
                MessageBody::InitAck { .. } => 9,
                MessageBody::Chunk { data, .. } => 24 + data.len(),
                MessageBody::ChunkAck { .. } => 24,
                MessageBody::Done { .. } => 40,
                MessageBody::Empty => 0,
            }
    }

    /// Appends the encoding. A topic longer than 255 bytes is an error, checked by the caller
    /// that builds the packet; here it is truncated to keep the length byte honest.
    pub fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_slice(&self.id.0);
        buf.put_u16(self.flags.0);
        buf.put_u16(0);
        match self.body {
            MessageBody::Init { total_len, topic } => {
                let topic = &topic[..topic.len().min(255)];
                buf.put_u64(total_len);
                buf.put_u8(topic.len() as u8);
                buf.put_slice(topic);
            }
            MessageBody::InitAck {
                total_len,
                topic_len,
            } => {
                buf.put_u64(total_len);
                buf.put_u8(topic_len);
            }
            MessageBody::Chunk {
                index,
                offset,
                data,
            } => {
                buf.put_u64(index);
                buf.put_u64(offset);
                buf.put_u64(data.len() as u64);
                buf.put_slice(data);
            }
            MessageBody::ChunkAck {
                index,
                offset,
                size,
            } => {
                buf.put_u64(index);
                buf.put_u64(offset);
                buf.put_u64(size);
            }
            MessageBody::Done {
                chunk_count,
                checksum,
            } => {
                buf.put_u64(chunk_count);
                buf.put_slice(&checksum);
            }
            MessageBody::Empty => {}
        }
    }

    /// The acknowledgement of this packet, as the reference builds it.
    pub fn ack(&self) -> Self {
        let body = match self.body {
            MessageBody::Init { total_len, topic } => MessageBody::InitAck {
                total_len,
                topic_len: topic.len().min(255) as u8,
            },
            MessageBody::Chunk {
                index,
                offset,
                data,
            } => MessageBody::ChunkAck {
                index,
                offset,
                size: data.len() as u64,
            },
            other => other,
        };
        Self {
            id: self.id,
            flags: self.flags.with(MessageFlags::ACK),
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn flags_print() {
        let f = MessageFlags::INIT.with(MessageFlags::ACK);
        assert_eq!(alloc::format!("{f:?}"), "INIT|ACK");
        assert_eq!(alloc::format!("{:?}", MessageFlags(0x0001)), "0x0001");
    }

    #[test]
    fn rejects_ambiguous_flags_and_lies() {
        let mut v = Vec::new();
        let p = MessagePacket {
            id: MessageId([1; 8]),
            flags: MessageFlags::CHUNK,
            body: MessageBody::Chunk {
                index: 0,
                offset: 0,
                data: b"abc",
            },
        };
        p.encode(&mut v);
        assert_eq!(MessagePacket::decode(&v), Ok(p));
        for n in 0..v.len() {
            assert!(MessagePacket::decode(&v[..n]).is_err(), "prefix {n}");
        }
        // chunk_size says 4 but 3 bytes follow
        let mut lie = v.clone();
        lie[12 + 23] = 4;
        assert_eq!(MessagePacket::decode(&lie), Err(DecodeError::UnexpectedEnd));
        let mut two = v.clone();
        two[8] = 0x90; // INIT|CHUNK
        assert!(MessagePacket::decode(&two).is_err());
        let mut none = v.clone();
        none[8] = 0;
        assert!(MessagePacket::decode(&none).is_err());
        let mut extra = v.clone();
        extra.push(0);
        assert!(MessagePacket::decode(&extra).is_err());
    }

    #[test]
    fn ack_tolerates_echoed_data() {
        let p = MessagePacket {
            id: MessageId([2; 8]),
            flags: MessageFlags::CHUNK,
            body: MessageBody::Chunk {
                index: 3,
                offset: 2600,
                data: &[7; 1300],
            },
        };
        let mut old_style = Vec::new();
        // A pre-0.7.5 peer echoed the whole chunk in its ACK.
        MessagePacket {
            flags: p.flags.with(MessageFlags::ACK),
            ..p
        }
        .encode(&mut old_style);
        let parsed = MessagePacket::decode(&old_style).unwrap();
        assert_eq!(parsed, p.ack());
        let mut v = Vec::new();
        p.ack().encode(&mut v);
        assert_eq!(v.len(), 12 + 24);
    }
}
