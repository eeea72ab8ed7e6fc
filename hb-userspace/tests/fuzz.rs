//! Property test: the real XDP program, through BPF_PROG_TEST_RUN, against
//! the kit's reference classifier over a million random and mutated
//! frames. Every frame that is not a valid heartbeat passes and changes no
//! table state; every valid heartbeat is dropped and stamped on its source's
//! slot; the counters agree with the reference bucket by bucket.
//!
//! `HB_FUZZ_SEED` (decimal or 0x-hex) and `HB_FUZZ_FRAMES` change the seed
//! and the number of frames; a failure prints both to reproduce it.

use std::{collections::HashMap, time::Instant};

use aya::programs::{ProgramError, TestRun as _, TestRunOptions, Xdp};
use hb_common::{Counter, HostKey, MAGIC, net::*};
use hb_testkit::{
    frames::*,
    program::{self as kit, clock_ns},
    reference::{auth_only, classify},
};
use hb_userspace::xdp::{self, HostTable};

const DEFAULT_SEED: u64 = 0x4842_f022_5eed_0001;
const DEFAULT_FRAMES: u64 = 1_000_000;
/// Frames between full comparisons of counters and table with the model.
const WINDOW: usize = 4096;
/// Distinct sources a frame is built from; byte flips add a few more.
const POOL: u8 = 8;
/// Small enough that sources made up by byte flips fill it early in the
/// run, so refusals by a full table are exercised too.
const MAX_HOSTS: u32 = 512;

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

/// A frame of any shape hb knows, mostly valid, then mutated.
fn generate(rng: &mut Rng) -> Vec<u8> {
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

    let payload: Vec<u8> = if rng.chance(85) {
        MAGIC.to_vec()
    } else {
        let mut p = b"PyHBPyHB"[..rng.below(9)].to_vec();
        if !p.is_empty() && rng.chance(50) {
            let i = rng.below(p.len());
            p[i] ^= 1 << rng.below(8);
        }
        p
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
        rng.pick(&[11, 13, 8, 0, 20, any])
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
        let mut ip = V6::new(v6([0xfd00, 0x4842, 0, 0, 0, 0, 0x10, host as u16]));
        ip.proto = proto;
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

/// What the program's table must hold, and the counters it must show.
struct Model {
    hosts: HashMap<HostKey, Host>,
    slots: Vec<HostKey>,
    counts: [u64; Counter::COUNT],
    capacity: usize,
}

struct Host {
    slot: u32,
    beats: u64,
    last_seen: u64,
}

#[test]
fn random_and_mutated_frames_match_the_reference() {
    let seed = env_u64("HB_FUZZ_SEED", DEFAULT_SEED);
    let frames = env_u64("HB_FUZZ_FRAMES", DEFAULT_FRAMES);
    let repro = format!("HB_FUZZ_SEED={seed:#x} HB_FUZZ_FRAMES={frames}");
    println!("fuzz: {repro}");
    let mut rng = Rng(seed | 1);

    let mut loaded = kit::load(MAX_HOSTS);
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    let table = &loaded.table;
    let mut model = Model {
        hosts: HashMap::new(),
        slots: Vec::new(),
        counts: [0; Counter::COUNT],
        capacity: table.capacity(),
    };
    let mut refused_by_kernel = 0u64;
    let mut window: Vec<(u64, Vec<u8>, Result<HostKey, Counter>)> = Vec::with_capacity(WINDOW);
    let start = Instant::now();

    for n in 0..frames {
        let frame = generate(&mut rng);
        let expected = classify(&frame, PORT);
        let ctx = || {
            format!(
                "frame {n} ({repro}): {}, reference {expected:?}",
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
                assert!(frame.len() < ETH_HLEN && einval(&e), "{}: {e:?}", ctx());
                refused_by_kernel += 1;
                continue;
            }
        };
        match expected {
            Err(bucket) => {
                // A forgery is heartbeat traffic: dropped, never recorded.
                let want = if bucket == Counter::Forged {
                    XDP_DROP
                } else {
                    XDP_PASS
                };
                assert_eq!(verdict, want, "{}", ctx());
                model.counts[bucket as usize] += 1;
            }
            Ok(key) => {
                assert_eq!(verdict, XDP_DROP, "{}", ctx());
                let t1 = clock_ns(libc::CLOCK_MONOTONIC);
                let host = if let Some(host) = model.hosts.get_mut(&key) {
                    host.beats += 1;
                    model.counts[Counter::Heartbeat as usize] += 1;
                    Some(host)
                } else if model.hosts.len() < model.capacity {
                    let slot = model.slots.len() as u32;
                    assert_eq!(table.slot(&key), Some(slot), "new host's slot: {}", ctx());
                    model.slots.push(key);
                    model.counts[Counter::Heartbeat as usize] += 1;
                    model.counts[Counter::NewHost as usize] += 1;
                    let host = Host {
                        slot,
                        beats: 1,
                        last_seen: 0,
                    };
                    Some(model.hosts.entry(key).or_insert(host))
                } else {
                    model.counts[Counter::TableFull as usize] += 1;
                    assert_eq!(table.slot(&key), None, "refused host: {}", ctx());
                    None
                };
                if let Some(host) = host {
                    let entry = table.entry(host.slot);
                    assert_eq!(entry.beats, host.beats, "beats: {}", ctx());
                    assert!(
                        entry.last_seen_ns >= host.last_seen.max(t0) && entry.last_seen_ns <= t1,
                        "last seen {} not in [max({}, {t0}), {t1}]: {}",
                        entry.last_seen_ns,
                        host.last_seen,
                        ctx()
                    );
                    host.last_seen = entry.last_seen_ns;
                }
            }
        }
        assert_eq!(table.len(), model.slots.len(), "table length: {}", ctx());
        window.push((n, frame, expected));
        if window.len() == WINDOW || n + 1 == frames {
            check(&model, prog, table, &mut window, &repro);
        }
    }
    let elapsed = start.elapsed();
    check(&model, prog, table, &mut window, &repro);

    let rate = frames as f64 / elapsed.as_secs_f64();
    println!(
        "fuzz: {frames} frames in {:.1} s ({rate:.0} frames/s), {refused_by_kernel} shorter than 14 bytes refused by the kernel, {} hosts",
        elapsed.as_secs_f64(),
        model.slots.len()
    );
    for c in Counter::ALL {
        println!("fuzz:   {:<14} {}", c.name(), model.counts[c as usize]);
    }
    // The generator reaches every outcome often, or the run proves little.
    if frames >= DEFAULT_FRAMES {
        for c in Counter::ALL.into_iter().filter(|&c| !auth_only(c)) {
            assert!(
                model.counts[c as usize] >= 100,
                "only {} frames counted {}: the generator misses a branch",
                model.counts[c as usize],
                c.name()
            );
        }
    }
}

/// Compares the counters and the whole table with the model; on a counter
/// mismatch, replays the window's non-heartbeats (which change no state)
/// one at a time to name the frame.
fn check(
    model: &Model,
    prog: &Xdp,
    table: &HostTable,
    window: &mut Vec<(u64, Vec<u8>, Result<HostKey, Counter>)>,
    repro: &str,
) {
    for (slot, key) in model.slots.iter().enumerate() {
        let host = &model.hosts[key];
        let entry = table.entry(slot as u32);
        assert_eq!(table.key(slot as u32), *key, "slot {slot} ({repro})");
        assert_eq!(
            (entry.beats, entry.last_seen_ns),
            (host.beats, host.last_seen),
            "slot {slot} ({key:?}) changed by a frame in the window ending at {} ({repro})",
            window.last().map_or(0, |w| w.0)
        );
    }
    let got = table.counters().unwrap();
    if got != model.counts {
        let names = |c: &[u64; Counter::COUNT]| -> Vec<String> {
            Counter::ALL
                .iter()
                .map(|k| format!("{}={}", k.name(), c[*k as usize]))
                .collect()
        };
        let mut culprit = String::from("none found on replay");
        for (n, frame, expected) in window.iter() {
            let Err(bucket) = expected else { continue };
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
            "counters differ ({repro})\n program:   {:?}\n reference: {:?}\n {culprit}",
            names(&got),
            names(&model.counts)
        );
    }
    window.clear();
}

fn einval(e: &ProgramError) -> bool {
    matches!(e, ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EINVAL))
}
