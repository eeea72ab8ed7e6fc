//! Userspace only (the `user` feature): what aya needs of the shared types.

// SAFETY: plain old data, repr(C), no padding.
unsafe impl aya::Pod for crate::HostKey {}
// SAFETY: plain old data, repr(C), no padding.
unsafe impl aya::Pod for crate::AuthSlot {}
// SAFETY: plain old data, repr(C), no padding (a u64, then 16-byte keys).
unsafe impl aya::Pod for crate::LocalSet {}
