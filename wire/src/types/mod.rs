//! Newtypes for the protocol's quantities, each carrying the protocol's meaning.

mod interval;
mod metric;
mod seqno;
mod subnet;

pub use interval::Interval;
pub use metric::Metric;
pub use seqno::SeqNo;
pub use subnet::{GLOBAL_SUBNET, Subnet};
