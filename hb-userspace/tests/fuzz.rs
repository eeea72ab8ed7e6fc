//! Property test: the real XDP program, through BPF_PROG_TEST_RUN, against
//! the kit's reference over a million random and mutated frames, in each
//! authentication mode: no key, a key (signed heartbeats verified, bare
//! `PyHB` accepted) and a key with `--require-auth`. Every frame gets the
//! verdict the reference gives it; every heartbeat is stamped on its host's
//! slot, and nothing else changes the table; the counters agree bucket by
//! bucket, and the replay state (last sequence number, lost heartbeats,
//! last address) of every host id agrees.
//!
//! Signed frames are signed here with the reference SipHash (the
//! `siphasher` crate), right and wrong: replays, older numbers, new client
//! runs, wrong keys, MACs and fields, unknown versions, flags and reserved
//! bits; the reference verifies them with it too.
//!
//! `HB_FUZZ_SEED` (decimal or 0x-hex) and `HB_FUZZ_FRAMES` (all modes
//! together) change the seed and the number of frames; a failure prints
//! both to reproduce it.

use std::{net::Ipv6Addr, time::Instant};

use aya::programs::{ProgramError, TestRun as _, TestRunOptions, Xdp};
use hb_common::{Counter, HostKey, MAGIC, net::*};
use hb_testkit::{
    frames::*,
    program::{self as kit, clock_ns},
    reference::{Applied, Auth, Owner, Table, dropped, judge},
};
use hb_userspace::xdp::{self, AuthSettings, HostTable};
use siphasher::sip::SipHasher24;

const DEFAULT_SEED: u64 = 0x4842_f022_5eed_0001;
const DEFAULT_FRAMES: u64 = 1_000_000;
/// Frames between full comparisons of counters and table with the model.
const WINDOW: usize = 4096;
/// Distinct sources a frame is built from; byte flips add a few more.
const POOL: u8 = 8;
/// Host ids most signed frames come from; a few come from random ones.
const IDS: usize = 8;
/// Small enough that sources made up by byte flips, and random host ids,
/// fill it early in each mode, so refusals by a full table are exercised
/// too.
const MAX_HOSTS: u32 = 512;
const KEY: [u8; 16] = *b"hb fuzz fleet k!";

/// The modes and their shares of the frames, in percent.
const MODES: [(&str, Auth, u64); 3] = [
    ("no key", Auth::Off, 40),
    ("key", Auth::Optional(KEY), 30),
    ("--require-auth", Auth::Required(KEY), 30),
];

/// xorshift64*: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}"))
        }
        Err(_) => default,
    }
}

/// Signs payloads as clients (and impostors) would: per host id, numbers
/// that mostly rise, with the latest few kept for replays.
struct Signer {
    seqs: [u64; IDS],
    recent: Vec<Vec<u8>>,
}

/// Host id `i` of the pool.
fn host_id(i: usize) -> u64 {
    0x4842_0000_0000_0000 | i as u64
}

/// A version 1 payload of `header` (magic, version, flags, reserved), `id`
/// and `seq`, its MAC by the reference SipHash under `key`.
fn sign(key: &[u8; 16], header: [u8; 8], id: u64, seq: u64) -> Vec<u8> {
    let mut p = header.to_vec();
    p.extend(id.to_be_bytes());
    p.extend(seq.to_be_bytes());
    let mac = SipHasher24::new_with_key(key).hash(&p);
    p.extend(mac.to_le_bytes());
    p
}

const HEADER: [u8; 8] = [b'P', b'y', b'H', b'B', 1, 0, 0, 0];

impl Signer {
    fn new() -> Self {
        Self {
            seqs: std::array::from_fn(|i| (1_800_000_000 + i as u64) << 32),
            recent: Vec::new(),
        }
    }

    fn payload(&mut self, rng: &mut Rng) -> Vec<u8> {
        let i = rng.below(IDS);
        let p = match rng.below(100) {
            // The next heartbeat, sometimes after a gap, in a new run, or
            // with a run change.
            0..55 => {
                let seq = &mut self.seqs[i];
                *seq = match rng.below(20) {
                    0 => ((*seq >> 32) + 1 + rng.below(3) as u64) << 32,
                    1 => *seq + 2 + rng.below(50) as u64,
                    // A run change of the same client: the count goes on,
                    // sometimes after a gap.
                    2 => {
                        let count = (*seq as u32).wrapping_add(1 + rng.below(3) as u32);
                        (((*seq >> 32) + 1) << 32) | u64::from(count)
                    }
                    _ => *seq + 1,
                };
                sign(&KEY, HEADER, host_id(i), *seq)
            }
            // A copy of a recent one, or an older number.
            55..63 if !self.recent.is_empty() => self.recent[rng.below(self.recent.len())].clone(),
            55..68 => {
                let back = rng.pick(&[0, 1, 2, 1 << 32]);
                sign(&KEY, HEADER, host_id(i), self.seqs[i].wrapping_sub(back))
            }
            // A host id of its own: these fill the table.
            68..74 => sign(&KEY, HEADER, rng.next(), rng.next()),
            // Signed with another key.
            74..78 => sign(b"another fleet!!!", HEADER, host_id(i), self.seqs[i] + 1),
            // A bit off after signing: MAC, host id or sequence number.
            78..86 => {
                let mut p = sign(&KEY, HEADER, host_id(i), self.seqs[i] + 1);
                let byte = 8 + rng.below(24);
                p[byte] ^= 1 << rng.below(8);
                p
            }
            // An unknown version, flags or reserved bits, correctly signed.
            86..94 => {
                let mut header = HEADER;
                let at = 4 + rng.below(4);
                let any = rng.byte();
                header[at] = rng.pick(&[0, 1, 2, 0x80, 0xff, any]);
                sign(&KEY, header, host_id(i), self.seqs[i] + 1)
            }
            // Another magic, correctly signed, or 32 bytes of noise.
            94..97 => {
                let mut header = HEADER;
                header[rng.below(4)] ^= 1 << rng.below(8);
                sign(&KEY, header, host_id(i), self.seqs[i] + 1)
            }
            _ => rng.bytes(32),
        };
        if self.recent.len() < 16 {
            self.recent.push(p.clone());
        } else {
            let at = rng.below(16);
            self.recent[at] = p.clone();
        }
        p
    }
}

/// IPv6 sources that are not a fleet's, and one each side of multicast.
const ODD_V6_SOURCES: [[u8; 16]; 8] = [
    v6([0xff02, 0, 0, 0, 0, 0, 0, 1]),
    v6([0xff0e, 0, 0, 0, 0, 0, 0, 0x4842]),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0]),
    // Host id 7's key, as a source address.
    v6([0xff48, 0x4249, 0x4400, 0, 0, 0, 0, 7]),
    v6([0xfeff, 0xffff, 0, 0, 0, 0, 0, 1]),
    v6([0, 0, 0, 0, 0, 0, 0, 0]),
    v6([0, 0, 0, 0, 0, 0, 0, 1]),
    v6([0, 0, 0, 0, 0, 0xffff, 0xc612, 0x0a01]),
];

/// A frame of any shape hb knows, mostly valid, then mutated.
fn generate(rng: &mut Rng, signer: &mut Signer, keyed: bool) -> Vec<u8> {
    if rng.chance(3) {
        // Noise, sometimes behind an IP EtherType.
        let len = rng.below(120);
        let mut f = rng.bytes(len);
        if f.len() >= 14 && rng.chance(60) {
            let et = rng.pick(&[ETH_P_IPV4, ETH_P_IPV6, ETH_P_8021Q]);
            f[12..14].copy_from_slice(&et.to_be_bytes());
        }
        return f;
    }
    let tags: Vec<u16> = (0..rng.pick(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3]))
        .map(|_| match rng.below(20) {
            0 => ETH_P_QINQ1,
            1 => rng.u16(),
            n if n < 11 => ETH_P_8021Q,
            _ => ETH_P_8021AD,
        })
        .collect();

    // With a key most heartbeats are signed; without one, signed payloads
    // are some of the wrong ones.
    let signed_share = if keyed { 45 } else { 8 };
    let payload: Vec<u8> = match rng.below(100) {
        n if n < signed_share => signer.payload(rng),
        n if n < 88 => MAGIC.to_vec(),
        n if n < 91 => {
            // 31 to 33 bytes that start like a signed heartbeat.
            let mut p = signer.payload(rng);
            p.resize(31 + rng.below(3), rng.byte());
            p
        }
        _ => {
            let mut p = b"PyHBPyHB"[..rng.below(9)].to_vec();
            if !p.is_empty() && rng.chance(50) {
                let i = rng.below(p.len());
                p[i] ^= 1 << rng.below(8);
            }
            p
        }
    };
    let dport = if rng.chance(85) {
        PORT
    } else {
        let any = rng.u16();
        rng.pick(&[PORT - 1, PORT + 1, PORT.swap_bytes(), any])
    };
    let sport = if rng.chance(10) { PORT } else { rng.u16() };
    let udp_len = if rng.chance(8) {
        let any = rng.u16();
        rng.pick(&[11, 13, 8, 0, 20, 39, 41, any])
    } else {
        (8 + payload.len()) as u16
    };
    let datagram = udp_with_len(sport, dport, udp_len, &payload);
    let proto = if rng.chance(90) {
        IPPROTO_UDP
    } else {
        let any = rng.byte();
        rng.pick(&[IPPROTO_TCP, IPPROTO_ICMP, IPPROTO_FRAGMENT, any])
    };
    let host = rng.below(POOL as usize) as u8;

    let kind = rng.below(100);
    let mut f = if kind < 47 {
        let mut ip = V4::new([198, 18, 10, host]);
        ip.proto = proto;
        if rng.chance(35) {
            let words = rng.below(11);
            ip.options = if rng.chance(50) {
                v4_options(words)
            } else {
                rng.bytes(words * 4)
            };
        }
        if rng.chance(5) {
            ip.ihl = Some(rng.below(16) as u8);
        }
        if rng.chance(2) {
            ip.version = rng.pick(&[0, 6, 15]);
        }
        ip.frag = match rng.below(100) {
            0..70 => IP_DF,
            70..85 => 0,
            85..92 => IP_MF | ((rng.u16() & 0x1fff) * u16::from(rng.chance(50))),
            92..96 => rng.u16() & 0x1fff,
            _ => rng.u16(),
        };
        if rng.chance(8) {
            let right = (20 + ip.options.len() + datagram.len()) as u16;
            let any = rng.u16();
            ip.total_len = Some(rng.pick(&[right - 1, right + 1, right + 4, 0, any]));
        }
        eth(&tags, ETH_P_IPV4, &ip.build(&datagram))
    } else if kind < 94 {
        let src = if rng.chance(6) {
            rng.pick(&ODD_V6_SOURCES)
        } else {
            v6([0xfd00, 0x4842, 0, 0, 0, 0, 0x10, host as u16])
        };
        let mut ip = V6::new(src);
        ip.proto = proto;
        if rng.chance(2) {
            ip.version = rng.pick(&[0, 4, 15]);
        }
        let n = rng.pick(&[0, 0, 0, 1, 1, 2, 3, 4, 5]);
        ip.ext = (0..n)
            .map(|_| {
                let kind = rng.pick(&[
                    IPPROTO_HOPOPTS,
                    IPPROTO_DSTOPTS,
                    IPPROTO_ROUTING,
                    IPPROTO_HOPOPTS,
                    IPPROTO_DSTOPTS,
                    IPPROTO_FRAGMENT,
                    IPPROTO_AH,
                ]);
                let len = if kind == IPPROTO_FRAGMENT {
                    8
                } else {
                    8 * (1 + rng.below(4))
                };
                (kind, len)
            })
            .collect();
        if rng.chance(8) {
            let right = (ip.ext.iter().map(|e| e.1).sum::<usize>() + datagram.len()) as u16;
            let any = rng.u16();
            ip.payload_len = Some(rng.pick(&[right - 1, right + 1, right + 8, 0, any]));
        }
        eth(&tags, ETH_P_IPV6, &ip.build(&datagram))
    } else {
        let any = rng.u16();
        let et = rng.pick(&[ETH_P_ARP, ETH_P_LLDP, ETH_P_8021Q, any]);
        let len = rng.below(64);
        let body = rng.bytes(len);
        eth(&tags, et, &body)
    };

    if rng.chance(25) {
        let fill = rng.byte();
        f = padded(f, fill);
    } else if rng.chance(10) {
        let len = 1 + rng.below(8);
        let extra = rng.bytes(len);
        f.extend(extra);
    }

    for _ in 0..rng.pick(&[0, 0, 0, 1, 1, 2, 3]) {
        mutate(rng, &mut f);
    }
    f
}

/// Values that steer a header into another branch when written anywhere.
const INTERESTING: [u8; 16] = [
    0x00, 0x01, 0x04, 0x05, 0x06, 0x0c, 0x11, 0x20, 0x2c, 0x3c, 0x45, 0x4f, 0x60, 0x81, 0x86, 0xff,
];

fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    if f.is_empty() {
        return;
    }
    // Headers are where the decisions are: mostly mutate the first 80 bytes.
    let i = if rng.chance(80) {
        rng.below(f.len().min(80))
    } else {
        rng.below(f.len())
    };
    match rng.below(6) {
        0 => f.truncate(rng.below(f.len() + 1)),
        1 => f[i] ^= 1 << rng.below(8),
        2 => f[i] = rng.byte(),
        3 => f[i] = rng.pick(&INTERESTING),
        4 => f.insert(i, rng.byte()),
        _ => {
            f.remove(i);
        }
    }
}

/// The reference's table, and when each slot was last stamped.
struct Model {
    table: Table,
    /// Last-seen ticks, by slot.
    last_seen: Vec<u32>,
}

/// Frames since the last full comparison: number, bytes, what became of it.
type Window = Vec<(u64, Vec<u8>, Applied)>;

/// The program's address key of a 16-byte address.
fn key_of(addr: [u8; 16]) -> HostKey {
    HostKey { addr }
}

/// An address as hb reports it (IPv4-mapped as IPv4).
fn ip_of(addr: [u8; 16]) -> std::net::IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.into(),
        None => v6.into(),
    }
}

#[test]
fn random_and_mutated_frames_match_the_reference() {
    let seed = env_u64("HB_FUZZ_SEED", DEFAULT_SEED);
    let frames = env_u64("HB_FUZZ_FRAMES", DEFAULT_FRAMES);
    let repro = format!("HB_FUZZ_SEED={seed:#x} HB_FUZZ_FRAMES={frames}");
    println!("fuzz: {repro}");
    let start = Instant::now();
    for (i, (name, auth, share)) in MODES.into_iter().enumerate() {
        let n = frames * share / 100;
        // Each mode its own stream, so that one mode's run replays alone.
        let rng = Rng((seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
        fuzz_mode(name, auth, n, rng, frames, &repro);
    }
    println!(
        "fuzz: {frames} frames in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

fn fuzz_mode(name: &str, auth: Auth, frames: u64, mut rng: Rng, total: u64, repro: &str) {
    let mut loaded = kit::load_auth(
        MAX_HOSTS,
        match auth {
            Auth::Off => None,
            Auth::Optional(key) => Some(AuthSettings {
                key,
                require: false,
            }),
            Auth::Required(key) => Some(AuthSettings { key, require: true }),
        },
    );
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    let table = &loaded.table;
    let mut model = Model {
        table: Table::for_mode(table.capacity(), auth),
        last_seen: Vec::new(),
    };
    let mut signer = Signer::new();
    let dest = kit::kit_dest();
    let keyed = auth != Auth::Off;
    let mut refused_by_kernel = 0u64;
    let mut window: Window = Vec::with_capacity(WINDOW);
    let start = Instant::now();

    for n in 0..frames {
        let frame = generate(&mut rng, &mut signer, keyed);
        let judged = judge(&frame, PORT, auth, &dest);
        let ctx = |applied: Option<Applied>| {
            format!(
                "{name}, frame {n} ({repro}): {}, reference {judged:?} {applied:?}",
                hex(&frame)
            )
        };
        let t0 = clock_ns(libc::CLOCK_MONOTONIC_COARSE);
        let verdict = match prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::new()
        }) {
            Ok(r) => r.return_value,
            Err(e) => {
                // The kernel refuses input shorter than an Ethernet header.
                assert!(frame.len() < ETH_HLEN && einval(&e), "{}: {e:?}", ctx(None));
                refused_by_kernel += 1;
                continue;
            }
        };
        let t1 = clock_ns(libc::CLOCK_MONOTONIC);
        // As ticks of the table (its epoch is this test's start: no wrap).
        let (t0, t1) = (
            hb_common::timing::tick(t0, table.epoch_ns()),
            hb_common::timing::tick(t1, table.epoch_ns()),
        );
        let applied = model.table.apply(judged);
        let ctx = || ctx(Some(applied));
        let want = if dropped(applied.counter()) {
            XDP_DROP
        } else {
            XDP_PASS
        };
        assert_eq!(verdict, want, "verdict: {}", ctx());
        if let Applied::Recorded { slot, new } = applied {
            let s = model.table.slots()[slot as usize];
            if new {
                assert_eq!(table.len(), slot as usize + 1, "new host: {}", ctx());
                match s.owner {
                    Owner::Addr(a) => {
                        assert_eq!(table.slot(&key_of(a)), Some(slot), "slot: {}", ctx())
                    }
                    Owner::HostId(id) => {
                        assert_eq!(table.host(slot).id, Some(id), "host id: {}", ctx())
                    }
                }
                model.last_seen.push(0);
            }
            let entry = table.entry(slot);
            assert_eq!(entry.beats, s.beats, "beats: {}", ctx());
            let prev = model.last_seen[slot as usize];
            assert!(
                entry.last_seen >= prev.max(t0) && entry.last_seen <= t1,
                "last seen {} not in [max({prev}, {t0}), {t1}]: {}",
                entry.last_seen,
                ctx()
            );
            model.last_seen[slot as usize] = entry.last_seen;
        }
        assert_eq!(
            table.len(),
            model.table.slots().len(),
            "table length: {}",
            ctx()
        );
        window.push((n, frame, applied));
        if window.len() == WINDOW || n + 1 == frames {
            check(name, &model, prog, table, &mut window, repro);
        }
    }
    let elapsed = start.elapsed();
    check(name, &model, prog, table, &mut window, repro);

    let rate = frames as f64 / elapsed.as_secs_f64();
    let counts = model.table.counts();
    println!(
        "fuzz: {name}: {frames} frames in {:.1} s ({rate:.0} frames/s), {refused_by_kernel} shorter than 14 bytes refused by the kernel, {} hosts",
        elapsed.as_secs_f64(),
        model.table.slots().len()
    );
    for c in Counter::ALL {
        println!("fuzz:   {:<15} {}", c.name(), counts[c as usize]);
    }
    // The generator reaches every outcome of the mode often, or the run
    // proves little.
    if total >= DEFAULT_FRAMES {
        let reachable = |c: Counter| match auth {
            Auth::Off => !matches!(
                c,
                Counter::Forged | Counter::Replayed | Counter::Unauthenticated | Counter::Lost
            ),
            Auth::Optional(_) => c != Counter::Unauthenticated,
            Auth::Required(_) => true,
        };
        for c in Counter::ALL.into_iter().filter(|&c| reachable(c)) {
            assert!(
                counts[c as usize] >= 100,
                "{name}: only {} frames counted {}: the generator misses a branch",
                counts[c as usize],
                c.name()
            );
        }
    }
}

/// Compares the counters and the whole table (and the replay state of
/// host ids) with the model; on a counter mismatch, replays the window's
/// frames that change nothing, one at a time, to name the frame.
fn check(
    name: &str,
    model: &Model,
    prog: &Xdp,
    table: &HostTable,
    window: &mut Window,
    repro: &str,
) {
    let last = window.last().map_or(0, |w| w.0);
    for (slot, s) in model.table.slots().iter().enumerate() {
        let slot = slot as u32;
        let entry = table.entry(slot);
        let host = table.host(slot);
        let at = || format!("{name}: slot {slot} ({s:?}), window ending at {last} ({repro})");
        match s.owner {
            Owner::Addr(a) => assert_eq!(table.key(slot), key_of(a), "{}", at()),
            Owner::HostId(id) => {
                assert_eq!(host.id, Some(id), "{}", at());
                // Keyed under a multicast prefix: never a source's.
                assert_eq!(table.key(slot).addr[0], 0xff, "{}", at());
            }
        }
        assert_eq!(
            (entry.beats, entry.last_seen),
            (s.beats, model.last_seen[slot as usize]),
            "changed by a frame in the window: {}",
            at()
        );
        if let Some(r) = s.replay {
            assert_eq!(table.last_seq(slot), Some(r.seq), "last seq: {}", at());
            assert_eq!(host.lost, Some(r.lost), "lost: {}", at());
            assert_eq!(host.ip, ip_of(r.src), "address: {}", at());
        }
    }
    let got = table.counters().unwrap();
    if &got != model.table.counts() {
        let names = |c: &[u64; Counter::COUNT]| -> Vec<String> {
            Counter::ALL
                .iter()
                .map(|k| format!("{}={}", k.name(), c[*k as usize]))
                .collect()
        };
        let mut culprit = String::from("none found on replay");
        for (n, frame, applied) in window.iter() {
            let Applied::Counted(bucket) = applied else {
                continue;
            };
            let before = table.counters().unwrap();
            if prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    ..TestRunOptions::new()
                })
                .is_err()
            {
                continue;
            }
            let after = table.counters().unwrap();
            let hit: Vec<&str> = Counter::ALL
                .iter()
                .filter(|k| after[**k as usize] != before[**k as usize])
                .map(|k| k.name())
                .collect();
            if hit != [bucket.name()] {
                culprit = format!(
                    "frame {n}: {} counted {hit:?}, reference {}",
                    hex(frame),
                    bucket.name()
                );
                break;
            }
        }
        panic!(
            "{name}: counters differ ({repro})\n program:   {:?}\n reference: {:?}\n {culprit}",
            names(&got),
            names(model.table.counts())
        );
    }
    window.clear();
}

fn einval(e: &ProgramError) -> bool {
    matches!(e, ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EINVAL))
}
