//! The collector's I/O on one io_uring: the event loop, the tokens that
//! tell its operations apart, and the stdout writer.

mod event_loop;
mod token;
mod writer;

pub use event_loop::{EventLoop, Wake};
pub use token::{HttpOp, IngestOp, Token};
pub use writer::{RingWriter, give_back};

/// The size of a memory page, for mappings shared with the kernel.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}
