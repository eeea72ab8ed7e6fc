//! Frames of simulated hosts: Ethernet + IPv4/IPv6 + UDP, valid enough for
//! the kernel's own stack (IPv4 header checksum, lengths, UDP checksum for
//! IPv6), so the same traffic serves the XDP path and a UDP socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// MAC of the collector's end of the veth pair (set by the topology).
pub const COLLECTOR_MAC: [u8; 6] = [0x02, 0x48, 0x42, 0, 0, 0x01];
/// MAC of the generator's end.
pub const GENERATOR_MAC: [u8; 6] = [0x02, 0x48, 0x42, 0, 0, 0x02];
/// The collector's addresses, held by its end of the veth pair.
pub const COLLECTOR_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const COLLECTOR_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x4842, 0, 0, 0, 0, 0, 1);
/// Source port of every datagram.
const SRC_PORT: u16 = 40000;

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const IPPROTO_UDP: u8 = 17;
/// Largest payload [`udp`] writes.
pub const MAX_PAYLOAD: usize = 64;
/// Room for any frame built here.
pub const MAX_FRAME: usize = ETH_HLEN + IPV6_HLEN + UDP_HLEN + MAX_PAYLOAD;

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

/// Writes a UDP datagram from `src` (port 40000) to the collector's address
/// of the same family, UDP port `port`, carrying `payload`, into `buf`;
/// returns the frame's length. IPv4 datagrams carry no UDP checksum (0 is
/// allowed); IPv6 ones carry the real one, which IPv6 requires.
pub fn udp(buf: &mut [u8], src: IpAddr, port: u16, payload: &[u8]) -> usize {
    assert!(payload.len() <= MAX_PAYLOAD, "payload too long");
    let udp_len = (UDP_HLEN + payload.len()) as u16;
    buf[0..6].copy_from_slice(&COLLECTOR_MAC);
    buf[6..12].copy_from_slice(&GENERATOR_MAC);
    let l4 = match src {
        IpAddr::V4(src) => {
            buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let ip = &mut buf[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
            ip[0] = 0x45; // version 4, 5 words
            ip[1] = 0;
            ip[2..4].copy_from_slice(&(IPV4_HLEN as u16 + udp_len).to_be_bytes());
            ip[4..6].copy_from_slice(&[0, 0]); // identification
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
            ip[8] = 64; // TTL
            ip[9] = IPPROTO_UDP;
            ip[10..12].copy_from_slice(&[0, 0]);
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&COLLECTOR_V4.octets());
            let csum = fold(sum_words(0, ip));
            ip[10..12].copy_from_slice(&csum.to_be_bytes());
            ETH_HLEN + IPV4_HLEN
        }
        IpAddr::V6(src) => {
            buf[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let ip = &mut buf[ETH_HLEN..ETH_HLEN + IPV6_HLEN];
            ip[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
            ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
            ip[6] = IPPROTO_UDP;
            ip[7] = 64; // hop limit
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&COLLECTOR_V6.octets());
            ETH_HLEN + IPV6_HLEN
        }
    };
    let end = l4 + UDP_HLEN + payload.len();
    {
        let u = &mut buf[l4..end];
        u[0..2].copy_from_slice(&SRC_PORT.to_be_bytes());
        u[2..4].copy_from_slice(&port.to_be_bytes());
        u[4..6].copy_from_slice(&udp_len.to_be_bytes());
        u[6..8].copy_from_slice(&[0, 0]);
        u[UDP_HLEN..].copy_from_slice(payload);
    }
    if let IpAddr::V6(src) = src {
        // Pseudo-header: addresses, upper-layer length, next header.
        let mut sum = sum_words(0, &src.octets());
        sum = sum_words(sum, &COLLECTOR_V6.octets());
        sum += u32::from(udp_len) + u32::from(IPPROTO_UDP);
        let csum = match fold(sum_words(sum, &buf[l4..end])) {
            0 => 0xffff, // 0 means "no checksum", which IPv6 forbids
            c => c,
        };
        buf[l4 + 6..l4 + 8].copy_from_slice(&csum.to_be_bytes());
    }
    end
}

/// Is this ones' complement sum over `data` (checksum field included) valid?
#[cfg(test)]
fn verifies(sum: u32, data: &[u8]) -> bool {
    fold(sum_words(sum, data)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_heartbeat() {
        let mut buf = [0u8; MAX_FRAME];
        let n = udp(&mut buf, "10.1.2.3".parse().unwrap(), 43278, b"PyHB");
        let f = &buf[..n];
        assert_eq!(n, 46);
        assert_eq!(&f[0..6], &COLLECTOR_MAC);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 32);
        assert!(verifies(0, &f[14..34]), "IPv4 header checksum");
        assert_eq!(&f[26..30], &[10, 1, 2, 3]);
        assert_eq!(&f[30..34], &[198, 18, 0, 1]);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 43278);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 12);
        assert_eq!(&f[42..], b"PyHB");
        // Computed independently (Python, RFC 1071).
        assert_eq!(&f[24..26], &[0x68, 0xb6]);
        // The same frame as the benchmarks' builder, but for the checksum.
        let mut theirs = crate::ipv4_heartbeat([10, 1, 2, 3], 43278);
        theirs[0..6].copy_from_slice(&COLLECTOR_MAC);
        theirs[6..12].copy_from_slice(&GENERATOR_MAC);
        theirs[24..26].copy_from_slice(&f[24..26]);
        assert_eq!(f, &theirs[..]);
    }

    #[test]
    fn ipv6_udp_checksum() {
        let mut buf = [0u8; MAX_FRAME];
        let src: Ipv6Addr = "fd00:4842:1::abcd".parse().unwrap();
        for payload in [&b"PyHB"[..], b"", b"x", b"junk junk junk!"] {
            let n = udp(&mut buf, IpAddr::V6(src), 43278, payload);
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
        let n = udp(&mut buf, IpAddr::V6(src), 43278, b"PyHB");
        assert_eq!(&buf[n - 6..n - 4], &[0xeb, 0x75]);
    }
}
