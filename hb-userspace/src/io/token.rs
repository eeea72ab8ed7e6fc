//! What each io_uring operation is for. Every operation carries its token
//! as the entry's user data and gets it back with its completion, so the
//! loop can hand the completion to the one object that submitted it.

/// The owner of an operation, and what that owner needs to find it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The event loop's sweep timer.
    Tick,
    /// The event loop's signalfd read.
    Signal,
    /// A write of event lines to stdout.
    Stdout,
    /// An operation of the heartbeat ingest.
    Ingest(IngestOp),
    /// An operation on HTTP connection `conn` (the listener's accept is
    /// `conn` 0 with `HttpOp::Accept`).
    Http { conn: u16, op: HttpOp },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOp {
    /// The kernel-side log's fd is readable (XDP).
    KernelLog,
    /// The multishot receive (socket mode).
    RecvMulti,
    /// Queued single receive number `slot` (socket mode without buffer rings).
    Recv { slot: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpOp {
    Accept,
    Recv,
    Send,
    /// The deadline linked to a receive or send.
    Deadline,
}

// Layout of the encoded token: kind in the low byte, the operation in the
// next, the index (slot or connection) above.
const TICK: u64 = 1;
const SIGNAL: u64 = 2;
const STDOUT: u64 = 3;
const KERNEL_LOG: u64 = 4;
const RECV_MULTI: u64 = 5;
const RECV: u64 = 6;
const HTTP: u64 = 7;

impl Token {
    pub fn encode(self) -> u64 {
        let (kind, op, index) = match self {
            Self::Tick => (TICK, 0, 0),
            Self::Signal => (SIGNAL, 0, 0),
            Self::Stdout => (STDOUT, 0, 0),
            Self::Ingest(IngestOp::KernelLog) => (KERNEL_LOG, 0, 0),
            Self::Ingest(IngestOp::RecvMulti) => (RECV_MULTI, 0, 0),
            Self::Ingest(IngestOp::Recv { slot }) => (RECV, 0, slot),
            Self::Http { conn, op } => (HTTP, op as u64, conn),
        };
        kind | op << 8 | (index as u64) << 16
    }

    /// The token `encode` made; None for user data no operation carries.
    pub fn decode(data: u64) -> Option<Self> {
        let index = u16::try_from(data >> 16).ok()?;
        let op = (data >> 8) & 0xff;
        let simple = |t: Self| (op == 0 && index == 0).then_some(t);
        match data & 0xff {
            TICK => simple(Self::Tick),
            SIGNAL => simple(Self::Signal),
            STDOUT => simple(Self::Stdout),
            KERNEL_LOG => simple(Self::Ingest(IngestOp::KernelLog)),
            RECV_MULTI => simple(Self::Ingest(IngestOp::RecvMulti)),
            RECV if op == 0 => Some(Self::Ingest(IngestOp::Recv { slot: index })),
            HTTP => {
                let op = [HttpOp::Accept, HttpOp::Recv, HttpOp::Send, HttpOp::Deadline]
                    .into_iter()
                    .find(|o| *o as u64 == op)?;
                Some(Self::Http { conn: index, op })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_comes_back_as_itself() {
        let mut all = vec![
            Token::Tick,
            Token::Signal,
            Token::Stdout,
            Token::Ingest(IngestOp::KernelLog),
            Token::Ingest(IngestOp::RecvMulti),
        ];
        for slot in [0, 1, 63, u16::MAX] {
            all.push(Token::Ingest(IngestOp::Recv { slot }));
        }
        for conn in [0, 1, 127, u16::MAX] {
            for op in [HttpOp::Accept, HttpOp::Recv, HttpOp::Send, HttpOp::Deadline] {
                all.push(Token::Http { conn, op });
            }
        }
        let mut seen = std::collections::HashSet::new();
        for t in all {
            let data = t.encode();
            assert!(seen.insert(data), "{t:?} encodes like another token");
            assert_eq!(Token::decode(data), Some(t));
        }
    }

    #[test]
    fn foreign_user_data_is_no_token() {
        for data in [0, 8, 0xff, 1 << 8, 1 << 16, 7 | 9 << 8, u64::MAX] {
            assert_eq!(Token::decode(data), None, "{data:#x}");
        }
    }
}
