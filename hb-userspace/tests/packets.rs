//! Every packet case the XDP program must handle, run through the real
//! program with BPF_PROG_TEST_RUN: the verdict, the outcome counters (each
//! frame lands in exactly one bucket; `new_host` only with `heartbeat`) and
//! the table (a heartbeat stamps exactly its host; nothing else changes it).

mod frames;

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use hb_common::{Counter, HostKey};
use hb_userspace::{
    clock::monotonic_ns,
    program::{self, Loaded, Settings},
};

use frames::*;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// A loaded program and the table state the cases are checked against.
struct Probe {
    loaded: Loaded,
}

/// What one frame did.
#[derive(Debug)]
struct Outcome {
    verdict: u32,
    /// Counter deltas, indexed by `Counter as usize`.
    counts: [u64; Counter::COUNT],
}

impl Probe {
    fn new(settings: Settings) -> Self {
        Self {
            loaded: program::load(settings).expect("loading hb (root needed)"),
        }
    }

    fn default() -> Self {
        Self::new(Settings {
            port: 43278,
            pass_heartbeats: false,
            max_hosts: 1024,
        })
    }

    fn prog(&self) -> &Xdp {
        self.loaded
            .ebpf
            .program(hb_common::PROGRAM)
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// Runs `frame`; None if the kernel refuses it as input (too short).
    fn try_run(&self, frame: &[u8]) -> Option<Outcome> {
        let before = self.loaded.counters.read().unwrap();
        let r = self
            .prog()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::new()
            })
            .ok()?;
        let after = self.loaded.counters.read().unwrap();
        let mut counts = [0; Counter::COUNT];
        for i in 0..Counter::COUNT {
            counts[i] = after[i] - before[i];
        }
        Some(Outcome {
            verdict: r.return_value,
            counts,
        })
    }

    fn run(&self, frame: &[u8]) -> Outcome {
        self.try_run(frame)
            .unwrap_or_else(|| panic!("kernel refused a {}-byte frame", frame.len()))
    }

    /// Every slot's (key, beats), to see that a frame changed nothing.
    fn snapshot(&self) -> Vec<(HostKey, u64, u64)> {
        let t = &self.loaded.table;
        (0..t.len() as u32)
            .map(|s| {
                let e = t.entry(s);
                (t.key(s), e.beats, e.last_seen_ns)
            })
            .collect()
    }

    /// Runs a frame that is not a heartbeat: passes, counted once as
    /// `reason`, table untouched.
    fn expect_miss(&self, what: &str, frame: &[u8], reason: Counter) {
        let before = self.snapshot();
        let o = self.run(frame);
        assert_eq!(o.verdict, XDP_PASS, "{what}: verdict");
        assert_eq!(o.counts, only(reason), "{what}: counters");
        assert_eq!(self.snapshot(), before, "{what}: table changed");
    }

    /// Runs a heartbeat from `key`: dropped (or passed with
    /// `pass_heartbeats`), counted, and only that host's entry moves.
    fn expect_heartbeat(&self, what: &str, frame: &[u8], key: HostKey, verdict: u32) {
        let table = &self.loaded.table;
        let before = table.get(&key);
        let others: Vec<_> = self
            .snapshot()
            .into_iter()
            .filter(|(k, ..)| *k != key)
            .collect();
        let t0 = monotonic_ns();
        let o = self.run(frame);
        assert_eq!(o.verdict, verdict, "{what}: verdict");
        let mut expected = only(Counter::Heartbeat);
        if before.is_none() {
            expected[Counter::NewHost as usize] = 1;
        }
        assert_eq!(o.counts, expected, "{what}: counters");
        let entry = table
            .get(&key)
            .unwrap_or_else(|| panic!("{what}: not stamped"));
        assert_eq!(
            entry.beats,
            before.map_or(1, |b| b.beats + 1),
            "{what}: beats"
        );
        // The coarse clock lags a fine reading by at most a tick (<= 10 ms).
        assert!(
            entry.last_seen_ns + 10_000_000 >= t0 && entry.last_seen_ns <= monotonic_ns(),
            "{what}: last seen {} not around now {t0}",
            entry.last_seen_ns
        );
        let others_after: Vec<_> = self
            .snapshot()
            .into_iter()
            .filter(|(k, ..)| *k != key)
            .collect();
        assert_eq!(others_after, others, "{what}: another host changed");
    }
}

fn only(c: Counter) -> [u64; Counter::COUNT] {
    let mut v = [0; Counter::COUNT];
    v[c as usize] = 1;
    v
}

const SRC4: [u8; 4] = [198, 18, 0, 2];
const SRC6: [u8; 16] = [0xfd, 0, 0x48, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn key4(src: [u8; 4]) -> HostKey {
    HostKey::from_ipv4(src)
}

#[test]
fn heartbeats_of_every_shape_are_stamped() {
    let p = Probe::default();
    let hb4 = |src, tags: &[u16]| eth(tags, ETH_IPV4, &ipv4(src, UDP, &udp(PORT, MAGIC4)));
    // New host, then the same host again: updated in place.
    p.expect_heartbeat("IPv4", &hb4(SRC4, &[]), key4(SRC4), XDP_DROP);
    p.expect_heartbeat("IPv4 again", &hb4(SRC4, &[]), key4(SRC4), XDP_DROP);
    assert_eq!(p.loaded.table.len(), 1);
    for (i, tags) in [
        &[TPID_8021Q][..],
        &[TPID_8021AD],
        &[TPID_8021AD, TPID_8021Q],
        &[TPID_8021Q, TPID_8021Q],
    ]
    .into_iter()
    .enumerate()
    {
        let src = [198, 18, 1, i as u8];
        p.expect_heartbeat(
            &format!("tags {tags:x?}"),
            &hb4(src, tags),
            key4(src),
            XDP_DROP,
        );
    }
    // IPv4 options, every header length up to the maximum.
    for words in 6..=15u8 {
        let src = [198, 18, 2, words];
        let f = eth(
            &[],
            ETH_IPV4,
            &ipv4_with(src, UDP, &udp(PORT, MAGIC4), words, 0),
        );
        p.expect_heartbeat(&format!("IHL {words}"), &f, key4(src), XDP_DROP);
    }
    // Ethernet padding to the 60-byte minimum: the lengths say 4 bytes.
    let mut padded = hb4([198, 18, 3, 1], &[]);
    padded.resize(60, 0);
    p.expect_heartbeat("padded", &padded, key4([198, 18, 3, 1]), XDP_DROP);
    // IPv6, plain and behind extension headers.
    let k6 = HostKey::from_ipv6(SRC6);
    let f = eth(&[], ETH_IPV6, &ipv6(SRC6, &[], UDP, &udp(PORT, MAGIC4)));
    p.expect_heartbeat("IPv6", &f, k6, XDP_DROP);
    p.expect_heartbeat("IPv6 again", &f, k6, XDP_DROP);
    for (i, exts) in [
        &[(HOPOPTS, 0u8)][..],
        &[(DSTOPTS, 1)],
        &[(HOPOPTS, 0), (ROUTING, 2), (DSTOPTS, 0)],
        &[(HOPOPTS, 0), (DSTOPTS, 0), (ROUTING, 0), (DSTOPTS, 3)],
    ]
    .into_iter()
    .enumerate()
    {
        let mut src = SRC6;
        src[15] = 0x10 + i as u8;
        let f = eth(
            &[TPID_8021Q],
            ETH_IPV6,
            &ipv6(src, exts, UDP, &udp(PORT, MAGIC4)),
        );
        p.expect_heartbeat(
            &format!("IPv6 ext {exts:?}"),
            &f,
            HostKey::from_ipv6(src),
            XDP_DROP,
        );
    }
    // IPv4 and IPv6 hosts share one table, each its own slot.
    assert_eq!(p.loaded.table.len(), 1 + 4 + 10 + 1 + 1 + 4);
}

#[test]
fn everything_else_passes_untouched() {
    let p = Probe::default();
    // A known host, so that "table unchanged" is checked on a non-empty table.
    p.expect_heartbeat(
        "setup",
        &eth(&[], ETH_IPV4, &ipv4(SRC4, UDP, &udp(PORT, MAGIC4))),
        key4(SRC4),
        XDP_DROP,
    );
    let v4 = |l4: &[u8], proto| eth(&[], ETH_IPV4, &ipv4(SRC4, proto, l4));
    let v6 = |exts: &[(u8, u8)], next, l4: &[u8]| eth(&[], ETH_IPV6, &ipv6(SRC6, exts, next, l4));
    let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
        ("ARP", eth(&[], ETH_ARP, &[0u8; 28]), Counter::NotIp),
        ("LLDP", eth(&[], 0x88cc, &[0u8; 40]), Counter::NotIp),
        (
            "three VLAN tags",
            eth(
                &[TPID_8021AD, TPID_8021Q, TPID_8021Q],
                ETH_IPV4,
                &ipv4(SRC4, UDP, &udp(PORT, MAGIC4)),
            ),
            Counter::NotIp,
        ),
        (
            "IPv4 ethertype, version 6 inside",
            eth(&[], ETH_IPV4, &ipv6(SRC6, &[], UDP, &udp(PORT, MAGIC4))),
            Counter::NotIp,
        ),
        ("IPv4 TCP", v4(&[0u8; 20], TCP), Counter::NotUdp),
        (
            "IPv4 ICMP",
            v4(&[8, 0, 0, 0, 0, 0, 0, 0], ICMP),
            Counter::NotUdp,
        ),
        ("IPv6 TCP", v6(&[], TCP, &[0u8; 20]), Counter::NotUdp),
        (
            "IPv6 TCP behind a hop-by-hop header",
            v6(&[(HOPOPTS, 0)], TCP, &[0u8; 20]),
            Counter::NotUdp,
        ),
        (
            "IPv6 with five extension headers",
            v6(
                &[
                    (HOPOPTS, 0),
                    (DSTOPTS, 0),
                    (ROUTING, 0),
                    (DSTOPTS, 0),
                    (DSTOPTS, 0),
                ],
                UDP,
                &udp(PORT, MAGIC4),
            ),
            Counter::NotUdp,
        ),
        (
            "IPv4 first fragment (MF)",
            eth(
                &[],
                ETH_IPV4,
                &ipv4_with(SRC4, UDP, &udp(PORT, MAGIC4), 5, 0x2000),
            ),
            Counter::Fragment,
        ),
        (
            "IPv4 later fragment (offset)",
            eth(
                &[],
                ETH_IPV4,
                &ipv4_with(SRC4, UDP, &udp(PORT, MAGIC4), 5, 0x0001),
            ),
            Counter::Fragment,
        ),
        (
            "IPv6 fragment header",
            v6(&[], FRAGMENT, &[UDP, 0, 0, 1, 0, 0, 0, 1]),
            Counter::Fragment,
        ),
        (
            "UDP to another port",
            v4(&udp(53, MAGIC4), UDP),
            Counter::OtherPort,
        ),
        (
            "IPv6 UDP to another port",
            v6(&[], UDP, &udp(53, MAGIC4)),
            Counter::OtherPort,
        ),
        (
            "empty payload",
            v4(&udp(PORT, b""), UDP),
            Counter::WrongPayload,
        ),
        (
            "3 bytes",
            v4(&udp(PORT, b"PyH"), UDP),
            Counter::WrongPayload,
        ),
        (
            "5 bytes",
            v4(&udp(PORT, b"PyHB!"), UDP),
            Counter::WrongPayload,
        ),
        (
            "wrong 4 bytes",
            v4(&udp(PORT, b"PyHb"), UDP),
            Counter::WrongPayload,
        ),
        (
            "IPv6 5 bytes",
            v6(&[], UDP, &udp(PORT, b"PyHB\n")),
            Counter::WrongPayload,
        ),
        (
            "UDP length says 5",
            v4(&with_udp_len(udp(PORT, MAGIC4), 13), UDP),
            Counter::WrongPayload,
        ),
        (
            "IPv4 total length says 1 byte more",
            {
                let mut f = v4(&udp(PORT, MAGIC4), UDP);
                f.push(0);
                set_u16(&mut f, ETH_HLEN + 2, 33);
                f
            },
            Counter::WrongPayload,
        ),
        (
            "IPv6 payload length says 1 byte more",
            {
                let mut f = v6(&[], UDP, &udp(PORT, MAGIC4));
                f.push(0);
                set_u16(&mut f, ETH_HLEN + 4, 13);
                f
            },
            Counter::WrongPayload,
        ),
        (
            "IPv4 IHL 4",
            {
                let mut f = v4(&udp(PORT, MAGIC4), UDP);
                f[ETH_HLEN] = 0x44;
                f
            },
            Counter::Truncated,
        ),
        (
            "IHL 15 beyond the frame",
            {
                let mut f = v4(&udp(PORT, MAGIC4), UDP);
                f[ETH_HLEN] = 0x4f;
                f
            },
            Counter::Truncated,
        ),
        (
            "IPv6 extension header beyond the frame",
            {
                let mut f = v6(&[(HOPOPTS, 0)], UDP, &udp(PORT, MAGIC4));
                f[ETH_HLEN + 40 + 1] = 200;
                f
            },
            Counter::Truncated,
        ),
    ];
    for (what, frame, reason) in cases {
        p.expect_miss(what, &frame, reason);
    }
    assert_eq!(p.loaded.table.len(), 1);
}

#[test]
fn a_heartbeat_cut_at_any_length_is_never_stamped() {
    let p = Probe::default();
    let frames = [
        (
            "IPv4",
            eth(&[], ETH_IPV4, &ipv4(SRC4, UDP, &udp(PORT, MAGIC4))),
        ),
        (
            "IPv4 in QinQ",
            eth(
                &[TPID_8021AD, TPID_8021Q],
                ETH_IPV4,
                &ipv4(SRC4, UDP, &udp(PORT, MAGIC4)),
            ),
        ),
        (
            "IPv4 with options",
            eth(
                &[],
                ETH_IPV4,
                &ipv4_with(SRC4, UDP, &udp(PORT, MAGIC4), 7, 0),
            ),
        ),
        (
            "IPv6",
            eth(&[], ETH_IPV6, &ipv6(SRC6, &[], UDP, &udp(PORT, MAGIC4))),
        ),
        (
            "IPv6 with a hop-by-hop header",
            eth(
                &[TPID_8021Q],
                ETH_IPV6,
                &ipv6(SRC6, &[(HOPOPTS, 0)], UDP, &udp(PORT, MAGIC4)),
            ),
        ),
    ];
    for (what, full) in frames {
        for len in 0..full.len() {
            let cut = &full[..len];
            match p.try_run(cut) {
                Some(o) => {
                    assert_eq!(o.verdict, XDP_PASS, "{what} cut at {len}");
                    assert_eq!(o.counts, only(Counter::Truncated), "{what} cut at {len}");
                }
                // The kernel refuses test input shorter than an Ethernet
                // header; nothing else may be refused.
                None => assert!(len < ETH_HLEN, "{what}: {len}-byte frame refused"),
            }
        }
        assert_eq!(p.loaded.table.len(), 0, "{what}: a cut frame was stamped");
    }
}

#[test]
fn pass_heartbeats_stamps_and_passes() {
    let p = Probe::new(Settings {
        port: 43278,
        pass_heartbeats: true,
        max_hosts: 16,
    });
    let f = eth(&[], ETH_IPV4, &ipv4(SRC4, UDP, &udp(PORT, MAGIC4)));
    p.expect_heartbeat("passed heartbeat", &f, key4(SRC4), XDP_PASS);
    p.expect_miss(
        "other port",
        &eth(&[], ETH_IPV4, &ipv4(SRC4, UDP, &udp(53, MAGIC4))),
        Counter::OtherPort,
    );
}

#[test]
fn the_port_is_set_at_load_time() {
    let p = Probe::new(Settings {
        port: 9999,
        pass_heartbeats: false,
        max_hosts: 16,
    });
    let to = |port| eth(&[], ETH_IPV4, &ipv4(SRC4, UDP, &udp(port, MAGIC4)));
    p.expect_heartbeat("to 9999", &to(9999), key4(SRC4), XDP_DROP);
    p.expect_miss("to 43278", &to(43278), Counter::OtherPort);
    // Byte order: 9999 is 0x270f; 0x0f27 is another port.
    p.expect_miss("to 3879", &to(0x0f27), Counter::OtherPort);
}

#[test]
fn a_full_table_refuses_new_hosts_and_keeps_the_old() {
    let p = Probe::new(Settings {
        port: 43278,
        pass_heartbeats: false,
        max_hosts: 4,
    });
    let hb = |i: u8| {
        eth(
            &[],
            ETH_IPV4,
            &ipv4([198, 18, 9, i], UDP, &udp(PORT, MAGIC4)),
        )
    };
    for i in 1..=4 {
        p.expect_heartbeat("fill", &hb(i), key4([198, 18, 9, i]), XDP_DROP);
    }
    let before = p.snapshot();
    let o = p.run(&hb(5));
    // Still a heartbeat (dropped, not passed to the stack), not recorded.
    assert_eq!(o.verdict, XDP_DROP);
    assert_eq!(o.counts, only(Counter::TableFull));
    assert_eq!(p.snapshot(), before);
    assert_eq!(p.loaded.table.get(&key4([198, 18, 9, 5])), None);
    // The hosts in the table are still watched.
    for i in 1..=4 {
        p.expect_heartbeat("known", &hb(i), key4([198, 18, 9, i]), XDP_DROP);
    }
}
