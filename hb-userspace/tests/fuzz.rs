//! Hostile input: a million random and mutated frames through the real
//! program (BPF_PROG_TEST_RUN), each judged by a reference classifier
//! written from the specification. Nothing but a valid heartbeat may be
//! dropped, and nothing but a valid heartbeat may change the table.
//!
//! `HB_FUZZ_SEED` and `HB_FUZZ_FRAMES` override the seed and the count; a
//! failure prints the seed and the frame, so it can be replayed.

mod frames;

use std::collections::HashMap;

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use hb_common::{Counter, HostKey};
use hb_userspace::program::{self, Settings};

use frames::*;

/// Small enough that mutated source addresses fill it: the full-table path
/// is fuzzed too.
const CAPACITY: usize = 4096;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// xorshift64*: small, fast, and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// The specification of a heartbeat, independent of the program's code:
/// Ethernet, up to two VLAN tags, IPv4 (not a fragment, any IHL >= 5) or
/// IPv6 (up to four hop-by-hop/routing/destination-options headers), UDP
/// to `port` whose lengths say exactly 4 bytes of payload, and those bytes
/// are `PyHB`, all inside the frame. Returns the host's key.
///
/// One exception: an IPv6 source in ff00::/8 (multicast, which no host may
/// send from, and the prefix of signed hosts' keys) makes it a forgery:
/// dropped like a heartbeat, counted `forged`, never recorded.
fn reference(f: &[u8], port: u16) -> Verdict {
    match classify(f, port) {
        Some(key) if key.addr[0] == 0xff => Verdict::Forged,
        Some(key) => Verdict::Heartbeat(key),
        None => Verdict::Other,
    }
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Heartbeat(HostKey),
    Forged,
    Other,
}

fn classify(f: &[u8], port: u16) -> Option<HostKey> {
    let be16 =
        |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?])) };
    let mut off = 12;
    let mut ethertype = be16(off)?;
    let mut tags = 0;
    while ethertype == TPID_8021Q || ethertype == TPID_8021AD {
        tags += 1;
        if tags > 2 {
            return None;
        }
        off += 4;
        ethertype = be16(off)?;
    }
    let ip = off + 2;
    let (key, udp_at, ip_len_ok) = match ethertype {
        ETH_IPV4 => {
            let h = f.get(ip..ip + 20)?;
            if h[0] >> 4 != 4 {
                return None;
            }
            let ihl = (h[0] & 0x0f) as usize * 4;
            let frag = u16::from_be_bytes([h[6], h[7]]);
            if ihl < 20 || frag & 0x3fff != 0 || h[9] != UDP {
                return None;
            }
            let total = u16::from_be_bytes([h[2], h[3]]) as usize;
            let src = [h[12], h[13], h[14], h[15]];
            (HostKey::from_ipv4(src), ip + ihl, total == ihl + 12)
        }
        ETH_IPV6 => {
            let h = f.get(ip..ip + 40)?;
            if h[0] >> 4 != 6 {
                return None;
            }
            let payload = u16::from_be_bytes([h[4], h[5]]) as usize;
            let mut next = h[6];
            let mut at = ip + 40;
            let mut ext = 0;
            let mut count = 0;
            while matches!(next, HOPOPTS | ROUTING | DSTOPTS) {
                count += 1;
                if count > 4 {
                    return None;
                }
                let e = f.get(at..at + 2)?;
                let len = (e[1] as usize + 1) * 8;
                next = e[0];
                at += len;
                ext += len;
            }
            if next != UDP {
                return None;
            }
            let mut src = [0u8; 16];
            src.copy_from_slice(&h[8..24]);
            (HostKey::from_ipv6(src), at, payload == ext + 12)
        }
        _ => return None,
    };
    let u = f.get(udp_at..udp_at + 12)?;
    let ok = u16::from_be_bytes([u[2], u[3]]) == port
        && u16::from_be_bytes([u[4], u[5]]) == 12
        && ip_len_ok
        && &u[8..12] == MAGIC4;
    ok.then_some(key)
}

/// A valid heartbeat of a random shape, from one of a small pool of hosts
/// (so that the table stays small and can be compared whole).
fn valid(rng: &mut Rng) -> Vec<u8> {
    let tags: Vec<u16> = (0..rng.below(3))
        .map(|_| {
            if rng.chance(50) {
                TPID_8021Q
            } else {
                TPID_8021AD
            }
        })
        .collect();
    let host = rng.below(64) as u8;
    if rng.chance(50) {
        let ihl = 5 + if rng.chance(70) {
            0
        } else {
            rng.below(11) as u8
        };
        eth(
            &tags,
            ETH_IPV4,
            &ipv4_with([10, 9, 0, host], UDP, &udp(PORT, MAGIC4), ihl, 0),
        )
    } else {
        let exts: Vec<(u8, u8)> = (0..rng.below(5))
            .map(|_| {
                let t = [HOPOPTS, ROUTING, DSTOPTS][rng.below(3) as usize];
                (t, rng.below(3) as u8)
            })
            .collect();
        let mut src = [0xfd, 0, 0x48, 0x42, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        src[15] = host;
        eth(&tags, ETH_IPV6, &ipv6(src, &exts, UDP, &udp(PORT, MAGIC4)))
    }
}

/// Damages `f` in one of the ways real and hostile traffic does.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    let n = f.len().max(1);
    match rng.below(8) {
        // Cut anywhere.
        0 => f.truncate(rng.below(n as u64 + 1) as usize),
        // One byte anywhere, to anything.
        1 => {
            let i = rng.below(n as u64) as usize;
            if let Some(b) = f.get_mut(i) {
                *b = rng.byte();
            }
        }
        // One bit in the headers.
        2 => {
            let i = rng.below(n.min(80) as u64) as usize;
            if let Some(b) = f.get_mut(i) {
                *b ^= 1 << rng.below(8);
            }
        }
        // A 16-bit field (lengths, ports, ethertypes, fragment bits) off by
        // one, zeroed, or all ones.
        3 => {
            let i = rng.below(n.min(80) as u64) as usize & !1;
            if i + 2 <= f.len() {
                let v = u16::from_be_bytes([f[i], f[i + 1]]);
                let v = match rng.below(4) {
                    0 => v.wrapping_add(1),
                    1 => v.wrapping_sub(1),
                    2 => 0,
                    _ => 0xffff,
                };
                f[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
        // Padding or trailing junk.
        4 => {
            let extra = rng.below(40) as usize;
            for _ in 0..extra {
                f.push(rng.byte());
            }
        }
        // An extra VLAN tag.
        5 if f.len() >= 14 => {
            let tpid = if rng.chance(50) {
                TPID_8021Q
            } else {
                TPID_8021AD
            };
            let tag = [(tpid >> 8) as u8, tpid as u8, 0, 1];
            f.splice(12..12, tag);
        }
        // A random payload of random length.
        6 => {
            let keep = (rng.below(n as u64)) as usize;
            f.truncate(keep);
            for _ in 0..rng.below(8) {
                f.push(rng.byte());
            }
        }
        // Garbage from the start.
        _ => {
            let len = rng.below(100) as usize;
            *f = (0..len).map(|_| rng.byte()).collect();
        }
    }
}

#[test]
fn random_and_mutated_frames_never_fool_the_program() {
    let seed: u64 = std::env::var("HB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6862_5f66_757a_7a21);
    let frames: u64 = std::env::var("HB_FUZZ_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    eprintln!("fuzz: seed {seed}, {frames} frames");
    let mut loaded = program::load(Settings {
        port: PORT,
        pass_heartbeats: false,
        max_hosts: CAPACITY as u32,
    })
    .unwrap();
    let before = loaded.counters.read().unwrap();
    let prog: &Xdp = program::xdp(&mut loaded.ebpf).unwrap();
    let mut rng = Rng(seed);
    // What the table must hold: beats per host.
    let mut model: HashMap<HostKey, u64> = HashMap::new();
    let (mut run, mut refused, mut heartbeats, mut refused_full, mut forged) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let started = std::time::Instant::now();
    // Until `frames` have run (the kernel refuses frames under 14 bytes).
    for i in 0..frames * 2 {
        if run == frames {
            break;
        }
        let mut f = valid(&mut rng);
        let mutations = match rng.below(10) {
            0..=1 => 0,
            2..=6 => 1,
            7..=8 => 2,
            _ => 3,
        };
        for _ in 0..mutations {
            mutate(&mut rng, &mut f);
        }
        let expected = reference(&f, PORT);
        let r = match prog.test_run(TestRunOptions {
            data_in: Some(&f),
            ..TestRunOptions::new()
        }) {
            Ok(r) => r,
            // The kernel refuses test input shorter than an Ethernet header.
            Err(_) if f.len() < ETH_HLEN => {
                refused += 1;
                continue;
            }
            Err(e) => panic!("frame {i} (seed {seed}): test_run failed: {e} on {f:02x?}"),
        };
        run += 1;
        let want = if expected == Verdict::Other {
            XDP_PASS
        } else {
            XDP_DROP
        };
        assert_eq!(
            r.return_value, want,
            "frame {i} (seed {seed}): reference says {expected:?}; frame {f:02x?}"
        );
        if expected == Verdict::Forged {
            forged += 1;
        }
        if let Verdict::Heartbeat(key) = expected {
            // A full table takes no new host (dropped all the same).
            if model.len() == CAPACITY && !model.contains_key(&key) {
                refused_full += 1;
            } else {
                heartbeats += 1;
                *model.entry(key).or_default() += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "fuzz: {run} frames run ({refused} refused as too short), {heartbeats} heartbeats recorded, {refused_full} refused by the full table, {:.0} frames/s",
        run as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(run, frames, "too few frames ran");
    assert!(
        heartbeats > frames / 10 && heartbeats < frames * 9 / 10,
        "the mix should hold both kinds: {heartbeats} heartbeats"
    );
    assert!(
        refused_full > 0 || frames < 100_000,
        "the table never filled up"
    );

    // Every frame landed in exactly one bucket; heartbeats agree.
    let after = loaded.counters.read().unwrap();
    let delta = |c: Counter| after[c as usize] - before[c as usize];
    let buckets: u64 = Counter::ALL
        .iter()
        .filter(|&&c| c != Counter::NewHost && c != Counter::Lost)
        .map(|&c| delta(c))
        .sum();
    let deltas: Vec<_> = Counter::ALL.iter().map(|&c| (c.name(), delta(c))).collect();
    eprintln!("fuzz: outcomes {deltas:?}");
    assert_eq!(buckets, run, "frames counted in no bucket or in two");
    assert_eq!(delta(Counter::Heartbeat), heartbeats);
    assert_eq!(delta(Counter::NewHost), model.len() as u64);
    assert_eq!(delta(Counter::TableFull), refused_full);
    assert_eq!(delta(Counter::Forged), forged);

    // The table holds exactly the hosts of valid heartbeats, with their
    // beats: nothing else changed it.
    let table = &loaded.table;
    assert_eq!(table.len(), model.len());
    for (key, beats) in &model {
        let entry = table.get(key).unwrap_or_else(|| panic!("{key:?} missing"));
        assert_eq!(entry.beats, *beats, "{key:?}");
    }
}
