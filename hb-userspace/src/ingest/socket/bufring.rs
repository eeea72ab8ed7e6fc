//! A ring of provided buffers for socket mode's multishot receive: the
//! kernel picks a free buffer for each datagram, and a buffer goes back to
//! the ring (a store to shared memory) once its datagram is recorded.

use std::{
    io,
    mem::{size_of, zeroed},
};

use io_uring::types;

use crate::io::{EventLoop, page_size};

pub const BUFFER_GROUP: u16 = 1;
/// Provided buffers: fewer than the completion queue holds (8192), so a
/// burst between two waits cannot overflow it.
pub const BUFFERS: u16 = 2048;
/// Per buffer: the recvmsg_out header (16 bytes), the sender's address (28)
/// and more than a heartbeat; a longer datagram is flagged truncated.
pub const BUFFER_SIZE: usize = 128;

/// A ring of provided buffers shared with the kernel: `BUFFERS` ring
/// entries (page-aligned) followed by the buffers, in one mapping. Never
/// unmapped: the kernel may write into it until the ring is gone, which is
/// at the end of the process.
pub struct BufRing {
    base: *mut u8,
    ring_bytes: usize,
    tail: u16,
    /// What the receive's completions are parsed against (its name length).
    pub msghdr: &'static libc::msghdr,
}

impl BufRing {
    pub fn new(ev: &EventLoop) -> io::Result<Self> {
        let page = page_size();
        let ring_bytes =
            (BUFFERS as usize * size_of::<types::BufRingEntry>()).next_multiple_of(page);
        let bytes = ring_bytes + BUFFERS as usize * BUFFER_SIZE;
        // SAFETY: a fresh anonymous mapping, checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: all-zero is a valid msghdr; leaked: the kernel reads it
        // for as long as the receive is armed.
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
        msghdr.msg_namelen = size_of::<libc::sockaddr_in6>() as u32;
        let mut this = Self {
            base: base.cast(),
            ring_bytes,
            tail: 0,
            msghdr: Box::leak(msghdr),
        };
        for bid in 0..BUFFERS {
            this.recycle(bid);
        }
        // SAFETY: the ring stays mapped for the life of the process.
        unsafe { ev.register_buf_ring(this.base as u64, BUFFERS, BUFFER_GROUP) }.inspect_err(
            |_| {
                // SAFETY: not registered: nobody else knows this mapping.
                unsafe { libc::munmap(base, bytes) };
            },
        )?;
        Ok(this)
    }

    pub fn buffer(&self, bid: u16) -> &[u8] {
        // SAFETY: inside the mapping; the kernel is done with a buffer
        // once its completion is posted.
        unsafe {
            std::slice::from_raw_parts(
                self.base.add(self.ring_bytes + bid as usize * BUFFER_SIZE),
                BUFFER_SIZE,
            )
        }
    }

    /// Hands buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        let ring = self.base.cast::<types::BufRingEntry>();
        // SAFETY: entry `tail % BUFFERS` is inside the ring; the kernel
        // does not read it before the tail below says so.
        unsafe {
            let entry = &mut *ring.add((self.tail & (BUFFERS - 1)) as usize);
            entry.set_addr(self.base.add(self.ring_bytes + bid as usize * BUFFER_SIZE) as u64);
            entry.set_len(BUFFER_SIZE as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field of the first entry, published with release
        // ordering so the kernel sees the entry first.
        unsafe {
            let tail = types::BufRingEntry::tail(ring).cast_mut();
            (*tail.cast::<std::sync::atomic::AtomicU16>())
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}
