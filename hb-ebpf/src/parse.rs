//! Walks Ethernet / VLAN / IPv4 / IPv6 / UDP headers to a heartbeat's source
//! address. Every read is bounds-checked against `data_end` first, both for
//! the verifier and because frames can be cut anywhere.

use hb_common::{
    Counter, HostKey, MAGIC, auth,
    net::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IP_MF, IP_OFFMASK,
        IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_UDP,
        IPV4_HLEN, IPV6_HLEN, UDP_HLEN, VLAN_HLEN,
    },
};

/// Ethernet, an IPv4 header without options, UDP: the fast path's frame.
const FAST_V4_LEN: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN;
/// Ethernet, an IPv6 header, UDP.
const FAST_V6_LEN: usize = ETH_HLEN + IPV6_HLEN + UDP_HLEN;
/// The flags and offset bits that mark a fragment: MF, or any offset.
const FRAGMENT_BITS: u16 = IP_MF | IP_OFFMASK;
/// Extension headers walked before giving up (classified as not UDP).
const MAX_IPV6_EXT: usize = 4;
const HEARTBEAT_UDP_LEN: u16 = (UDP_HLEN + MAGIC.len()) as u16;
const SIGNED_UDP_LEN: u16 = (UDP_HLEN + auth::LEN) as u16;

// Packet loads as single BPF instructions, `load!(u16, p, 12)` reads the
// 2 bytes at `p + 12` as a `u64`. Header fields are not aligned for Rust
// (IPv4 addresses sit at offset 26), and LLVM turns unaligned reads into
// byte loads, shifts and ors: 4 instructions per u16, 7 per u32. The kernel
// allows unaligned packet loads where the CPU does them cheaply (x86-64,
// arm64); the verifier rejects the program elsewhere. The result is a u64
// because BPF loads zero-extend: narrower types would be masked again.
//
// Safety: the bytes must be inside the frame (checked against data_end).
macro_rules! load {
    ($ty:ident, $p:expr, $off:literal) => {{
        let v: u64;
        // SAFETY: the caller checked the bytes against data_end.
        unsafe {
            core::arch::asm!(
                concat!("{0} = *(", stringify!($ty), " *)({1} + ", stringify!($off), ")"),
                out(reg) v,
                in(reg) $p,
                options(nostack, readonly),
            )
        };
        v
    }};
}

/// A 16-bit constant as `load!(u16, ..)` reads it from the wire.
const fn net16(v: u16) -> u64 {
    v.to_be() as u64
}

/// Why a frame is not a heartbeat.
pub type Miss = Counter;

/// A heartbeat-shaped datagram (its IPv4 header checksum verified): its
/// source and destination addresses, whether the source is one no host has,
/// and for the 32-byte signed form the payload's words after the magic
/// (loaded little-endian, as SipHash reads them; unverified).
pub struct Beat {
    pub src: HostKey,
    pub dst: HostKey,
    /// Unspecified, loopback, multicast, broadcast, IPv4-mapped or
    /// -compatible IPv6: never a host's.
    pub bad_src: bool,
    pub signed: Option<Signed>,
}

pub struct Signed {
    /// Bytes 0..8: magic, version, flags, reserved.
    pub header: u64,
    /// Bytes 8..16: host id (big-endian on the wire).
    pub host_id: u64,
    /// Bytes 16..24: sequence number (big-endian on the wire).
    pub seq: u64,
    /// Bytes 24..32.
    pub mac: u64,
}

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

    /// The 16-bit field at `off`, in network byte order.
    #[inline(always)]
    fn net16_at(&self, off: usize) -> Result<u64, Miss> {
        let p = self.at(off, 2)?;
        Ok(load!(u16, p, 0))
    }
}

/// The destination MAC of a frame that [`heartbeat_source`] took for a
/// heartbeat, its 6 bytes loaded little-endian. No bounds check of its own:
/// the parse checked the frame for far more than 6 bytes (and the verifier
/// would refuse the program if it had not).
#[inline(always)]
pub fn dst_mac(frame: &Frame) -> u64 {
    let p = frame.start as *const u8;
    load!(u32, p, 0) | load!(u16, p, 4) << 32
}

/// Returns the source address (and signed fields) of a heartbeat to `port`,
/// or why the frame is not one. `port_net` is in network byte order, like
/// every field compared here, and each layer's deciding field is read first,
/// so that other traffic leaves early.
#[inline(always)]
pub fn heartbeat_source(frame: &Frame, port_net: u16) -> Result<Beat, Miss> {
    let port = u64::from(port_net);
    // The fast path, untagged or with one tag (the general path below takes
    // what it leaves: short frames, IPv4 options, IPv6 extension headers,
    // QinQ).
    if frame.start + FAST_V4_LEN <= frame.end {
        let p = frame.start as *const u8;
        let proto = load!(u16, p, 12);
        if let Some(r) = fast::<0>(frame, proto, port) {
            return r;
        }
        if is_vlan(proto) && frame.start + VLAN_HLEN + FAST_V4_LEN <= frame.end {
            if let Some(r) = fast::<VLAN_HLEN>(frame, load!(u16, p, 16), port) {
                return r;
            }
        }
    }
    let mut off = ETH_HLEN;
    let mut proto = frame.net16_at(12)?;
    // Up to two tags: 802.1ad outer + 802.1Q inner (QinQ), or one of either.
    for _ in 0..2 {
        if !is_vlan(proto) {
            break;
        }
        proto = frame.net16_at(off + 2)?;
        off += VLAN_HLEN;
    }
    if proto == net16(ETH_P_IPV4) {
        ipv4(frame, off, port)
    } else if proto == net16(ETH_P_IPV6) {
        ipv6(frame, off, port)
    } else {
        Err(Counter::NotIp)
    }
}

/// An 802.1Q or 802.1ad tag's EtherType (as loaded).
#[inline(always)]
fn is_vlan(proto: u64) -> bool {
    proto == net16(ETH_P_8021Q) || proto == net16(ETH_P_8021AD)
}

/// IPv4 without options and IPv6 without extension headers, most of any
/// network's traffic, after `TAGS` bytes of VLAN tags: `proto` is the
/// EtherType after the tags, and the caller checked the frame for
/// `TAGS + FAST_V4_LEN` bytes. One bounds check covers all the headers, and
/// the checks are the general path's at fixed offsets, in the same order (so
/// with the same outcomes). A packet that is not a heartbeat should cost
/// little more than an empty program, and at that size every bounds check
/// and branch counts. `None`: for the general path.
#[inline(always)]
fn fast<const TAGS: usize>(frame: &Frame, proto: u64, port: u64) -> Option<Result<Beat, Miss>> {
    let p = (frame.start + TAGS) as *const u8;
    if proto == net16(ETH_P_IPV4) {
        if load!(u8, p, 14) != 0x45 {
            return None;
        }
        if load!(u16, p, 20) & net16(FRAGMENT_BITS) != 0 {
            return Some(Err(Counter::Fragment));
        }
        if load!(u8, p, 23) != u64::from(IPPROTO_UDP) {
            return Some(Err(Counter::NotUdp));
        }
        if load!(u16, p, 36) != port {
            return Some(Err(Counter::OtherPort));
        }
        // SAFETY: inside the checked bytes.
        let ip = unsafe { p.add(ETH_HLEN) };
        return Some(ipv4_datagram(
            frame,
            ip,
            IPV4_HLEN,
            TAGS + ETH_HLEN + IPV4_HLEN,
            0,
        ));
    }
    if proto == net16(ETH_P_IPV6) {
        if p as usize + FAST_V6_LEN > frame.end || load!(u8, p, 14) >> 4 != 6 {
            return None;
        }
        let next = load!(u8, p, 20);
        // UDP first: a compare, where a match would test a set.
        if next == u64::from(IPPROTO_UDP) {
            if load!(u16, p, 56) != port {
                return Some(Err(Counter::OtherPort));
            }
            // SAFETY: inside the checked FAST_V6_LEN bytes.
            let ip = unsafe { p.add(ETH_HLEN) };
            return Some(ipv6_datagram(frame, ip, 0, TAGS + ETH_HLEN + IPV6_HLEN));
        }
        return match next as u8 {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => None,
            _ => Some(Err(Counter::NotUdp)),
        };
    }
    if is_vlan(proto) {
        return None;
    }
    Some(Err(Counter::NotIp))
}

#[inline(always)]
fn ipv4(frame: &Frame, off: usize, port: u64) -> Result<Beat, Miss> {
    let p = frame.at(off, IPV4_HLEN)?;
    // SAFETY (all reads from `p`): inside the 20-byte fixed header.
    let b = |i: usize| unsafe { *p.add(i) };
    let vihl = b(0);
    if vihl >> 4 != 4 {
        return Err(Counter::NotIp);
    }
    // A header shorter than its fixed part is no IPv4 header (RFC 791), as
    // a wrong version is not: the frame itself may well go on.
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return Err(Counter::NotIp);
    }
    // MF set or a non-zero offset: part of a fragmented datagram.
    if load!(u16, p, 6) & net16(FRAGMENT_BITS) != 0 {
        return Err(Counter::Fragment);
    }
    if b(9) != IPPROTO_UDP {
        return Err(Counter::NotUdp);
    }
    let udp = udp_to(frame, off + ihl, port)?;
    // The options' share of the header checksum (the UDP header after them
    // is in the frame, so they are too).
    let mut options = 0u64;
    for i in 0..MAX_IPV4_OPTION_WORDS {
        let at = IPV4_HLEN + 4 * i;
        if at >= ihl {
            break;
        }
        let w = frame.at(off + at, 4)?;
        options += load!(u32, w, 0);
    }
    ipv4_datagram(frame, p, ihl, udp, options)
}

/// Words of IPv4 options at most (IHL 15).
const MAX_IPV4_OPTION_WORDS: usize = 10;

/// The rest of an IPv4 datagram to the heartbeat port: `p` is its header
/// (20 bytes checked), `ihl` that header's length, `udp` the UDP header's
/// offset in the frame, `options` the sum of the options' 32-bit words.
#[inline(always)]
fn ipv4_datagram(
    frame: &Frame,
    p: *const u8,
    ihl: usize,
    udp: usize,
    options: u64,
) -> Result<Beat, Miss> {
    let total_len = (load!(u16, p, 2) as u16).swap_bytes() as usize;
    let signed = heartbeat_payload(frame, udp, total_len.wrapping_sub(ihl))?;
    // The header checksum (RFC 1071), summed in 32-bit words as loaded:
    // the ones' complement sum of a correct header is 0xffff whatever the
    // word size and byte order. Folded, that sum is the plain sum modulo
    // 0xffff (2^16 = 1 there), except that a non-zero multiple folds to
    // 0xffff: so a header is correct when its plain sum, never zero (the
    // version nibble is 4), is a multiple of 0xffff.
    let src = load!(u32, p, 12);
    let dst = load!(u32, p, 16);
    let sum = load!(u32, p, 0) + load!(u32, p, 4) + load!(u32, p, 8) + src + dst + options;
    if !multiple_of_ffff(sum) {
        return Err(Counter::BadChecksum);
    }
    // Loaded in memory order, stored back the same way: ::ffff:a.b.c.d as
    // words, bytes 10 and 11 are 0xff, 12..16 the address. The first byte
    // is the low one: 0.0.0.0/8, 127.0.0.0/8, 224.0.0.0/4 (multicast) and
    // 255.255.255.255 are no host's.
    let first = src & 0xff;
    let bad_src = first == 0 || first == 127 || first & 0xf0 == 0xe0 || src == 0xffff_ffff;
    Ok(Beat {
        src: HostKey::from_words([0, 0xffff_0000 | (src << 32)]),
        dst: HostKey::from_words([0, 0xffff_0000 | (dst << 32)]),
        bad_src,
        signed,
    })
}

/// Whether `x` is a multiple of 0xffff, without a division: multiplied by
/// 0xffff's inverse modulo 2^64, the multiples are exactly the products up
/// to (2^64 - 1) / 0xffff (a multiply and a compare, where folding to 16
/// bits twice takes eight instructions).
#[inline(always)]
fn multiple_of_ffff(x: u64) -> bool {
    const INVERSE: u64 = 0xfffe_fffe_fffe_ffff;
    const _: () = assert!(INVERSE.wrapping_mul(0xffff) == 1);
    x.wrapping_mul(INVERSE) <= u64::MAX / 0xffff
}

#[inline(always)]
fn ipv6(frame: &Frame, off: usize, port: u64) -> Result<Beat, Miss> {
    let p = frame.at(off, IPV6_HLEN)?;
    // SAFETY (all reads from `p`): inside the 40-byte fixed header.
    let b = |i: usize| unsafe { *p.add(i) };
    if b(0) >> 4 != 6 {
        return Err(Counter::NotIp);
    }
    let mut next = b(6);
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
    let udp = udp_to(frame, l4, port)?;
    ipv6_datagram(frame, p, ext_len, udp)
}

/// The rest of an IPv6 datagram to the heartbeat port: `p` is its header
/// (40 bytes checked), `ext_len` the length of its extension headers, `udp`
/// the UDP header's offset in the frame.
#[inline(always)]
fn ipv6_datagram(frame: &Frame, p: *const u8, ext_len: usize, udp: usize) -> Result<Beat, Miss> {
    let payload_len = (load!(u16, p, 4) as u16).swap_bytes() as usize;
    let signed = heartbeat_payload(frame, udp, payload_len.wrapping_sub(ext_len))?;
    let (a, b) = (load!(u64, p, 8), load!(u64, p, 16));
    // Loaded little-endian: multicast (ff00::/8) has 0xff as `a`'s low
    // byte; ::/96 (unspecified, loopback, IPv4-compatible) and
    // ::ffff:0:0/96 (IPv4-mapped) have `a` zero and bytes 8..12 as `b`'s
    // low half.
    let b_low = b & 0xffff_ffff;
    let bad_src = a & 0xff == 0xff || (a == 0 && (b_low == 0 || b_low == 0xffff_0000));
    Ok(Beat {
        src: HostKey::from_words([a, b]),
        dst: HostKey::from_words(ipv6_dst(load!(u64, p, 24), load!(u64, p, 32))),
        bad_src,
        signed,
    })
}

/// An IPv6 destination as the local address set is looked up with: an
/// IPv4-mapped one would be taken for the IPv4 address (which the set holds
/// in that form), so it becomes `::`, which is never local.
#[inline(always)]
fn ipv6_dst(a: u64, b: u64) -> [u64; 2] {
    if a == 0 && b & 0xffff_ffff == 0xffff_0000 {
        [0, 0]
    } else {
        [a, b]
    }
}

/// The offset of the UDP header at `off` if it is addressed to `port`.
#[inline(always)]
fn udp_to(frame: &Frame, off: usize, port: u64) -> Result<usize, Miss> {
    let h = frame.at(off, UDP_HLEN)?;
    if load!(u16, h, 2) != port {
        return Err(Counter::OtherPort);
    }
    Ok(off)
}

/// Checks that the datagram whose UDP header is at `off` carries exactly
/// `PyHB` (returns `None`) or, with a key, a 32-byte payload starting with
/// `PyHB` (returns its words). `ip_udp_len` is the UDP length the IP layer
/// implies.
#[inline(always)]
fn heartbeat_payload(frame: &Frame, off: usize, ip_udp_len: usize) -> Result<Option<Signed>, Miss> {
    // The payload's length comes from the UDP and IP headers, never from the
    // frame's end: short frames are padded to 60 bytes on Ethernet. So a
    // datagram of any other length is a wrong payload, whatever follows it.
    let h = frame.at(off, UDP_HLEN)?;
    let udp_len = load!(u16, h, 4);
    let magic = u64::from(u32::from_ne_bytes(MAGIC));
    // The classic payload is tested first: it is the common one.
    if udp_len == net16(HEARTBEAT_UDP_LEN) && ip_udp_len == HEARTBEAT_UDP_LEN as usize {
        let p = frame.at(off + UDP_HLEN, MAGIC.len())?;
        if load!(u32, p, 0) != magic {
            return Err(Counter::WrongPayload);
        }
        return Ok(None);
    }
    // Without a key a signed payload is a wrong one like any other, cut
    // short or not.
    if udp_len != net16(SIGNED_UDP_LEN) || ip_udp_len != SIGNED_UDP_LEN as usize || !crate::keyed()
    {
        return Err(Counter::WrongPayload);
    }
    let h = frame.at(off, UDP_HLEN + auth::LEN)?;
    if load!(u32, h, 8) != magic {
        return Err(Counter::WrongPayload);
    }
    Ok(Some(Signed {
        header: load!(u64, h, 8),
        host_id: load!(u64, h, 16),
        seq: load!(u64, h, 24),
        mac: load!(u64, h, 32),
    }))
}
