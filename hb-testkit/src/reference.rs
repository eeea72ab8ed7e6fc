//! The reference classifier: what the XDP program should make of any
//! frame, in plain Rust, written from the protocols rather than from the
//! program. The packet tests check it against each of their cases, and the
//! fuzz test checks the program against it over a million frames.

use hb_common::{
    Counter, HostKey, MAGIC,
    net::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IP_MF, IPPROTO_DSTOPTS,
        IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_UDP,
    },
};

/// What a correct parser makes of `f` with heartbeats on `port`: the
/// source of a valid heartbeat, or the counter the frame belongs in. The
/// first layer that disqualifies the frame decides; a layer is judged once
/// its fixed header is complete.
///
/// A valid heartbeat: Ethernet, at most two 802.1Q/802.1ad tags, then
/// - IPv4 (version 4, IHL >= 5, no MF flag and offset 0, protocol UDP, total
///   length = header + 12), or IPv6 (version 6, at most four hop-by-hop,
///   routing or destination-options headers, then UDP; payload length =
///   extension headers + 12);
/// - UDP to `port` with length 12 whose 4 payload bytes, inside the frame,
///   are `PyHB`. Bytes after the datagram (Ethernet padding) do not matter.
///
/// One exception: from an IPv6 source in ff00::/8 (multicast: no host sends
/// from there, and it prefixes the keys of signed hosts) a heartbeat is a
/// forgery, counted `forged` and dropped all the same, never recorded.
pub fn classify(f: &[u8], port: u16) -> Result<HostKey, Counter> {
    let be16 = |off: usize| {
        f.get(off..off + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(Counter::Truncated)
    };
    let mut ethertype = be16(12)?;
    let mut off = ETH_HLEN;
    let mut tags = 0;
    while tags < 2 && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        ethertype = be16(off + 2)?;
        off += 4;
        tags += 1;
    }
    match ethertype {
        ETH_P_IPV4 => classify_v4(f, off, port),
        ETH_P_IPV6 => classify_v6(f, off, port),
        _ => Err(Counter::NotIp),
    }
}

fn classify_v4(f: &[u8], off: usize, port: u16) -> Result<HostKey, Counter> {
    let h = f.get(off..off + 20).ok_or(Counter::Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(Counter::NotIp);
    }
    let hlen = usize::from(h[0] & 0x0f) * 4;
    if hlen < 20 {
        return Err(Counter::Truncated);
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let more_fragments = frag & IP_MF != 0;
    let offset = frag & 0x1fff;
    if more_fragments || offset != 0 {
        return Err(Counter::Fragment);
    }
    if h[9] != IPPROTO_UDP {
        return Err(Counter::NotUdp);
    }
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    classify_udp(f, off + hlen, port, total == hlen + 12)?;
    Ok(HostKey::from_ipv4([h[12], h[13], h[14], h[15]]))
}

fn classify_v6(f: &[u8], off: usize, port: u16) -> Result<HostKey, Counter> {
    let h = f.get(off..off + 40).ok_or(Counter::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(Counter::NotIp);
    }
    let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let mut next = h[6];
    let mut at = off + 40;
    for _ in 0..4 {
        if ![IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS].contains(&next) {
            break;
        }
        let e = f.get(at..at + 2).ok_or(Counter::Truncated)?;
        next = e[0];
        at += (usize::from(e[1]) + 1) * 8;
    }
    match next {
        IPPROTO_UDP => {}
        IPPROTO_FRAGMENT => return Err(Counter::Fragment),
        _ => return Err(Counter::NotUdp),
    }
    classify_udp(f, at, port, payload_len == at - (off + 40) + 12)?;
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    if src[0] == 0xff {
        return Err(Counter::Forged);
    }
    Ok(HostKey::from_ipv6(src))
}

fn classify_udp(f: &[u8], off: usize, port: u16, ip_len_ok: bool) -> Result<(), Counter> {
    let u = f.get(off..off + 8).ok_or(Counter::Truncated)?;
    if u16::from_be_bytes([u[2], u[3]]) != port {
        return Err(Counter::OtherPort);
    }
    if u16::from_be_bytes([u[4], u[5]]) != 12 || !ip_len_ok {
        return Err(Counter::WrongPayload);
    }
    match f.get(off + 8..off + 12) {
        None => Err(Counter::Truncated),
        Some(p) if p == MAGIC => Ok(()),
        Some(_) => Err(Counter::WrongPayload),
    }
}

/// Outcomes of signed heartbeats and loss accounting, which the frames of
/// [`frames`](crate::frames) (no key loaded) never reach, apart from
/// `forged` by mutation.
pub fn auth_only(c: Counter) -> bool {
    matches!(
        c,
        Counter::Forged | Counter::Replayed | Counter::Unauthenticated | Counter::Lost
    )
}
