//! Walks Ethernet / VLAN / IPv4 / IPv6 / UDP headers to a heartbeat's source
//! address. Every read is bounds-checked against `data_end` first, both for
//! the verifier and because frames can be cut anywhere.

use hb_common::{Counter, HostKey, MAGIC};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up (classified as not UDP).
const MAX_IPV6_EXT: usize = 4;
const HEARTBEAT_UDP_LEN: u16 = (UDP_HLEN + MAGIC.len()) as u16;

/// Why a frame is not a heartbeat.
pub type Miss = Counter;

/// A bounds-checked view of the frame.
pub struct Frame {
    pub start: usize,
    pub end: usize,
}

impl Frame {
    /// Pointer to `len` bytes at `off`, or `Truncated` if the frame is shorter.
    #[inline(always)]
    fn at(&self, off: usize, len: usize) -> Result<*const u8, Miss> {
        if self.start + off + len > self.end {
            return Err(Counter::Truncated);
        }
        Ok((self.start + off) as *const u8)
    }

    #[inline(always)]
    fn be16_at(&self, off: usize) -> Result<u16, Miss> {
        let p = self.at(off, 2)?;
        // SAFETY: `at` checked both bytes; packet data may be unaligned.
        Ok(u16::from_be(unsafe { (p as *const u16).read_unaligned() }))
    }
}

/// Returns the source address of a heartbeat to `port`, or why the frame is
/// not one.
#[inline(always)]
pub fn heartbeat_source(frame: &Frame, port: u16) -> Result<HostKey, Miss> {
    let mut off = ETH_HLEN;
    let mut proto = frame.be16_at(12)?;
    // Up to two tags: 802.1ad outer + 802.1Q inner (QinQ), or one of either.
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = frame.be16_at(off + 2)?;
        off += VLAN_HLEN;
    }
    match proto {
        ETH_P_IPV4 => ipv4(frame, off, port),
        ETH_P_IPV6 => ipv6(frame, off, port),
        _ => Err(Counter::NotIp),
    }
}

#[inline(always)]
fn ipv4(frame: &Frame, off: usize, port: u16) -> Result<HostKey, Miss> {
    let p = frame.at(off, 20)?;
    // SAFETY: the 20-byte fixed header is inside the frame.
    let b = |i: usize| unsafe { *p.add(i) };
    if b(0) >> 4 != 4 {
        return Err(Counter::NotIp);
    }
    let ihl = ((b(0) & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Counter::Truncated);
    }
    let total_len = u16::from_be_bytes([b(2), b(3)]);
    let frag = u16::from_be_bytes([b(6), b(7)]);
    // MF set or a non-zero offset: part of a fragmented datagram.
    if frag & 0x3fff != 0 {
        return Err(Counter::Fragment);
    }
    if b(9) != IPPROTO_UDP {
        return Err(Counter::NotUdp);
    }
    let src = [b(12), b(13), b(14), b(15)];
    udp(
        frame,
        off + ihl,
        port,
        total_len as usize == ihl + HEARTBEAT_UDP_LEN as usize,
    )?;
    Ok(HostKey::from_ipv4(src))
}

#[inline(always)]
fn ipv6(frame: &Frame, off: usize, port: u16) -> Result<HostKey, Miss> {
    let p = frame.at(off, IPV6_HLEN)?;
    // SAFETY (all reads from `p`): inside the 40-byte fixed header.
    let b = |i: usize| unsafe { *p.add(i) };
    if b(0) >> 4 != 6 {
        return Err(Counter::NotIp);
    }
    let payload_len = u16::from_be_bytes([b(4), b(5)]) as usize;
    let mut next = b(6);
    let mut addr = [0u8; 16];
    // SAFETY: bytes 8..24 of the fixed header are inside the frame.
    unsafe { core::ptr::copy_nonoverlapping(p.add(8), addr.as_mut_ptr(), 16) };

    let mut l4 = off + IPV6_HLEN;
    let mut ext_len = 0usize;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                // One check for both bytes: the verifier cannot relate two
                // separate checks at a variable offset.
                let h = frame.at(l4, 2)?;
                // SAFETY: both bytes are inside the frame.
                let (nh, hlen) = unsafe { (*h, *h.add(1)) };
                next = nh;
                let len = (hlen as usize + 1) * 8;
                l4 += len;
                ext_len += len;
            }
            _ => break,
        }
    }
    match next {
        IPPROTO_UDP => {}
        IPPROTO_FRAGMENT => return Err(Counter::Fragment),
        _ => return Err(Counter::NotUdp),
    }
    udp(
        frame,
        l4,
        port,
        payload_len == ext_len + HEARTBEAT_UDP_LEN as usize,
    )?;
    Ok(HostKey::from_ipv6(addr))
}

/// Checks the UDP header at `off` and its payload. `ip_len_ok` says whether
/// the IP layer's length leaves room for exactly a heartbeat.
#[inline(always)]
fn udp(frame: &Frame, off: usize, port: u16, ip_len_ok: bool) -> Result<(), Miss> {
    let h = frame.at(off, UDP_HLEN)?;
    // SAFETY: the UDP header is inside the frame.
    let field = |i: usize| u16::from_be(unsafe { (h.add(i) as *const u16).read_unaligned() });
    if field(2) != port {
        return Err(Counter::OtherPort);
    }
    // The payload's length comes from the UDP and IP headers, never from the
    // frame's end: short frames are padded to 60 bytes on Ethernet.
    if field(4) != HEARTBEAT_UDP_LEN || !ip_len_ok {
        return Err(Counter::WrongPayload);
    }
    let payload = frame.at(off + UDP_HLEN, MAGIC.len())?;
    // SAFETY: the four payload bytes are inside the frame.
    let word = unsafe { (payload as *const u32).read_unaligned() };
    if word != u32::from_ne_bytes(MAGIC) {
        return Err(Counter::WrongPayload);
    }
    Ok(())
}
