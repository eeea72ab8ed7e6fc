//! Frames for the BPF_PROG_TEST_RUN tests: small builders, one per layer,
//! and a reference classifier in plain Rust that says what the XDP program
//! should make of any frame.
#![allow(dead_code)]

use hb_common::{Counter, DEFAULT_PORT, HostKey, MAGIC};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_LLDP: u16 = 0x88cc;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tag: hb does not walk it.
pub const ETH_P_QINQ1: u16 = 0x9100;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// IPv4 flags and fragment offset field.
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;

pub const PORT: u16 = DEFAULT_PORT;
pub const SPORT: u16 = 40000;

/// Ethernet header, VLAN tags (TPIDs, outermost first), `payload`.
pub fn eth(tpids: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for (i, tpid) in tpids.iter().enumerate() {
        f.extend(tpid.to_be_bytes());
        // TCI: PCP 0, VID 100, 101, ...
        f.extend((100 + i as u16).to_be_bytes());
    }
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

/// UDP header with a consistent length (checksum 0: none, as IPv4 allows).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    udp_with_len(sport, dport, (8 + payload.len()) as u16, payload)
}

pub fn udp_with_len(sport: u16, dport: u16, len: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + payload.len());
    d.extend(sport.to_be_bytes());
    d.extend(dport.to_be_bytes());
    d.extend(len.to_be_bytes());
    d.extend([0, 0]);
    d.extend(payload);
    d
}

/// An IPv4 header; `build` fills in what is not overridden consistently.
#[derive(Clone, Debug)]
pub struct V4 {
    pub version: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Options, a multiple of 4 bytes (at most 40).
    pub options: Vec<u8>,
    /// Flags and fragment offset.
    pub frag: u16,
    pub proto: u8,
    /// IHL in 32-bit words; default from the options.
    pub ihl: Option<u8>,
    /// Total length; default header + payload.
    pub total_len: Option<u16>,
}

impl V4 {
    /// A UDP header from `src` with DF set, as Linux sends small datagrams.
    pub fn new(src: [u8; 4]) -> Self {
        Self {
            version: 4,
            src,
            dst: [198, 18, 0, 1],
            options: Vec::new(),
            frag: IP_DF,
            proto: IPPROTO_UDP,
            ihl: None,
            total_len: None,
        }
    }

    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let hlen = 20 + self.options.len();
        let ihl = self.ihl.unwrap_or((hlen / 4) as u8);
        let total = self.total_len.unwrap_or((hlen + payload.len()) as u16);
        let mut h = Vec::with_capacity(hlen + payload.len());
        h.push(self.version << 4 | (ihl & 0x0f));
        h.push(0);
        h.extend(total.to_be_bytes());
        h.extend(0x4842u16.to_be_bytes());
        h.extend(self.frag.to_be_bytes());
        h.push(64);
        h.push(self.proto);
        h.extend([0, 0]);
        h.extend(self.src);
        h.extend(self.dst);
        h.extend(&self.options);
        // hb does not check it, but a realistic frame has it right.
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend(payload);
        h
    }
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 options of `words` 32-bit words: NOPs ended by an end-of-list.
pub fn v4_options(words: usize) -> Vec<u8> {
    let mut o = vec![1u8; words * 4];
    if let Some(last) = o.last_mut() {
        *last = 0;
    }
    o
}

/// An IPv6 header with extension headers; `build` chains them.
#[derive(Clone, Debug)]
pub struct V6 {
    pub version: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Extension headers in order: (type, length in bytes, a multiple of 8).
    pub ext: Vec<(u8, usize)>,
    /// The upper-layer protocol after the extension headers.
    pub proto: u8,
    /// Payload length; default extension headers + payload.
    pub payload_len: Option<u16>,
}

impl V6 {
    pub fn new(src: [u8; 16]) -> Self {
        Self {
            version: 6,
            src,
            dst: v6([0xfd00, 0x4842, 0, 0, 0, 0, 0, 1]),
            ext: Vec::new(),
            proto: IPPROTO_UDP,
            payload_len: None,
        }
    }

    pub fn with_ext(mut self, ext: &[(u8, usize)]) -> Self {
        self.ext = ext.to_vec();
        self
    }

    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let ext_len: usize = self.ext.iter().map(|&(_, len)| len).sum();
        let plen = self.payload_len.unwrap_or((ext_len + payload.len()) as u16);
        let first = self.ext.first().map_or(self.proto, |&(kind, _)| kind);
        let mut h = Vec::with_capacity(40 + ext_len + payload.len());
        h.extend([self.version << 4, 0, 0, 0]);
        h.extend(plen.to_be_bytes());
        h.push(first);
        h.push(64);
        h.extend(self.src);
        h.extend(self.dst);
        for (i, &(kind, len)) in self.ext.iter().enumerate() {
            assert!(len >= 8 && len.is_multiple_of(8) && len <= 2048);
            let next = self.ext.get(i + 1).map_or(self.proto, |&(k, _)| k);
            h.push(next);
            if kind == IPPROTO_FRAGMENT {
                // Reserved byte, then offset 0 with M set, identification.
                assert_eq!(len, 8);
                h.extend([0, 0, 1, 0, 0, 0x48, 0x42]);
            } else {
                h.push((len / 8 - 1) as u8);
                // Options area: one PadN covering it (routing: type 0,
                // segments left 0, then zeros).
                if kind == IPPROTO_ROUTING {
                    h.extend(vec![0; len - 2]);
                } else {
                    h.extend([1, (len - 4) as u8]);
                    h.extend(vec![0; len - 4]);
                }
            }
        }
        h.extend(payload);
        h
    }
}

pub fn v6(segments: [u16; 8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    for (i, s) in segments.iter().enumerate() {
        a[i * 2..i * 2 + 2].copy_from_slice(&s.to_be_bytes());
    }
    a
}

/// The canonical IPv4 heartbeat from `src`, 46 bytes.
pub fn hb4(tpids: &[u16], src: [u8; 4]) -> Vec<u8> {
    eth(
        tpids,
        ETH_P_IPV4,
        &V4::new(src).build(&udp(SPORT, PORT, &MAGIC)),
    )
}

/// The canonical IPv6 heartbeat from `src`, 66 bytes.
pub fn hb6(tpids: &[u16], src: [u8; 16]) -> Vec<u8> {
    eth(
        tpids,
        ETH_P_IPV6,
        &V6::new(src).build(&udp(SPORT, PORT, &MAGIC)),
    )
}

/// Zero padding up to the 60-byte Ethernet minimum (FCS not included).
pub fn padded(mut f: Vec<u8>, fill: u8) -> Vec<u8> {
    if f.len() < 60 {
        f.resize(60, fill);
    }
    f
}

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

/// Nanoseconds of `clock` (CLOCK_MONOTONIC or CLOCK_MONOTONIC_COARSE).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

/// A plain IPv4 heartbeat from `src`.
pub fn heartbeat4(src: [u8; 4]) -> Vec<u8> {
    hb4(&[], src)
}

/// Outcomes of signed heartbeats and loss accounting, which frames built
/// here (no key loaded) never reach, apart from `forged` by mutation.
pub fn auth_only(c: Counter) -> bool {
    matches!(
        c,
        Counter::Forged | Counter::Replayed | Counter::Unauthenticated | Counter::Lost
    )
}
