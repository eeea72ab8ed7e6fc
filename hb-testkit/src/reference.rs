//! The reference: what the XDP program should make of any frame, and what
//! its table should then hold, in plain Rust. It is written from hb's
//! definitions, not from the program: the README's packet counters,
//! docs/design.md ("What the XDP program accepts", "Signed heartbeats in the
//! XDP program") and docs/wire-format.md, with the protocol numbers of the
//! RFCs written out here as literals (nothing from `hb_common::net`), and
//! MACs computed by the `siphasher` crate, not by hb's SipHash. The packet
//! tests check it against each of their cases, and the fuzz test checks the
//! program against it over a million frames in every authentication mode.
//!
//! # The rules
//!
//! A frame is read outside in: Ethernet (at most two 802.1Q/802.1ad tags),
//! IPv4 or IPv6, UDP, the payload. Where the definitions overlap, these
//! rules decide, each the simplest one that reads them consistently:
//!
//! 1. **The first header that rules the frame out decides**, and a header is
//!    judged only once the bytes it is judged on are all in the frame;
//!    otherwise the frame is `truncated` ("the frame ends inside a
//!    header"). Those bytes are: Ethernet's 14 and each tag's 4; IPv4's
//!    fixed 20 (options are skipped over, never read); IPv6's fixed 40; the
//!    first 2 of each walked extension header (next header, length: its
//!    body is skipped over); UDP's 8; and the payload, only when the length
//!    fields admit a heartbeat at all.
//! 2. **Not a valid IP header is `not_ip`:** an EtherType that is neither
//!    IPv4 nor IPv6 (after the tags), a version nibble that contradicts the
//!    EtherType, and an IPv4 header length (IHL) below 5 words, which no
//!    IPv4 header has (RFC 791; the kernel drops both the same way). An IHL
//!    below 5 is not `truncated`: the frame does not end anywhere.
//! 3. **A fragment is `fragment` whatever it carries:** IPv4 with MF or a
//!    fragment offset, UDP or not (an IPv6 fragment header hides the
//!    protocol behind it, and both families count alike). Only then is the
//!    protocol looked at: not UDP is `not_udp`.
//! 4. **IPv6 extension headers:** up to four hop-by-hop (0), routing (43) or
//!    destination-options (60) headers are walked, in any order (the docs
//!    name no order), each `(length byte + 1) * 8` bytes long (RFC 8200). A
//!    fragment header (44) met on the walk or right after it is `fragment`;
//!    a fifth walkable header, or any other header (AH, ESP, ...), is one
//!    "hb does not walk": `not_udp`.
//! 5. **The port before the lengths:** UDP to another port is `other_port`
//!    whatever its lengths. To the port, the payload's length is what the
//!    UDP length field and the IP length field (IPv4 total length minus the
//!    header, IPv6 payload length minus the extension headers) both say; if
//!    they disagree, or the length is not one a heartbeat may have (4 bytes;
//!    32 too with a key), it is `wrong_payload` without a look at the
//!    payload, "like any other payload". Bytes after the datagram
//!    (Ethernet padding) never matter.
//! 6. **Then the addressing, outside in** (docs/design.md, "What the XDP
//!    program accepts"): an IPv4 header whose checksum (RFC 1071, over the
//!    whole header, options included) is wrong is `bad_checksum`; then,
//!    unless `--any-destination`, a destination MAC that is neither the
//!    interface's nor a group MAC (lowest bit of the first byte), or a
//!    destination address that is not one of the collector's (IPv6 to an
//!    IPv4-mapped address is to none), is `not_for_us`; then a source no host has is `bad_source`: IPv4
//!    0.0.0.0/8, 127.0.0.0/8, 224.0.0.0/4, 255.255.255.255; IPv6 ::/96
//!    (unspecified, loopback, IPv4-compatible), ::ffff:0:0/96 (IPv4-mapped),
//!    ff00::/8 (multicast). This holds for signed and bare heartbeats, in
//!    every mode.
//! 7. **A signed heartbeat** (with a key, 32 bytes starting with `PyHB`):
//!    version 1, flags 0 and reserved 0, and a MAC that verifies, or it is
//!    `forged`; then `replayed` unless its sequence number is newer than its
//!    host id's last accepted one (the table decides, see [`Table`]). 32
//!    bytes not starting with `PyHB` are no heartbeat: `wrong_payload`.
//! 8. **A bare `PyHB`** under `--require-auth` is `unauthenticated`.
//!
//! `heartbeat`, `table_full`, `bad_source`, `forged`, `replayed` and
//! `unauthenticated` frames are dropped (passed with `--pass-heartbeats`);
//! all others pass.

use std::collections::HashMap;

use hb_common::{Counter, HostKey};
use siphasher::sip::SipHasher24;

/// The heartbeat payload of a classic client.
const MAGIC: &[u8; 4] = b"PyHB";
/// UDP header length.
const UDP_HEADER: usize = 8;
/// Payload lengths of the classic and the signed heartbeat.
const BARE_LEN: usize = 4;
const SIGNED_LEN: usize = 32;

/// How the program is configured, as far as judging frames goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No key: `PyHB` only.
    Off,
    /// `--key-file`: signed heartbeats verified under this key, bare `PyHB`
    /// still accepted.
    Optional([u8; 16]),
    /// `--key-file --require-auth`: bare `PyHB` is `unauthenticated`.
    Required([u8; 16]),
}

impl Auth {
    fn key(&self) -> Option<&[u8; 16]> {
        match self {
            Auth::Off => None,
            Auth::Optional(k) | Auth::Required(k) => Some(k),
        }
    }
}

/// Where the collector is: which heartbeats are addressed to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dest {
    /// `--any-destination`: every heartbeat is.
    pub any: bool,
    /// The interface's MAC.
    pub mac: [u8; 6],
    /// The addresses of its network namespace (IPv4 as `::ffff:a.b.c.d`).
    pub addrs: Vec<[u8; 16]>,
}

impl Dest {
    /// `--any-destination`.
    pub fn any() -> Self {
        Self {
            any: true,
            mac: [0; 6],
            addrs: Vec::new(),
        }
    }
}

/// What one frame is, judged on its own (before the table has its say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// Counted here; nothing else changes.
    Counted(Counter),
    /// A classic heartbeat from this source address (IPv4 as
    /// `::ffff:a.b.c.d`).
    Bare([u8; 16]),
    /// A signed heartbeat whose MAC verifies, sent from `src`.
    Signed {
        host_id: u64,
        seq: u64,
        src: [u8; 16],
    },
}

/// What a correct program makes of `f` with heartbeats on `port`, under
/// `auth`, for the collector at `dest`; see the [rules](self).
pub fn judge(f: &[u8], port: u16, auth: Auth, dest: &Dest) -> Judged {
    match walk(f, port, auth, dest) {
        Ok(j) | Err(j) => j,
    }
}

/// As [`judge`] without a key: the source of a heartbeat, or its counter.
pub fn classify(f: &[u8], port: u16, dest: &Dest) -> Result<HostKey, Counter> {
    match judge(f, port, Auth::Off, dest) {
        Judged::Bare(addr) => Ok(HostKey { addr }),
        Judged::Counted(c) => Err(c),
        Judged::Signed { .. } => unreachable!("no key, no signed heartbeats"),
    }
}

/// Whether a frame counted `c` is dropped (without `--pass-heartbeats`).
pub fn dropped(c: Counter) -> bool {
    matches!(
        c,
        Counter::Heartbeat
            | Counter::TableFull
            | Counter::BadSource
            | Counter::Forged
            | Counter::Replayed
            | Counter::Unauthenticated
    )
}

/// Outcomes of signed heartbeats and loss accounting, which a program
/// without a key never reaches.
pub fn auth_only(c: Counter) -> bool {
    matches!(
        c,
        Counter::Forged | Counter::Replayed | Counter::Unauthenticated | Counter::Lost
    )
}

/// Reads the frame; `Err` is a decision reached on the way.
type Step<T> = Result<T, Judged>;

fn counted(c: Counter) -> Judged {
    Judged::Counted(c)
}

/// `n` bytes at `at`, or the frame ends inside them.
fn bytes(f: &[u8], at: usize, n: usize) -> Step<&[u8]> {
    f.get(at..at + n).ok_or(counted(Counter::Truncated))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Where the IP layer ends: the source address, the UDP header's offset,
/// and the UDP length the IP header implies (negative if it says less than
/// its own headers).
struct Ip {
    src: [u8; 16],
    dst: [u8; 16],
    /// IPv4: whether the header checksum is right (IPv6 has none).
    checksum_ok: bool,
    /// A source no host has (rule 6).
    bad_src: bool,
    udp_at: usize,
    ip_udp_len: i64,
}

fn walk(f: &[u8], port: u16, auth: Auth, dest: &Dest) -> Step<Judged> {
    // Ethernet: destination, source, then the EtherType or up to two tags.
    let mut at = 12;
    let mut ethertype = be16(bytes(f, at, 2)?, 0);
    at += 2;
    for _ in 0..2 {
        // 802.1Q and 802.1ad: a 2-byte TCI, then the next EtherType.
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        ethertype = be16(bytes(f, at, 4)?, 2);
        at += 4;
    }
    let ip = match ethertype {
        0x0800 => ipv4(f, at)?,
        0x86dd => ipv6(f, at)?,
        _ => return Err(counted(Counter::NotIp)),
    };
    let payload = payload(f, &ip, port, auth)?;
    if !ip.checksum_ok {
        return Err(counted(Counter::BadChecksum));
    }
    let group = f[0] & 1 != 0;
    if !dest.any && (!(group || f[..6] == dest.mac) || !dest.addrs.contains(&ip.dst)) {
        return Err(counted(Counter::NotForUs));
    }
    if ip.bad_src {
        return Err(counted(Counter::BadSource));
    }
    Ok(heartbeat(payload, ip.src, auth))
}

fn ipv4(f: &[u8], at: usize) -> Step<Ip> {
    let h = bytes(f, at, 20)?;
    let (version, words) = (h[0] >> 4, usize::from(h[0] & 0xf));
    if version != 4 || words < 5 {
        return Err(counted(Counter::NotIp));
    }
    // Flags (reserved, DF, MF) and the 13-bit fragment offset.
    let more_fragments = h[6] & 0x20 != 0;
    let offset = be16(h, 6) & 0x1fff;
    if more_fragments || offset != 0 {
        return Err(counted(Counter::Fragment));
    }
    if h[9] != 17 {
        return Err(counted(Counter::NotUdp));
    }
    let mapped = |a: &[u8]| {
        let mut m = [0u8; 16];
        m[10..12].copy_from_slice(&[0xff, 0xff]);
        m[12..].copy_from_slice(a);
        m
    };
    // RFC 1071: the ones' complement sum of the header's 16-bit words,
    // options included (read only once the UDP header behind them is known
    // to be in the frame: a frame cut short is judged before).
    let checksum_ok = f.get(at..at + words * 4).is_some_and(|header| {
        let mut sum: u32 = header.chunks(2).map(|w| u32::from(be16(w, 0))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    });
    let s = &h[12..16];
    let bad_src = s[0] == 0 || s[0] == 127 || s[0] >> 4 == 0xe || s == [255; 4];
    Ok(Ip {
        src: mapped(s),
        dst: mapped(&h[16..20]),
        checksum_ok,
        bad_src,
        udp_at: at + words * 4,
        ip_udp_len: i64::from(be16(h, 2)) - (words * 4) as i64,
    })
}

fn ipv6(f: &[u8], at: usize) -> Step<Ip> {
    let h = bytes(f, at, 40)?;
    if h[0] >> 4 != 6 {
        return Err(counted(Counter::NotIp));
    }
    let mut next = h[6];
    let mut l4 = at + 40;
    let mut walked = 0;
    while matches!(next, 0 | 43 | 60) {
        if walked == 4 {
            // A fifth: hb does not walk it.
            return Err(counted(Counter::NotUdp));
        }
        let e = bytes(f, l4, 2)?;
        next = e[0];
        l4 += (usize::from(e[1]) + 1) * 8;
        walked += 1;
    }
    match next {
        17 => {}
        44 => return Err(counted(Counter::Fragment)),
        _ => return Err(counted(Counter::NotUdp)),
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&h[24..40]);
    // IPv6 to an IPv4-mapped address is to no address of the collector's.
    if dst[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        dst = [0; 16];
    }
    let compatible = src[..12] == [0; 12];
    let mapped = src[..10] == [0; 10] && src[10..12] == [0xff, 0xff];
    Ok(Ip {
        src,
        dst,
        checksum_ok: true,
        bad_src: src[0] == 0xff || compatible || mapped,
        udp_at: l4,
        ip_udp_len: i64::from(be16(h, 4)) - (l4 - (at + 40)) as i64,
    })
}

/// The UDP datagram's payload, if it may be a heartbeat's.
fn payload<'f>(f: &'f [u8], ip: &Ip, port: u16, auth: Auth) -> Step<&'f [u8]> {
    let u = bytes(f, ip.udp_at, UDP_HEADER)?;
    if be16(u, 2) != port {
        return Err(counted(Counter::OtherPort));
    }
    let udp_len = i64::from(be16(u, 4));
    let len = udp_len - UDP_HEADER as i64;
    let admitted = len == BARE_LEN as i64 || (auth.key().is_some() && len == SIGNED_LEN as i64);
    if udp_len != ip.ip_udp_len || !admitted {
        return Err(counted(Counter::WrongPayload));
    }
    let p = bytes(f, ip.udp_at + UDP_HEADER, len as usize)?;
    if &p[..4] != MAGIC {
        return Err(counted(Counter::WrongPayload));
    }
    Ok(p)
}

/// A payload that starts with `PyHB` and has a heartbeat's length, from
/// `src`.
fn heartbeat(p: &[u8], src: [u8; 16], auth: Auth) -> Judged {
    if let Some(key) = auth.key()
        && p.len() == SIGNED_LEN
    {
        return signed(p, src, key);
    }
    if matches!(auth, Auth::Required(_)) {
        return counted(Counter::Unauthenticated);
    }
    Judged::Bare(src)
}

/// The signed heartbeat, version 1 (docs/wire-format.md): big-endian
/// fields, the MAC SipHash-2-4 of bytes 0..24, written little-endian.
fn signed(p: &[u8], src: [u8; 16], key: &[u8; 16]) -> Judged {
    let (version, flags, reserved) = (p[4], p[5], be16(p, 6));
    let mac = SipHasher24::new_with_key(key).hash(&p[..24]);
    if version != 1 || flags != 0 || reserved != 0 || p[24..32] != mac.to_le_bytes() {
        return counted(Counter::Forged);
    }
    let word = |at: usize| u64::from_be_bytes(p[at..at + 8].try_into().unwrap());
    Judged::Signed {
        host_id: word(8),
        seq: word(16),
        src,
    }
}

/// Who a slot belongs to: a classic host by its address, a signed one by
/// its host id (which never equals an address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    Addr([u8; 16]),
    HostId(u64),
}

/// What the table holds for one host id (docs/wire-format.md, "Sequence
/// numbers").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replay {
    /// The last accepted sequence number.
    pub seq: u64,
    /// Heartbeats missing from the client's count (docs/wire-format.md).
    pub lost: u64,
    /// Where the last accepted heartbeat came from.
    pub src: [u8; 16],
}

/// One slot of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub owner: Owner,
    /// Heartbeats recorded (the table's count is a wrapping `u32`).
    pub beats: u32,
    /// For a host id.
    pub replay: Option<Replay>,
}

/// What the table does with a judged frame (docs/design.md, "How the table
/// works"): a known host's heartbeat is recorded in its slot; a new host
/// takes the next slot while there is one, and is refused (`table_full`)
/// after, a bare one also once bare hosts hold their share
/// (`--max-bare-hosts`); a signed heartbeat is recorded only if its sequence number is
/// newer than its host id's last (`replayed` otherwise), and a rise of more
/// than one in the client's count (the low 32 bits) counts as lost.
pub struct Table {
    capacity: usize,
    /// How many of the slots bare hosts may take (`--max-bare-hosts`).
    max_bare: usize,
    bare: usize,
    slots: Vec<Slot>,
    by_owner: HashMap<Owner, u32>,
    counts: [u64; Counter::COUNT],
}

/// What became of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Counted here, nothing else changed.
    Counted(Counter),
    /// Recorded in this slot (counted `heartbeat`, and `new_host` if new).
    Recorded { slot: u32, new: bool },
}

impl Applied {
    /// The packet counter the frame lands in.
    pub fn counter(self) -> Counter {
        match self {
            Applied::Counted(c) => c,
            Applied::Recorded { .. } => Counter::Heartbeat,
        }
    }
}

impl Table {
    /// A table whose bare hosts may take every slot (no key, or
    /// `--require-auth`, by default).
    pub fn new(capacity: usize) -> Self {
        Self::with_max_bare(capacity, capacity)
    }

    /// The table `hb run --max-hosts capacity` starts with in `auth`'s
    /// mode, by the README: bare hosts take at most half of it (rounded
    /// up) with a key that still accepts them, all of it otherwise.
    pub fn for_mode(capacity: usize, auth: Auth) -> Self {
        match auth {
            Auth::Optional(_) => Self::with_max_bare(capacity, capacity.div_ceil(2)),
            Auth::Off | Auth::Required(_) => Self::new(capacity),
        }
    }

    /// A table whose bare hosts take at most `max_bare` slots.
    pub fn with_max_bare(capacity: usize, max_bare: usize) -> Self {
        Self {
            capacity,
            max_bare,
            bare: 0,
            slots: Vec::new(),
            by_owner: HashMap::new(),
            counts: [0; Counter::COUNT],
        }
    }

    /// Slots in use, in the order they were handed out.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Every counter, indexed by `Counter as usize`.
    pub fn counts(&self) -> &[u64; Counter::COUNT] {
        &self.counts
    }

    pub fn slot_of(&self, owner: Owner) -> Option<u32> {
        self.by_owner.get(&owner).copied()
    }

    /// Applies a judged frame and counts it.
    pub fn apply(&mut self, judged: Judged) -> Applied {
        let applied = match judged {
            Judged::Counted(c) => Applied::Counted(c),
            Judged::Bare(addr) => self.record(Owner::Addr(addr), None),
            Judged::Signed { host_id, seq, src } => {
                self.record(Owner::HostId(host_id), Some(Replay { seq, lost: 0, src }))
            }
        };
        self.counts[applied.counter() as usize] += 1;
        if let Applied::Recorded { new: true, .. } = applied {
            self.counts[Counter::NewHost as usize] += 1;
        }
        applied
    }

    fn record(&mut self, owner: Owner, fresh: Option<Replay>) -> Applied {
        if let Some(&slot) = self.by_owner.get(&owner) {
            let s = &mut self.slots[slot as usize];
            if let (Some(last), Some(new)) = (s.replay.as_mut(), fresh) {
                if new.seq <= last.seq {
                    return Applied::Counted(Counter::Replayed);
                }
                // The client's count is the low 32 bits; a count that
                // does not rise is a restart, a forgotten host (0) starts
                // afresh.
                let (count, was) = (new.seq as u32, last.seq as u32);
                if last.seq != 0 && count > was {
                    let gap = u64::from(count - was - 1);
                    last.lost += gap;
                    self.counts[Counter::Lost as usize] += gap;
                }
                last.seq = new.seq;
                last.src = new.src;
            }
            s.beats = s.beats.wrapping_add(1);
            return Applied::Recorded { slot, new: false };
        }
        // A new bare host beyond its share is refused as one beyond the
        // table: signed hosts keep the rest.
        if self.slots.len() == self.capacity || (fresh.is_none() && self.bare == self.max_bare) {
            return Applied::Counted(Counter::TableFull);
        }
        if fresh.is_none() {
            self.bare += 1;
        }
        let slot = self.slots.len() as u32;
        self.slots.push(Slot {
            owner,
            beats: 1,
            replay: fresh,
        });
        self.by_owner.insert(owner, slot);
        Applied::Recorded { slot, new: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_hands_out_slots_in_order_and_refuses_when_full() {
        let mut t = Table::new(2);
        let a = Judged::Bare([1; 16]);
        assert_eq!(t.apply(a), Applied::Recorded { slot: 0, new: true });
        assert_eq!(
            t.apply(a),
            Applied::Recorded {
                slot: 0,
                new: false
            }
        );
        let s = |seq| Judged::Signed {
            host_id: 7,
            seq,
            src: [2; 16],
        };
        assert_eq!(t.apply(s(10)), Applied::Recorded { slot: 1, new: true });
        assert_eq!(t.apply(s(10)), Applied::Counted(Counter::Replayed));
        assert_eq!(t.apply(s(9)), Applied::Counted(Counter::Replayed));
        assert_eq!(
            t.apply(s(13)),
            Applied::Recorded {
                slot: 1,
                new: false
            }
        );
        assert_eq!(t.slots()[1].replay.unwrap().lost, 2);
        // A restart (the count starts again from 0): no loss.
        assert_eq!(
            t.apply(s(5 << 32)),
            Applied::Recorded {
                slot: 1,
                new: false
            }
        );
        assert_eq!(t.slots()[1].replay.unwrap().lost, 2);
        // A run change of the same process (its count goes on): 2 lost.
        assert_eq!(
            t.apply(s((6 << 32) | 3)),
            Applied::Recorded {
                slot: 1,
                new: false
            }
        );
        assert_eq!(t.slots()[1].replay.unwrap().lost, 4);
        assert_eq!(
            t.apply(Judged::Bare([3; 16])),
            Applied::Counted(Counter::TableFull)
        );
        let c = t.counts();
        assert_eq!(c[Counter::Heartbeat as usize], 6);
        assert_eq!(c[Counter::NewHost as usize], 2);
        assert_eq!(c[Counter::Replayed as usize], 2);
        assert_eq!(c[Counter::TableFull as usize], 1);
        assert_eq!(c[Counter::Lost as usize], 4);
    }

    #[test]
    fn bare_hosts_take_their_share_signed_ones_the_rest() {
        let mut t = Table::for_mode(3, Auth::Optional([0; 16]));
        let bare = |b| Judged::Bare([b; 16]);
        let signed = |id| Judged::Signed {
            host_id: id,
            seq: 1,
            src: [9; 16],
        };
        assert!(matches!(
            t.apply(bare(1)),
            Applied::Recorded { new: true, .. }
        ));
        assert!(matches!(
            t.apply(bare(2)),
            Applied::Recorded { new: true, .. }
        ));
        assert_eq!(t.apply(bare(3)), Applied::Counted(Counter::TableFull));
        // A known bare host still beats.
        assert!(matches!(
            t.apply(bare(1)),
            Applied::Recorded { new: false, .. }
        ));
        assert!(matches!(
            t.apply(signed(7)),
            Applied::Recorded { new: true, .. }
        ));
        assert_eq!(t.apply(signed(8)), Applied::Counted(Counter::TableFull));
    }
}
