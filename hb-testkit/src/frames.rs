//! Frames for BPF_PROG_TEST_RUN and for the load generator: one writer per
//! layer, which writes its header at the start of a buffer and allocates
//! nothing, and `Vec` builders on top of them.
//!
//! Unless told otherwise a frame goes from [`SRC_MAC`] to [`DST_MAC`], from
//! port [`SPORT`] to [`DST_V4`] or [`DST_V6`], port [`PORT`], with
//! consistent lengths and a correct IPv4 header checksum (hb checks it).
//! UDP checksums are 0 (none,
//! as IPv4 allows), except in [`write_udp`]'s frames, which the kernel's own
//! stack must accept.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hb_common::{DEFAULT_PORT, MAGIC, auth, net::*};

/// Destination MAC of the frames built here.
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Source MAC of the frames built here.
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Destination of IPv4 frames (RFC 2544 benchmarking range).
pub const DST_V4: [u8; 4] = [198, 18, 0, 1];
/// Destination of IPv6 frames: fd00:4842::1.
pub const DST_V6: [u8; 16] = v6([0xfd00, 0x4842, 0, 0, 0, 0, 0, 1]);
/// UDP port heartbeats go to.
pub const PORT: u16 = DEFAULT_PORT;
/// Source port of every datagram.
pub const SPORT: u16 = 40000;

/// Offset of the IPv4 source address in an untagged frame.
pub const IPV4_SRC_OFFSET: usize = ETH_HLEN + 12;
/// Offset of the UDP payload in an untagged IPv4 frame without options.
pub const PAYLOAD_OFFSET: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN;

/// Largest payload [`write_udp`] writes.
pub const MAX_PAYLOAD: usize = 64;
/// Room for any frame [`write_udp`] writes.
pub const MAX_FRAME: usize = ETH_HLEN + IPV6_HLEN + UDP_HLEN + MAX_PAYLOAD;

/// `payload` behind a header of `len` bytes that `write` writes.
fn build(len: usize, payload: &[u8], write: impl FnOnce(&mut [u8]) -> usize) -> Vec<u8> {
    let mut f = vec![0; len + payload.len()];
    let written = write(&mut f);
    debug_assert_eq!(written, len);
    f[len..].copy_from_slice(payload);
    f
}

/// Adds big-endian 16-bit words of `data` (odd length: zero-padded) to `sum`.
fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a 32-bit sum into the 16-bit ones' complement checksum.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes an Ethernet header from `src` to `dst`: VLAN tags of `tpids`
/// (outermost first; TCI: PCP 0, VID 100, 101, ...), then `ethertype`.
/// Returns its length.
pub fn write_eth(
    buf: &mut [u8],
    dst: [u8; 6],
    src: [u8; 6],
    tpids: &[u16],
    ethertype: u16,
) -> usize {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    let mut at = 12;
    for (i, tpid) in tpids.iter().enumerate() {
        buf[at..at + 2].copy_from_slice(&tpid.to_be_bytes());
        buf[at + 2..at + 4].copy_from_slice(&(100 + i as u16).to_be_bytes());
        at += VLAN_HLEN;
    }
    buf[at..at + 2].copy_from_slice(&ethertype.to_be_bytes());
    at + 2
}

/// Ethernet header, VLAN tags (TPIDs, outermost first), `payload`.
pub fn eth(tpids: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    build(ETH_HLEN + VLAN_HLEN * tpids.len(), payload, |f| {
        write_eth(f, DST_MAC, SRC_MAC, tpids, ethertype)
    })
}

/// Writes a UDP header claiming `len` bytes (checksum 0); returns its length.
pub fn write_udp_header(buf: &mut [u8], sport: u16, dport: u16, len: u16) -> usize {
    buf[0..2].copy_from_slice(&sport.to_be_bytes());
    buf[2..4].copy_from_slice(&dport.to_be_bytes());
    buf[4..6].copy_from_slice(&len.to_be_bytes());
    buf[6..8].copy_from_slice(&[0, 0]);
    UDP_HLEN
}

/// UDP header with a consistent length (checksum 0: none, as IPv4 allows).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    udp_with_len(sport, dport, (UDP_HLEN + payload.len()) as u16, payload)
}

/// UDP header claiming `len` bytes, whatever the payload's length.
pub fn udp_with_len(sport: u16, dport: u16, len: u16, payload: &[u8]) -> Vec<u8> {
    build(UDP_HLEN, payload, |d| {
        write_udp_header(d, sport, dport, len)
    })
}

/// A bare TCP SYN, no options (checksum 0).
pub fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut s = Vec::with_capacity(TCP_HLEN);
    s.extend(sport.to_be_bytes());
    s.extend(dport.to_be_bytes());
    s.extend(1u32.to_be_bytes()); // sequence number
    s.extend(0u32.to_be_bytes()); // acknowledgment number
    s.push(5 << 4); // data offset: 5 words
    s.push(0x02); // SYN
    s.extend(64240u16.to_be_bytes()); // window
    s.extend([0, 0, 0, 0]); // checksum, urgent pointer
    s
}

/// An IPv4 header; `write` and `build` fill in what is not overridden
/// consistently.
#[derive(Clone, Debug)]
pub struct V4 {
    pub version: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Identification.
    pub id: u16,
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
    /// A UDP header from `src` to [`DST_V4`] with DF set, as Linux sends
    /// small datagrams.
    pub fn new(src: [u8; 4]) -> Self {
        Self {
            version: 4,
            src,
            dst: DST_V4,
            id: 0x4842,
            options: Vec::new(),
            frag: IP_DF,
            proto: IPPROTO_UDP,
            ihl: None,
            total_len: None,
        }
    }

    /// The header's length: 20 bytes and the options.
    pub fn header_len(&self) -> usize {
        IPV4_HLEN + self.options.len()
    }

    /// Writes the header of a packet with `payload_len` bytes of payload,
    /// checksum included; returns its length.
    pub fn write(&self, buf: &mut [u8], payload_len: usize) -> usize {
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let hlen = self.header_len();
        let ihl = self.ihl.unwrap_or((hlen / 4) as u8);
        let total = self.total_len.unwrap_or((hlen + payload_len) as u16);
        let h = &mut buf[..hlen];
        h[0] = self.version << 4 | (ihl & 0x0f);
        h[1] = 0; // DSCP, ECN
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        h[6..8].copy_from_slice(&self.frag.to_be_bytes());
        h[8] = 64; // TTL
        h[9] = self.proto;
        h[10..12].copy_from_slice(&[0, 0]);
        h[12..16].copy_from_slice(&self.src);
        h[16..20].copy_from_slice(&self.dst);
        h[IPV4_HLEN..].copy_from_slice(&self.options);
        let sum = fold(sum_words(0, h));
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        hlen
    }

    /// The header and `payload`.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        build(self.header_len(), payload, |h| self.write(h, payload.len()))
    }
}

/// IPv4 options of `words` 32-bit words: NOPs ended by an end-of-list.
pub fn v4_options(words: usize) -> Vec<u8> {
    let mut o = vec![1u8; words * 4];
    if let Some(last) = o.last_mut() {
        *last = 0;
    }
    o
}

/// An IPv6 header with extension headers; `write` and `build` chain them.
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
    /// A UDP header from `src` to [`DST_V6`].
    pub fn new(src: [u8; 16]) -> Self {
        Self {
            version: 6,
            src,
            dst: DST_V6,
            ext: Vec::new(),
            proto: IPPROTO_UDP,
            payload_len: None,
        }
    }

    pub fn with_ext(mut self, ext: &[(u8, usize)]) -> Self {
        self.ext = ext.to_vec();
        self
    }

    /// The header's length, extension headers included.
    pub fn header_len(&self) -> usize {
        IPV6_HLEN + self.ext.iter().map(|&(_, len)| len).sum::<usize>()
    }

    /// Writes the header and its extension headers for `payload_len` bytes
    /// of upper-layer payload; returns their length.
    pub fn write(&self, buf: &mut [u8], payload_len: usize) -> usize {
        let ext_len = self.header_len() - IPV6_HLEN;
        let plen = self.payload_len.unwrap_or((ext_len + payload_len) as u16);
        let first = self.ext.first().map_or(self.proto, |&(kind, _)| kind);
        buf[0..4].copy_from_slice(&[self.version << 4, 0, 0, 0]);
        buf[4..6].copy_from_slice(&plen.to_be_bytes());
        buf[6] = first;
        buf[7] = 64; // hop limit
        buf[8..24].copy_from_slice(&self.src);
        buf[24..40].copy_from_slice(&self.dst);
        let mut at = IPV6_HLEN;
        for (i, &(kind, len)) in self.ext.iter().enumerate() {
            assert!(len >= 8 && len.is_multiple_of(8) && len <= 2048);
            let h = &mut buf[at..at + len];
            h[0] = self.ext.get(i + 1).map_or(self.proto, |&(k, _)| k);
            if kind == IPPROTO_FRAGMENT {
                // Reserved byte, then offset 0 with M set, identification.
                assert_eq!(len, 8);
                h[1..].copy_from_slice(&[0, 0, 1, 0, 0, 0x48, 0x42]);
            } else {
                h[1] = (len / 8 - 1) as u8;
                // Options area: one PadN covering it (routing: type 0,
                // segments left 0, then zeros).
                if kind == IPPROTO_ROUTING {
                    h[2..].fill(0);
                } else {
                    h[2] = 1;
                    h[3] = (len - 4) as u8;
                    h[4..].fill(0);
                }
            }
            at += len;
        }
        at
    }

    /// The header, its extension headers and `payload`.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        build(self.header_len(), payload, |h| self.write(h, payload.len()))
    }
}

/// An IPv6 address from its eight 16-bit groups.
pub const fn v6(segments: [u16; 8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 8 {
        let [hi, lo] = segments[i].to_be_bytes();
        a[2 * i] = hi;
        a[2 * i + 1] = lo;
        i += 1;
    }
    a
}

/// The canonical IPv4 heartbeat from `src`, 46 bytes untagged.
pub fn hb4(tpids: &[u16], src: [u8; 4]) -> Vec<u8> {
    eth(
        tpids,
        ETH_P_IPV4,
        &V4::new(src).build(&udp(SPORT, PORT, &MAGIC)),
    )
}

/// The canonical IPv6 heartbeat from `src`, 66 bytes untagged.
pub fn hb6(tpids: &[u16], src: [u8; 16]) -> Vec<u8> {
    eth(
        tpids,
        ETH_P_IPV6,
        &V6::new(src).build(&udp(SPORT, PORT, &MAGIC)),
    )
}

/// An untagged IPv4 UDP datagram from `src` to UDP port `port`.
pub fn ipv4_udp(src: [u8; 4], port: u16, payload: &[u8]) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IPV4,
        &V4::new(src).build(&udp(SPORT, port, payload)),
    )
}

/// An untagged IPv6 UDP datagram from `src` to UDP port `port`.
pub fn ipv6_udp(src: [u8; 16], port: u16, payload: &[u8]) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IPV6,
        &V6::new(src).build(&udp(SPORT, port, payload)),
    )
}

/// An untagged IPv4 TCP SYN from `src` to `port`.
pub fn ipv4_tcp(src: [u8; 4], port: u16) -> Vec<u8> {
    let ip = V4 {
        proto: IPPROTO_TCP,
        ..V4::new(src)
    };
    eth(&[], ETH_P_IPV4, &ip.build(&tcp_syn(SPORT, port)))
}

/// An ARP request (the payload after the EtherType): who has [`DST_V4`],
/// asks `sender` from [`SRC_MAC`].
pub fn arp_request(sender: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1]; // Ethernet, IPv4, 6, 4, request
    a.extend(SRC_MAC);
    a.extend(sender);
    a.extend([0; 6]); // target MAC: unknown
    a.extend(DST_V4);
    a
}

/// Padding (`fill`) up to the 60-byte Ethernet minimum (FCS not included).
pub fn padded(mut f: Vec<u8>, fill: u8) -> Vec<u8> {
    if f.len() < ETH_ZLEN {
        f.resize(ETH_ZLEN, fill);
    }
    f
}

/// A signed heartbeat's payload (see `hb_common::auth`), its MAC computed
/// by the reference SipHash-2-4 (the `siphasher` crate), not by hb's own
/// code; `version` as given, flags and reserved 0.
pub fn signed_with(key: &[u8; auth::KEY_LEN], version: u8, host_id: u64, seq: u64) -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&[version, 0, 0, 0]);
    p.extend_from_slice(&host_id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    let mac = siphasher::sip::SipHasher24::new_with_key(key).hash(&p);
    p.extend_from_slice(&mac.to_le_bytes());
    p
}

/// Overwrites the IPv4 source address of an untagged frame, and updates
/// the header checksum (RFC 1624: hb checks it).
#[inline]
pub fn set_ipv4_src(frame: &mut [u8], src: [u8; 4]) {
    const CHECKSUM: usize = ETH_HLEN + 10;
    let old = sum_words(0, &frame[IPV4_SRC_OFFSET..IPV4_SRC_OFFSET + 4]);
    let new = sum_words(0, &src);
    let hc = u16::from_be_bytes([frame[CHECKSUM], frame[CHECKSUM + 1]]);
    // HC' = ~(~HC + ~m + m'), m and m' the 16-bit words, folded.
    let mut sum = u32::from(!hc) + (0x1fffe - old) + new;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[CHECKSUM..CHECKSUM + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    frame[IPV4_SRC_OFFSET..IPV4_SRC_OFFSET + 4].copy_from_slice(&src);
}

/// The `i`-th distinct source address: 10.0.0.0/8 for the first 2^24, then
/// on through 11.0.0.0/8 and up.
#[inline]
pub fn src_addr(i: u32) -> [u8; 4] {
    (0x0a00_0000u32.wrapping_add(i)).to_be_bytes()
}

/// The frame in hex, for failure messages.
pub fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where [`write_udp`]'s frames go: the MACs, and the destination address
/// of each family.
#[derive(Clone, Copy, Debug)]
pub struct Ends {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub dst_v4: Ipv4Addr,
    pub dst_v6: Ipv6Addr,
}

/// Writes a UDP datagram from `src` (port [`SPORT`]) to `ends`' address of
/// the same family, UDP port `port`, carrying `payload`, into `buf`; returns
/// the frame's length. Valid enough for the kernel's stack (IPv4 header
/// checksum, lengths): IPv4 datagrams carry no UDP checksum (0 is allowed),
/// IPv6 ones the real one, which IPv6 requires. Allocates nothing: the load
/// generator writes every frame it sends with it.
pub fn write_udp(buf: &mut [u8], ends: &Ends, src: IpAddr, port: u16, payload: &[u8]) -> usize {
    assert!(payload.len() <= MAX_PAYLOAD, "payload too long");
    let udp_len = UDP_HLEN + payload.len();
    let l4 = match src {
        IpAddr::V4(src) => {
            let at = write_eth(buf, ends.dst_mac, ends.src_mac, &[], ETH_P_IPV4);
            let ip = V4 {
                dst: ends.dst_v4.octets(),
                id: 0,
                ..V4::new(src.octets())
            };
            at + ip.write(&mut buf[at..], udp_len)
        }
        IpAddr::V6(src) => {
            let at = write_eth(buf, ends.dst_mac, ends.src_mac, &[], ETH_P_IPV6);
            let ip = V6 {
                dst: ends.dst_v6.octets(),
                ..V6::new(src.octets())
            };
            at + ip.write(&mut buf[at..], udp_len)
        }
    };
    let end = l4 + udp_len;
    write_udp_header(&mut buf[l4..], SPORT, port, udp_len as u16);
    buf[l4 + UDP_HLEN..end].copy_from_slice(payload);
    if let IpAddr::V6(src) = src {
        // Pseudo-header: addresses, upper-layer length, next header.
        let mut sum = sum_words(0, &src.octets());
        sum = sum_words(sum, &ends.dst_v6.octets());
        sum += udp_len as u32 + u32::from(IPPROTO_UDP);
        let csum = match fold(sum_words(sum, &buf[l4..end])) {
            0 => 0xffff, // 0 means "no checksum", which IPv6 forbids
            c => c,
        };
        buf[l4 + 6..l4 + 8].copy_from_slice(&csum.to_be_bytes());
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Is this ones' complement sum over `data` (checksum field included) valid?
    fn verifies(sum: u32, data: &[u8]) -> bool {
        fold(sum_words(sum, data)) == 0
    }

    /// The load test's ends (see hb-benches' topology).
    const ENDS: Ends = Ends {
        dst_mac: [0x02, 0x48, 0x42, 0, 0, 0x01],
        src_mac: [0x02, 0x48, 0x42, 0, 0, 0x02],
        dst_v4: Ipv4Addr::new(198, 18, 0, 1),
        dst_v6: Ipv6Addr::new(0xfd00, 0x4842, 0, 0, 0, 0, 0, 1),
    };

    #[test]
    fn lengths_are_consistent() {
        let f = hb4(&[], [10, 0, 0, 1]);
        assert_eq!(f.len(), 46);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 32); // IPv4 total
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 12); // UDP length
        assert_eq!(&f[42..], b"PyHB");
        let t = ipv4_tcp([10, 0, 0, 1], 80);
        assert_eq!(t.len(), 54);
        assert_eq!(u16::from_be_bytes([t[16], t[17]]), 40);
        assert_eq!(
            padded(eth(&[], ETH_P_ARP, &arp_request([198, 18, 0, 2])), 0).len(),
            60
        );
        let mut f = f;
        set_ipv4_src(&mut f, src_addr(0x01_0203));
        assert_eq!(f, hb4(&[], [10, 1, 2, 3]), "checksum updated");
        assert_eq!(&f[26..30], &[10, 1, 2, 3]);
    }

    #[test]
    fn ipv4_heartbeat() {
        let mut buf = [0u8; MAX_FRAME];
        let n = write_udp(&mut buf, &ENDS, "10.1.2.3".parse().unwrap(), 43278, b"PyHB");
        let f = &buf[..n];
        assert_eq!(n, 46);
        assert_eq!(&f[0..6], &ENDS.dst_mac);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 32);
        assert!(verifies(0, &f[14..34]), "IPv4 header checksum");
        assert_eq!(&f[26..30], &[10, 1, 2, 3]);
        assert_eq!(&f[30..34], &[198, 18, 0, 1]);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 43278);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 12);
        assert_eq!(&f[42..], b"PyHB");
        // Computed independently (Python, RFC 1071).
        assert_eq!(&f[24..26], &[0x68, 0xb6]);
        // The same frame as the Vec builders', but for the MACs (and with
        // identification 0, as the generator sends).
        let ip = V4 {
            id: 0,
            ..V4::new([10, 1, 2, 3])
        };
        let mut theirs = eth(&[], ETH_P_IPV4, &ip.build(&udp(SPORT, 43278, &MAGIC)));
        theirs[0..6].copy_from_slice(&ENDS.dst_mac);
        theirs[6..12].copy_from_slice(&ENDS.src_mac);
        assert_eq!(f, &theirs[..]);
    }

    #[test]
    fn ipv6_udp_checksum() {
        let mut buf = [0u8; MAX_FRAME];
        let src: Ipv6Addr = "fd00:4842:1::abcd".parse().unwrap();
        for payload in [&b"PyHB"[..], b"", b"x", b"junk junk junk!"] {
            let n = write_udp(&mut buf, &ENDS, IpAddr::V6(src), 43278, payload);
            let f = &buf[..n];
            assert_eq!(n, 14 + 40 + 8 + payload.len());
            assert_eq!(
                u16::from_be_bytes([f[18], f[19]]) as usize,
                8 + payload.len()
            );
            let mut pseudo = sum_words(0, &f[22..54]);
            pseudo += (8 + payload.len()) as u32 + 17;
            assert!(verifies(pseudo, &f[54..]), "UDP checksum of {payload:?}");
            assert_ne!(&f[60..62], &[0, 0]);
        }
        // Computed independently (Python, RFC 1071 over the pseudo-header).
        let n = write_udp(&mut buf, &ENDS, IpAddr::V6(src), 43278, b"PyHB");
        assert_eq!(&buf[n - 6..n - 4], &[0xeb, 0x75]);
    }
}
