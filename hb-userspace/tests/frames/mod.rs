//! Test frame builders: Ethernet with VLAN tags, IPv4 with options and
//! fragment fields, IPv6 with extension headers, UDP. Lengths are
//! consistent unless a test breaks them on purpose; checksums are 0 (the
//! program does not read them).
#![allow(dead_code)]

pub const ETH_HLEN: usize = 14;
pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;
pub const UDP: u8 = 17;
pub const TCP: u8 = 6;
pub const ICMP: u8 = 1;
pub const HOPOPTS: u8 = 0;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const DSTOPTS: u8 = 60;
pub const PORT: u16 = 43278;
pub const MAGIC4: &[u8] = b"PyHB";
pub const DST4: [u8; 4] = [198, 18, 0, 1];
pub const DST6: [u8; 16] = [0xfd, 0, 0x48, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Ethernet header, a VLAN tag (TCI 1) per TPID in `tags`, then `payload`.
pub fn eth(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for tpid in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&1u16.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4, no options, not fragmented.
pub fn ipv4(src: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_with(src, proto, l4, 5, 0)
}

/// IPv4 with a header of `ihl` words (options are NOPs) and the 16-bit
/// flags/fragment-offset field `frag`.
pub fn ipv4_with(src: [u8; 4], proto: u8, l4: &[u8], ihl: u8, frag: u16) -> Vec<u8> {
    let hlen = ihl as usize * 4;
    let mut h = vec![0u8; hlen];
    h[0] = 0x40 | ihl;
    h[2..4].copy_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&DST4);
    for b in &mut h[20..] {
        *b = 1; // NOP
    }
    h.extend_from_slice(l4);
    h
}

/// IPv6 with extension headers `exts` (type, length in 8-byte units beyond
/// the first 8), then `next` carrying `l4`.
pub fn ipv6(src: [u8; 16], exts: &[(u8, u8)], next: u8, l4: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, &(_, len)) in exts.iter().enumerate() {
        let following = exts.get(i + 1).map_or(next, |e| e.0);
        let mut e = vec![0u8; (len as usize + 1) * 8];
        e[0] = following;
        e[1] = len;
        body.extend_from_slice(&e);
    }
    body.extend_from_slice(l4);
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
    h[6] = exts.first().map_or(next, |e| e.0);
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&DST6);
    h.extend_from_slice(&body);
    h
}

/// UDP from port 40000 to `port`.
pub fn udp(port: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + data.len());
    u.extend_from_slice(&40000u16.to_be_bytes());
    u.extend_from_slice(&port.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    u
}

pub fn with_udp_len(mut u: Vec<u8>, len: u16) -> Vec<u8> {
    u[4..6].copy_from_slice(&len.to_be_bytes());
    u
}

pub fn set_u16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// A plain IPv4 heartbeat from `src`.
pub fn heartbeat4(src: [u8; 4]) -> Vec<u8> {
    eth(&[], ETH_IPV4, &ipv4(src, UDP, &udp(PORT, MAGIC4)))
}
