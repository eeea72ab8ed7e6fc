//! Signed heartbeats in the real XDP program (BPF_PROG_TEST_RUN): the MAC
//! is verified and replays refused before any state changes, and neither
//! forgeries nor replays from spoofed sources can grow the table. MACs here
//! come from the `siphasher` crate (the kit's `signed_with`), the reference,
//! not from hb's own code.

use std::{thread, time::Duration};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use hb_common::{
    Counter, HostKey,
    net::{XDP_DROP, XDP_PASS},
};
use hb_testkit::{
    frames::{PORT, ipv4_udp, ipv6_udp, signed_with, src_addr},
    maps::PerCpuCounters,
    program as kit, race,
};
use hb_userspace::xdp::{self, AuthSettings, Loaded};
use siphasher::sip::SipHasher24;

const KEY: [u8; 16] = *b"0123456789abcdef";
/// A client run (the Unix second it started), as `hb beat` numbers them.
const RUN: u64 = 1_800_000_000 << 32;

fn signed(host_id: u64, seq: u64) -> Vec<u8> {
    signed_with(&KEY, 1, host_id, seq)
}

/// Ethernet + IPv4 + UDP to `PORT` carrying `payload`.
fn ipv4(src: [u8; 4], payload: &[u8]) -> Vec<u8> {
    ipv4_udp(src, PORT, payload)
}

/// Ethernet + IPv6 + UDP to `PORT` carrying `payload`.
fn ipv6(src: [u8; 16], payload: &[u8]) -> Vec<u8> {
    ipv6_udp(src, PORT, payload)
}

fn load(auth: Option<bool>, max_hosts: u32) -> Loaded {
    kit::load_auth(
        max_hosts,
        auth.map(|require| AuthSettings { key: KEY, require }),
    )
}

fn run(prog: &Xdp, frame: &[u8]) -> u32 {
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::new()
    })
    .expect("BPF_PROG_TEST_RUN")
    .return_value
}

struct Case {
    loaded: Loaded,
}

impl Case {
    fn new(auth: Option<bool>) -> Self {
        Self {
            loaded: load(auth, 1024),
        }
    }

    fn send(&mut self, frame: &[u8]) -> u32 {
        run(xdp::program(&mut self.loaded.ebpf).unwrap(), frame)
    }

    fn counters(&self) -> [u64; Counter::COUNT] {
        self.loaded.table.counters().unwrap()
    }

    fn count(&self, c: Counter) -> u64 {
        self.counters()[c as usize]
    }

    /// Every counter but the ones named is zero.
    fn only(&self, expected: &[(Counter, u64)]) {
        let counters = self.counters();
        for c in Counter::ALL {
            let want = expected
                .iter()
                .find(|(e, _)| *e == c)
                .map_or(0, |(_, n)| *n);
            assert_eq!(counters[c as usize], want, "counter {}", c.name());
        }
    }

    fn slot(&self, host_id: u64) -> u32 {
        self.loaded
            .table
            .slot(&HostKey::from_host_id(host_id))
            .unwrap_or_else(|| panic!("host id {host_id} not in the table"))
    }

    /// (beats, last seen, last sequence number, lost) of a signed host.
    fn state(&self, host_id: u64) -> (u32, u32, u64, u64) {
        let table = &self.loaded.table;
        let slot = self.slot(host_id);
        let e = table.entry(slot);
        (
            e.beats,
            e.last_seen,
            table.last_seq(slot).unwrap(),
            table.host(slot).lost.unwrap(),
        )
    }
}

#[test]
fn a_valid_signed_heartbeat_stamps_its_host_id() {
    let mut c = Case::new(Some(true));
    let seq = RUN + 5;
    assert_eq!(c.send(&ipv4([198, 18, 0, 2], &signed(42, seq))), XDP_DROP);
    c.only(&[(Counter::Heartbeat, 1), (Counter::NewHost, 1)]);
    let table = &c.loaded.table;
    assert_eq!(table.len(), 1);
    let slot = c.slot(42);
    let host = table.host(slot);
    assert_eq!(host.ip.to_string(), "198.18.0.2");
    assert_eq!((host.id, host.lost), (Some(42), Some(0)));
    let (beats, seen, last, lost) = c.state(42);
    assert_eq!((beats, last, lost), (1, seq, 0));
    assert_ne!(seen, 0);

    // The next one, from another address (the host moved): same slot, the
    // address follows it.
    assert_eq!(
        c.send(&ipv4([198, 18, 0, 9], &signed(42, seq + 1))),
        XDP_DROP
    );
    assert_eq!(c.loaded.table.len(), 1);
    assert_eq!(c.state(42).0, 2);
    assert_eq!(c.loaded.table.host(slot).ip.to_string(), "198.18.0.9");

    // Over IPv6 too.
    let v6: std::net::Ipv6Addr = "fd00:4842::2".parse().unwrap();
    assert_eq!(c.send(&ipv6(v6.octets(), &signed(43, RUN))), XDP_DROP);
    let host = c.loaded.table.host(c.slot(43));
    assert_eq!(
        (host.ip.to_string().as_str(), host.id),
        ("fd00:4842::2", Some(43))
    );
    c.only(&[(Counter::Heartbeat, 3), (Counter::NewHost, 2)]);
}

#[test]
fn forgeries_change_nothing() {
    let mut c = Case::new(Some(false));
    let seq = RUN + 100;
    let good = signed(7, seq);
    // Every way to get it wrong, before the host exists...
    let mut forgeries = Vec::new();
    for byte in [4, 8, 15, 16, 23, 24, 31] {
        let mut p = signed(7, seq + 1);
        p[byte] ^= 0x01;
        forgeries.push(p);
    }
    forgeries.push(signed_with(b"another fleet!!!", 1, 7, seq + 1));
    // An unknown version, correctly signed: not understood, not accepted.
    forgeries.push(signed_with(&KEY, 2, 7, seq + 1));
    let mut flags = signed(7, seq + 1);
    flags[5] = 1;
    let mac = SipHasher24::new_with_key(&KEY).hash(&flags[..24]);
    flags[24..].copy_from_slice(&mac.to_le_bytes());
    forgeries.push(flags);
    for f in &forgeries {
        assert_eq!(c.send(&ipv4([198, 18, 0, 2], f)), XDP_DROP);
    }
    let n = forgeries.len() as u64;
    c.only(&[(Counter::Forged, n)]);
    assert!(c.loaded.table.is_empty());

    // ...and after: its state stays as the valid heartbeat left it.
    assert_eq!(c.send(&ipv4([198, 18, 0, 2], &good)), XDP_DROP);
    let before = c.state(7);
    // Past a clock tick, so that a stamp would show.
    thread::sleep(Duration::from_millis(30));
    for f in &forgeries {
        assert_eq!(c.send(&ipv4([198, 18, 0, 3], f)), XDP_DROP);
    }
    assert_eq!(c.state(7), before);
    assert_eq!(c.loaded.table.host(c.slot(7)).ip.to_string(), "198.18.0.2");
    c.only(&[
        (Counter::Forged, 2 * n),
        (Counter::Heartbeat, 1),
        (Counter::NewHost, 1),
    ]);
}

#[test]
fn replays_and_older_heartbeats_change_nothing() {
    let mut c = Case::new(Some(true));
    let seq = RUN + 100;
    assert_eq!(c.send(&ipv4([198, 18, 0, 2], &signed(7, seq))), XDP_DROP);
    let before = c.state(7);
    thread::sleep(Duration::from_millis(30));
    // The same datagram again, from its own and from other addresses, and
    // an older (validly signed) one.
    for frame in [
        ipv4([198, 18, 0, 2], &signed(7, seq)),
        ipv4([198, 18, 0, 77], &signed(7, seq)),
        ipv4([198, 18, 0, 2], &signed(7, seq - 1)),
        ipv4([198, 18, 0, 2], &signed(7, 0)),
        ipv4([198, 18, 0, 2], &signed(7, RUN - 1)),
    ] {
        assert_eq!(c.send(&frame), XDP_DROP);
    }
    assert_eq!(c.state(7), before);
    assert_eq!(c.loaded.table.host(c.slot(7)).ip.to_string(), "198.18.0.2");
    c.only(&[
        (Counter::Heartbeat, 1),
        (Counter::NewHost, 1),
        (Counter::Replayed, 5),
    ]);
    // The next one is accepted.
    assert_eq!(
        c.send(&ipv4([198, 18, 0, 2], &signed(7, seq + 1))),
        XDP_DROP
    );
    let after = c.state(7);
    assert_eq!((after.0, after.2, after.3), (2, seq + 1, 0));
}

#[test]
fn gaps_in_sequence_numbers_count_as_lost() {
    let mut c = Case::new(Some(true));
    let a = [198, 18, 0, 2];
    for (seq, lost) in [
        (RUN + 1, 0),
        (RUN + 2, 0),
        // 3, 4, 5 missing.
        (RUN + 6, 3),
        (RUN + 7, 3),
        // A new client run: a jump, but no loss.
        (RUN + (1 << 32), 3),
        // 1 missing in the new run.
        (RUN + (1 << 32) + 2, 4),
    ] {
        assert_eq!(c.send(&ipv4(a, &signed(9, seq))), XDP_DROP);
        assert_eq!(c.state(9).3, lost, "after seq {seq:#x}");
        assert_eq!(c.state(9).2, seq);
    }
    // A second host's loss adds to the total.
    c.send(&ipv4(a, &signed(10, RUN)));
    c.send(&ipv4(a, &signed(10, RUN + 11)));
    assert_eq!(c.state(10).3, 10);
    c.only(&[
        (Counter::Heartbeat, 8),
        (Counter::NewHost, 2),
        (Counter::Lost, 14),
    ]);
}

#[test]
fn bare_heartbeats_are_ignored_when_auth_is_required() {
    let mut c = Case::new(Some(true));
    assert_eq!(c.send(&ipv4([198, 18, 0, 2], b"PyHB")), XDP_DROP);
    let v6: std::net::Ipv6Addr = "fd00:4842::2".parse().unwrap();
    assert_eq!(c.send(&ipv6(v6.octets(), b"PyHB")), XDP_DROP);
    c.only(&[(Counter::Unauthenticated, 2)]);
    assert!(c.loaded.table.is_empty());
    assert_eq!(c.send(&ipv4([198, 18, 0, 2], &signed(1, RUN))), XDP_DROP);
    assert_eq!(c.loaded.table.len(), 1);
    // Other payloads are still just not heartbeats.
    assert_eq!(c.send(&ipv4([198, 18, 0, 2], b"PyHX")), XDP_PASS);
    assert_eq!(c.count(Counter::WrongPayload), 1);
}

#[test]
fn mixed_fleets_accept_both_forms() {
    let mut c = Case::new(Some(false));
    assert_eq!(c.send(&ipv4([198, 18, 0, 2], b"PyHB")), XDP_DROP);
    assert_eq!(c.send(&ipv4([198, 18, 0, 3], &signed(3, RUN))), XDP_DROP);
    c.only(&[(Counter::Heartbeat, 2), (Counter::NewHost, 2)]);
    let table = &c.loaded.table;
    let bare = table.slot(&HostKey::from_ipv4([198, 18, 0, 2])).unwrap();
    assert_eq!(table.host(bare).id, None);
    assert_eq!(table.last_seq(bare), None);
    assert_eq!(table.host(c.slot(3)).ip.to_string(), "198.18.0.3");
}

#[test]
fn without_a_key_signed_payloads_are_not_heartbeats() {
    let mut c = Case::new(None);
    assert_eq!(c.send(&ipv4([198, 18, 0, 2], &signed(3, RUN))), XDP_PASS);
    c.only(&[(Counter::WrongPayload, 1)]);
    assert!(c.loaded.table.is_empty());
    assert_eq!(c.send(&ipv4([198, 18, 0, 2], b"PyHB")), XDP_DROP);
    c.only(&[
        (Counter::WrongPayload, 1),
        (Counter::Heartbeat, 1),
        (Counter::NewHost, 1),
    ]);
}

#[test]
fn bare_heartbeats_from_multicast_sources_are_bad_sources_in_every_mode() {
    // No host sends from an IPv6 multicast address, and host ids are keyed
    // under one: such a `PyHB` is `bad_source` (README, packet counters) in
    // every mode, `--require-auth` included, where the source is judged
    // before the mode; never recorded.
    let posing = HostKey::from_host_id(7).addr;
    let mcast: std::net::Ipv6Addr = "ff02::1".parse().unwrap();
    for (mode, auth) in [
        ("no key", None),
        ("key", Some(false)),
        ("--require-auth", Some(true)),
    ] {
        let mut c = Case::new(auth);
        let mut expected = vec![(Counter::BadSource, 2)];
        let before = auth.map(|_| {
            assert_eq!(c.send(&ipv4([198, 18, 0, 2], &signed(7, RUN))), XDP_DROP);
            expected.extend([(Counter::Heartbeat, 1), (Counter::NewHost, 1)]);
            let before = c.state(7);
            // Past a clock tick, so that a stamp would show.
            thread::sleep(Duration::from_millis(30));
            before
        });
        // Host id 7's own key as the source, and an ordinary multicast one.
        assert_eq!(c.send(&ipv6(posing, b"PyHB")), XDP_DROP, "{mode}");
        assert_eq!(c.send(&ipv6(mcast.octets(), b"PyHB")), XDP_DROP, "{mode}");
        if let Some(before) = before {
            assert_eq!(c.state(7), before, "{mode}");
        }
        assert_eq!(c.loaded.table.len(), usize::from(auth.is_some()), "{mode}");
        c.only(&expected);
        // From a unicast source, the mode decides.
        let v6: std::net::Ipv6Addr = "fd00:4842::2".parse().unwrap();
        assert_eq!(c.send(&ipv6(v6.octets(), b"PyHB")), XDP_DROP, "{mode}");
        if auth == Some(true) {
            assert_eq!(c.count(Counter::Unauthenticated), 1, "{mode}");
        } else {
            let key = HostKey::from_ipv6(v6.octets());
            assert!(c.loaded.table.get(&key).is_some(), "{mode}");
        }
        assert_eq!(c.count(Counter::BadSource), 2, "{mode}");
    }
}

#[test]
fn truncated_signed_heartbeats_change_nothing() {
    let mut c = Case::new(Some(true));
    let frame = ipv4([198, 18, 0, 2], &signed(5, RUN));
    // Cut inside the signed payload (after the magic, which is checked with
    // the UDP header).
    for len in 46..frame.len() {
        assert_eq!(c.send(&frame[..len]), XDP_PASS, "length {len}");
    }
    c.only(&[(Counter::Truncated, (frame.len() - 46) as u64)]);
    assert!(c.loaded.table.is_empty());
}

#[test]
fn floods_cannot_fill_the_table_when_auth_is_required() {
    const FLOOD: u32 = 20_000;
    let mut loaded = load(Some(true), 64);
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    // Junk from many sources: random host ids, numbers and MACs.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rand = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..FLOOD {
        let mut p = signed(rand(), rand());
        p[24..].copy_from_slice(&rand().to_le_bytes());
        assert_eq!(run(prog, &ipv4(src_addr(i), &p)), XDP_DROP);
    }
    // Bare heartbeats from as many sources.
    for i in 0..FLOOD {
        run(prog, &ipv4(src_addr(i), b"PyHB"));
    }
    // A captured valid heartbeat replayed from as many spoofed sources.
    let captured = signed(99, RUN + 3);
    for i in 0..FLOOD {
        run(prog, &ipv4(src_addr(i), &captured));
    }
    let counters = loaded.table.counters().unwrap();
    assert_eq!(counters[Counter::Forged as usize], u64::from(FLOOD));
    assert_eq!(
        counters[Counter::Unauthenticated as usize],
        u64::from(FLOOD)
    );
    assert_eq!(counters[Counter::Heartbeat as usize], 1);
    assert_eq!(counters[Counter::Replayed as usize], u64::from(FLOOD - 1));
    assert_eq!(counters[Counter::TableFull as usize], 0);
    assert_eq!(loaded.table.len(), 1, "the flood took slots");
    // The table still has room for the fleet.
    for id in 0..63 {
        assert_eq!(
            run(prog, &ipv4(src_addr(id), &signed(id.into(), RUN))),
            XDP_DROP
        );
    }
    assert_eq!(loaded.table.len(), 64);
    assert_eq!(
        loaded.table.counters().unwrap()[Counter::TableFull as usize],
        0
    );
}

#[test]
fn a_signed_heartbeat_is_accepted_once_across_cpus() {
    // The same fresh heartbeat raced on several CPUs, each thread pinned to
    // its own (a test run executes on its caller's CPU), in lockstep
    // rounds: every copy of heartbeat n is sent at once, after every copy
    // of n - 1 was judged. Exactly one copy of each is accepted.
    let Some(cpus) = race::cpus_to_race_on(4) else {
        return;
    };
    const ROUNDS: u64 = 2000;
    let threads = cpus.len() as u64;
    let mut loaded = load(Some(true), 16);
    let prog = xdp::program(&mut loaded.ebpf).unwrap();
    let per_cpu = PerCpuCounters::of(prog);
    let frames: Vec<Vec<u8>> = (0..ROUNDS)
        .map(|n| ipv4([198, 18, 0, 2], &signed(1, RUN + n)))
        .collect();
    let before = per_cpu.read();
    let spans: Vec<race::Span> = race::on_cpus(&cpus, |_, step| {
        for f in &frames {
            step.wait();
            assert_eq!(run(prog, f), XDP_DROP);
        }
    })
    .into_iter()
    .map(|(span, ())| span)
    .collect();
    let after = per_cpu.read();

    // They raced: all threads at work at once, each on its own CPU, and the
    // program judged every copy sent from a CPU on that CPU.
    let judged = [Counter::Heartbeat, Counter::Replayed];
    race::assert_raced(&spans, &before, &after, &judged, ROUNDS);
    let accepted_by_cpu: Vec<u64> = spans
        .iter()
        .map(|s| {
            after[s.cpu][Counter::Heartbeat as usize] - before[s.cpu][Counter::Heartbeat as usize]
        })
        .collect();
    println!("accepted by CPU {accepted_by_cpu:?}");

    let counters = loaded.table.counters().unwrap();
    let accepted = counters[Counter::Heartbeat as usize];
    let refused = counters[Counter::Replayed as usize];
    assert_eq!(accepted, ROUNDS, "copies accepted of {ROUNDS} heartbeats");
    assert_eq!(refused, ROUNDS * (threads - 1));
    let slot = loaded.table.slot(&HostKey::from_host_id(1)).unwrap();
    assert_eq!(u64::from(loaded.table.entry(slot).beats), accepted);
    assert_eq!(loaded.table.last_seq(slot), Some(RUN + ROUNDS - 1));
    assert_eq!(loaded.table.host(slot).lost, Some(0));
}
