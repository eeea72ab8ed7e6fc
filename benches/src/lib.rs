//! Helpers shared by the benchmarks in `benches/`: test frames for
//! BPF_PROG_TEST_RUN, source addresses, and the kernel memory of BPF maps.
//!
//! Frames are Ethernet (14 bytes) + IPv4 (20) + UDP (8) + payload, with
//! consistent IPv4 total and UDP lengths; checksums are left at 0 (the XDP
//! program does not check them).

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
};

use hb_common::MAGIC;

pub mod load;

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const TCP_HLEN: usize = 20;
/// Offset of the IPv4 source address in the frames built here.
pub const IPV4_SRC_OFFSET: usize = ETH_HLEN + 12;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPV6_HLEN: usize = 40;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Destination of every frame (TEST-NET-2 style benchmarking range).
const DST: [u8; 4] = [198, 18, 0, 1];

/// XDP verdicts, as returned by BPF_PROG_TEST_RUN.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

fn ethernet(frame: &mut Vec<u8>, ethertype: u16) {
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // destination MAC
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // source MAC
    frame.extend_from_slice(&ethertype.to_be_bytes());
}

fn ipv4_header(frame: &mut Vec<u8>, src: [u8; 4], protocol: u8, l4_len: usize) {
    let total = u16::try_from(IPV4_HLEN + l4_len).expect("IPv4 datagram too long");
    frame.push(0x45); // version 4, IHL 5
    frame.push(0); // DSCP / ECN
    frame.extend_from_slice(&total.to_be_bytes());
    frame.extend_from_slice(&[0, 0]); // identification
    frame.extend_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
    frame.push(64); // TTL
    frame.push(protocol);
    frame.extend_from_slice(&[0, 0]); // header checksum (not checked)
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&DST);
}

/// An IPv4 UDP datagram from `src` to UDP port `port` carrying `payload`.
pub fn ipv4_udp(src: [u8; 4], port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = UDP_HLEN + payload.len();
    let mut f = Vec::with_capacity(ETH_HLEN + IPV4_HLEN + udp_len);
    ethernet(&mut f, ETH_P_IPV4);
    ipv4_header(&mut f, src, IPPROTO_UDP, udp_len);
    f.extend_from_slice(&40000u16.to_be_bytes()); // source port
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
    f.extend_from_slice(&[0, 0]); // checksum: none
    f.extend_from_slice(payload);
    f
}

/// An IPv6 UDP datagram from `src` (2001:db8::/32 documentation range) to
/// UDP port `port` carrying `payload`.
pub fn ipv6_udp(src: [u8; 16], port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = u16::try_from(UDP_HLEN + payload.len()).expect("UDP datagram too long");
    let mut f = Vec::with_capacity(ETH_HLEN + IPV6_HLEN + usize::from(udp_len));
    ethernet(&mut f, ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class, no flow
    f.extend_from_slice(&udp_len.to_be_bytes()); // payload length
    f.push(IPPROTO_UDP); // next header
    f.push(64); // hop limit
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&40000u16.to_be_bytes()); // source port
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]); // checksum (not checked)
    f.extend_from_slice(payload);
    f
}

/// `frame` with an 802.1Q tag (VLAN `vid`) inserted after the MAC addresses.
pub fn vlan_tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame.len() + 4);
    f.extend_from_slice(&frame[..12]);
    f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// `frame` (untagged IPv4, as built here) with 4 bytes of IPv4 options
/// (no-ops) after its 20-byte header: IHL 6, total length adjusted.
pub fn with_ipv4_options(frame: &[u8]) -> Vec<u8> {
    let ip = ETH_HLEN;
    assert_eq!(frame[ip], 0x45, "not IPv4 without options");
    let mut f = Vec::with_capacity(frame.len() + 4);
    f.extend_from_slice(&frame[..ip + IPV4_HLEN]);
    f.extend_from_slice(&[1, 1, 1, 0]); // NOP, NOP, NOP, end of options
    f.extend_from_slice(&frame[ip + IPV4_HLEN..]);
    f[ip] = 0x46;
    let total = u16::from_be_bytes([f[ip + 2], f[ip + 3]]) + 4;
    f[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    f
}

/// A heartbeat (`PyHB`) from `src` to UDP port `port`: 46 bytes.
pub fn ipv4_heartbeat(src: [u8; 4], port: u16) -> Vec<u8> {
    ipv4_udp(src, port, &MAGIC)
}

/// An IPv4 TCP segment (bare SYN, no options) from `src` to `port`.
pub fn ipv4_tcp(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + IPV4_HLEN + TCP_HLEN);
    ethernet(&mut f, ETH_P_IPV4);
    ipv4_header(&mut f, src, IPPROTO_TCP, TCP_HLEN);
    f.extend_from_slice(&40000u16.to_be_bytes()); // source port
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes()); // sequence number
    f.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment number
    f.push(5 << 4); // data offset: 5 words
    f.push(0x02); // SYN
    f.extend_from_slice(&64240u16.to_be_bytes()); // window
    f.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    f
}

/// An ARP request (who-has 198.18.0.1), padded to the 60-byte Ethernet minimum.
pub fn arp() -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]); // broadcast
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&ETH_P_IPV4.to_be_bytes()); // protocol: IPv4
    f.push(6); // hardware address length
    f.push(4); // protocol address length
    f.extend_from_slice(&1u16.to_be_bytes()); // request
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // sender MAC
    f.extend_from_slice(&[198, 18, 0, 2]); // sender IP
    f.extend_from_slice(&[0; 6]); // target MAC
    f.extend_from_slice(&DST); // target IP
    f.resize(60, 0);
    f
}

/// Overwrites the IPv4 source address of a frame built by this module.
#[inline]
pub fn set_ipv4_src(frame: &mut [u8], src: [u8; 4]) {
    frame[IPV4_SRC_OFFSET..IPV4_SRC_OFFSET + 4].copy_from_slice(&src);
}

/// The `i`-th distinct source address: 10.0.0.0/8 for the first 2^24, then
/// on through 11.0.0.0/8 and up (enough for any benchmark here).
#[inline]
pub fn src_addr(i: u32) -> [u8; 4] {
    (0x0a00_0000u32.wrapping_add(i)).to_be_bytes()
}

/// One BPF map, with the kernel memory it uses.
#[derive(Debug, Clone)]
pub struct MapMemory {
    pub id: u32,
    /// Name as the kernel knows it (truncated to 15 bytes), if found.
    pub name: String,
    pub map_type: u32,
    pub max_entries: u64,
    /// Kernel memory charged to the map ("memlock:" in its fdinfo), bytes.
    pub memlock: u64,
}

/// Reads a map's figures from `/proc/self/fdinfo/<fd>`; `None` if `fd` is
/// not a BPF map.
fn map_fdinfo(fd: &str) -> Option<MapMemory> {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let field = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let id = field("map_id:")? as u32;
    Some(MapMemory {
        id,
        name: aya::maps::MapInfo::from_id(id)
            .ok()
            .and_then(|info| info.name_as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into()),
        map_type: field("map_type:")? as u32,
        max_entries: field("max_entries:").unwrap_or(0),
        memlock: field("memlock:")?,
    })
}

/// Every map `progs` use, plus every map this process holds an fd to, each
/// once. Both sources are needed: maps that are only mmapped (the table's
/// arrays, whose fds hb closes after mapping them) have no fd left, and a
/// map no program uses would not be among the programs' maps.
pub fn maps_in_use(progs: &[&aya::programs::Xdp]) -> Result<Vec<MapMemory>, String> {
    let mut ids = Vec::new();
    for prog in progs {
        let info = prog.info().map_err(|e| format!("program info: {e}"))?;
        let map_ids = info
            .map_ids()
            .map_err(|e| format!("program map ids: {e}"))?
            .ok_or("this kernel does not list a program's maps")?;
        ids.extend(map_ids);
    }
    let mut maps: Vec<MapMemory> = Vec::new();
    let mut add = |m: MapMemory| {
        if !maps.iter().any(|o| o.id == m.id) {
            maps.push(m);
        }
    };
    for id in ids {
        // A fresh fd for the map, read while it is open.
        let data = aya::maps::MapData::from_id(id).map_err(|e| format!("map {id}: {e}"))?;
        let fd = data.fd().as_fd().as_raw_fd();
        add(map_fdinfo(&fd.to_string()).ok_or(format!("map {id}: no fdinfo"))?);
    }
    let dir = fs::read_dir("/proc/self/fd").map_err(|e| format!("/proc/self/fd: {e}"))?;
    for entry in dir.flatten() {
        if let Some(m) = map_fdinfo(&entry.file_name().to_string_lossy()) {
            add(m);
        }
    }
    maps.sort_by_key(|m| m.id);
    Ok(maps)
}

/// Name of a `bpf_map_type` number (the ones hb uses).
pub fn map_type_name(t: u32) -> String {
    match t {
        1 => "hash".into(),
        2 => "array".into(),
        6 => "percpu_array".into(),
        27 => "ringbuf".into(),
        t => format!("type {t}"),
    }
}

/// Formats nanoseconds with a unit that keeps 3-4 significant digits.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.2} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_consistent() {
        let f = ipv4_heartbeat([10, 0, 0, 1], 43278);
        assert_eq!(f.len(), 46);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 32); // IPv4 total
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 12); // UDP length
        assert_eq!(&f[42..], b"PyHB");
        let t = ipv4_tcp([10, 0, 0, 1], 80);
        assert_eq!(t.len(), 54);
        assert_eq!(u16::from_be_bytes([t[16], t[17]]), 40);
        assert_eq!(arp().len(), 60);
        let mut f = f;
        set_ipv4_src(&mut f, src_addr(0x01_0203));
        assert_eq!(&f[26..30], &[10, 1, 2, 3]);
    }
}
