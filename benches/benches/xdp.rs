//! Per-packet cost of the real XDP program, run by the kernel on test frames
//! with BPF_PROG_TEST_RUN, each case next to the object's empty program
//! (`hb_baseline`, which only returns XDP_PASS) measured the same way.
//!
//! Times are the kernel's own: BPF_PROG_TEST_RUN reports the average time
//! of one repeat, measured around its loop in the kernel, so the system call
//! itself (copying the frame in, building the context) is not counted. The
//! kernel reports that average in whole nanoseconds (truncated).
//!
//! Two kinds of cases:
//!
//! - The same frame over and over (`repeat` > 1 in one call): the empty
//!   program, a heartbeat from one known (hot) host (by `hb`, whose
//!   repeats come within a tick, so no interval is folded into the host's
//!   timing, and by `hb_every_fold`, which folds one every time, as every
//!   real heartbeat does), traffic that is not a
//!   heartbeat (UDP to another port over IPv4, IPv6, with a VLAN tag, with
//!   IPv4 options; TCP; ARP). The timer is read twice per call, so its cost
//!   is spread over the repeats and is negligible. In the final table these
//!   are measured on several loads of the object (see `PLACEMENTS`).
//! - A different frame every packet (`repeat` = 1, one call per packet): a
//!   heartbeat from a new host each time, and heartbeats from 1M known hosts
//!   visited in turn (cold keys: the hash map, 1M entries, and the slot
//!   arrays are far larger than the CPU caches). With `repeat` = 1 the
//!   kernel's reported time includes its own timer overhead (two clock
//!   reads, migration disable / enable) once per packet. Their baseline is
//!   therefore the empty program run exactly the same way, one packet per
//!   call, and it is that baseline's time which they are compared with.
//!
//! After criterion's groups, one table measured in one go (all cases
//! interleaved, so drift affects them alike) is printed to stdout.

use std::time::Duration;

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use criterion::Criterion;
use hb_common::{
    BASELINE_PROGRAM, Counter, DEFAULT_PORT, EVERY_FOLD_PROGRAM, HostKey, PROGRAM, auth,
    net::{ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, XDP_DROP, XDP_PASS},
};
use hb_testkit::{
    frames::{
        DST_MAC, PAYLOAD_OFFSET, SPORT, V4, arp_request, eth, hb4, ipv4_tcp, ipv4_udp, ipv6_udp,
        padded, set_ipv4_src, src_addr, udp, v4_options,
    },
    layout5, program as kit,
};
use hb_userspace::xdp::{self, AuthSettings, Loaded, Settings};

/// Known hosts visited in turn by the cold-key case: 2^20.
const COLD_HOSTS: u32 = 1 << 20;
/// Capacity of the main object: the cold hosts, the hot one, room to spare.
const MAIN_MAX_HOSTS: u32 = 2 << 20;
/// Capacity of the object that takes the new hosts; reloaded (outside the
/// measurement) when it runs out.
const NEW_MAX_HOSTS: u32 = 1 << 20;
/// The one hot host (not in the cold range 10.0.0.0/12).
const HOT_HOST: [u8; 4] = [192, 0, 2, 1];
/// An IPv6 source (documentation range).
const HOT_HOST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// Traffic that is not a heartbeat: UDP to the DNS port.
const OTHER_PORT: u16 = 53;
const OTHER_PAYLOAD: &[u8] = b"not a heartbeat";
/// Fleet key of the object that verifies signed heartbeats.
const SIGNED_KEY: [u8; 16] = *b"bench fleet key!";
/// Sequence numbers of the signed hot host: a client run, then counting.
const SIGNED_RUN: u64 = 1_800_000_000 << 32;
/// Same-frame cases in the final table are measured on this many separate
/// loads of the object: the JIT places each program at a random offset in
/// its 64-byte chunk of executable memory, and the placement alone moves a
/// 25 ns program by up to 2 ns either way. The table gives the mean over the
/// loads, and their range.
const PLACEMENTS: usize = 8;
/// Repeats per call...
const TABLE_REPEAT: u32 = 200_000;
/// ...and calls per case and load, interleaved; the minimum is taken (the
/// rest of the machine only ever adds time, and short calls see less of it).
const TABLE_ROUNDS: usize = 15;
/// Single-packet cases in the final table: packets per case (mean taken)...
const TABLE_SINGLE: u32 = 200_000;
/// ...measured in interleaved chunks of this many.
const TABLE_CHUNK: u32 = 10_000;
/// New hosts on layout 6 against layout 5 (and the empty program, their
/// baseline): rounds of one chunk of each, in a rotating order...
const NEW_ROUNDS: u32 = NEW_MAX_HOSTS / NEW_CHUNK;
/// ...of this many packets: short chunks, so that the three of a round see
/// the same machine (the one-packet rows drift between and within runs on
/// a shared machine, by more than the difference looked for). The rounds
/// fill both tables from empty to full in step: what a new host costs
/// depends on how full its table is (layout 5's hash chains grow), so
/// both are measured at the same fill, over every fill.
const NEW_CHUNK: u32 = 2_048;

fn xdp<'a>(loaded: &'a Loaded, name: &str) -> &'a Xdp {
    loaded
        .ebpf
        .program(name)
        .unwrap_or_else(|| panic!("no program {name}"))
        .try_into()
        .expect("not an XDP program")
}

/// Loads the object's empty program (`program::load` loads only hb's).
fn load_baseline(loaded: &mut Loaded) {
    let baseline: &mut Xdp = loaded
        .ebpf
        .program_mut(BASELINE_PROGRAM)
        .expect("no baseline program")
        .try_into()
        .expect("baseline is not XDP");
    baseline.load().expect("loading the baseline program");
}

/// One BPF_PROG_TEST_RUN call; returns the kernel's average time per repeat.
fn run(prog: &Xdp, frame: &[u8], repeat: u32, verdict: u32) -> Duration {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(r.return_value, verdict, "unexpected XDP verdict");
    r.duration
}

/// Checks that `frame` gets `verdict` and lands in exactly the counter
/// `outcome` (none: the empty program, which counts nothing): several cases
/// share a verdict, and a bench that measured the wrong path would say so
/// nowhere else.
fn check_outcome(
    loaded: &Loaded,
    prog: &Xdp,
    frame: &[u8],
    verdict: u32,
    outcome: Option<Counter>,
    name: &str,
) {
    let before = loaded.table.counters().expect("reading counters");
    run(prog, frame, 1, verdict);
    let after = loaded.table.counters().expect("reading counters");
    let mut expected = [0u64; Counter::COUNT];
    if let Some(c) = outcome {
        expected[c as usize] = 1;
    }
    let delta: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, expected, "{name}: counters moved unlike {outcome:?}");
}

/// `iters` runs of the same frame, `repeat` = as many as possible per call:
/// kernel time only, no system call overhead.
fn repeated(prog: &Xdp, frame: &[u8], verdict: u32, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(100_000_000) as u32;
        total += run(prog, frame, n, verdict) * n;
        left -= u64::from(n);
    }
    total
}

/// Walks the cold hosts in a scrambled order: multiplying by an odd number
/// is a bijection modulo 2^20, and consecutive packets land ~490k slots
/// apart, so neither hash buckets nor slot arrays are prefetched for them.
struct ColdCycle {
    next: u32,
}

impl ColdCycle {
    fn next_src(&mut self) -> [u8; 4] {
        let i = self.next.wrapping_mul(0x9e37_79b1) & (COLD_HOSTS - 1);
        self.next = self.next.wrapping_add(1);
        src_addr(i)
    }
}

/// `iters` single-packet calls (`repeat` = 1), each from the source
/// `src()` gives; the sum of the kernel's times, which with `repeat` = 1
/// include the kernel's timer overhead once per packet.
fn single(
    prog: &Xdp,
    frame: &mut [u8],
    verdict: u32,
    iters: u64,
    mut src: impl FnMut() -> [u8; 4],
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        set_ipv4_src(frame, src());
        total += run(prog, frame, 1, verdict);
    }
    total
}

/// An object that only ever sees new hosts.
struct NewHosts {
    loaded: Loaded,
    next: u32,
    reloads: u32,
}

impl NewHosts {
    fn new() -> Self {
        Self {
            loaded: kit::load(NEW_MAX_HOSTS),
            next: 0,
            reloads: 0,
        }
    }
}

/// A table that only ever sees new hosts (`NewHosts`, `Layout5NewHosts`).
trait FreshTable {
    /// Hosts in the current load.
    fn taken(&self) -> u64;
    /// Starts again on an empty table (untimed).
    fn reset(&mut self);
    fn program(&self) -> &Xdp;
    /// The last source sent (the next is one more).
    fn last_src(&mut self) -> &mut u32;
}

/// `iters` heartbeats to `t`, each from a host never seen before; the sum
/// of the kernel's times (timer overhead included, as in `single`).
/// Reloads the object, untimed, whenever its table is full.
fn new_hosts(t: &mut impl FreshTable, frame: &mut [u8], iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let room = u64::from(NEW_MAX_HOSTS) - t.taken();
        if room == 0 {
            t.reset();
            continue;
        }
        let n = left.min(room);
        let before = t.taken();
        let mut src = *t.last_src();
        *t.last_src() = src.wrapping_add(n as u32);
        total += single(t.program(), frame, XDP_DROP, n, || {
            src = src.wrapping_add(1);
            src_addr(src)
        });
        assert_eq!(
            t.taken(),
            before + n,
            "every heartbeat should have added a host"
        );
        left -= n;
    }
    total
}

impl FreshTable for NewHosts {
    fn taken(&self) -> u64 {
        self.loaded.table.len() as u64
    }

    fn reset(&mut self) {
        self.loaded = kit::load(NEW_MAX_HOSTS);
        self.reloads += 1;
    }

    fn program(&self) -> &Xdp {
        xdp(&self.loaded, PROGRAM)
    }

    fn last_src(&mut self) -> &mut u32 {
        &mut self.next
    }
}

/// Layout 5's program (the migration test's fixture, as hb built it before
/// the index) on maps made as a layout-5 collector made them, pinned in a
/// directory of its own: the new-host row of the table before layout 6,
/// measured in the same run as today's. Addressed like the kit's frames,
/// as the main object is, so both pay for the destination checks.
struct Layout5NewHosts {
    ebpf: aya::Ebpf,
    dir: std::path::PathBuf,
    next: u32,
    reloads: u32,
}

impl Layout5NewHosts {
    fn new() -> Self {
        hb_userspace::xdp::ensure_bpffs().expect("a bpffs to pin layout 5's maps in");
        let dir = std::path::Path::new("/sys/fs/bpf")
            .join(format!("hb-bench-layout5-{}", std::process::id()));
        let ebpf = Self::load(&dir);
        Self {
            ebpf,
            dir,
            // Its own sources, apart from the layout-6 object's (which
            // count up from 1): the two tables are separate anyway.
            next: 0,
            reloads: 0,
        }
    }

    /// An empty layout-5 table of `NEW_MAX_HOSTS` slots pinned at `dir`
    /// (made anew), and the program on it.
    fn load(dir: &std::path::Path) -> aya::Ebpf {
        let _ = std::fs::remove_dir_all(dir);
        layout5::Table {
            capacity: NEW_MAX_HOSTS,
            auth: false,
            slots: Vec::new(),
            last_sweep_ns: 0,
            counters: [0; layout5::COUNTERS],
        }
        .pin(dir);
        let mut ebpf = layout5::load_program(dir, NEW_MAX_HOSTS, None, false);
        layout5::set_local(&mut ebpf, DST_MAC, &kit::local_addrs());
        ebpf
    }
}

impl FreshTable for Layout5NewHosts {
    /// Slots taken, as layout 5's `HB_ALLOC` counts them (no slot is ever
    /// freed here).
    fn taken(&self) -> u64 {
        let alloc: aya::maps::Array<_, u64> =
            aya::maps::Array::try_from(self.ebpf.map("HB_ALLOC").expect("HB_ALLOC"))
                .expect("HB_ALLOC is an array");
        alloc.get(&0, 0).expect("reading HB_ALLOC")
    }

    fn reset(&mut self) {
        self.ebpf = Self::load(&self.dir);
        self.reloads += 1;
    }

    fn program(&self) -> &Xdp {
        self.ebpf
            .program("hb")
            .expect("layout 5's program")
            .try_into()
            .expect("an XDP program")
    }

    fn last_src(&mut self) -> &mut u32 {
        &mut self.next
    }
}

impl Drop for Layout5NewHosts {
    fn drop(&mut self) {
        // The pins would keep the maps (tens of MB) after the bench.
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

/// An object with a fleet key (signed and bare heartbeats accepted), its
/// hot signed host primed, and the next sequence number to send.
struct Signed {
    loaded: Loaded,
    next_seq: std::cell::Cell<u64>,
}

impl Signed {
    fn new() -> Self {
        let s = Self {
            loaded: kit::load_auth(
                1024,
                Some(AuthSettings {
                    key: SIGNED_KEY,
                    require: false,
                }),
            ),
            next_seq: SIGNED_RUN.into(),
        };
        let mut frame = signed_frame(SIGNED_RUN);
        s.fresh(&mut frame, 1);
        s
    }

    /// `iters` single-packet calls of the hot signed host, each with the
    /// next sequence number (signed outside the measurement).
    fn fresh(&self, frame: &mut [u8], iters: u64) -> Duration {
        let prog = xdp(&self.loaded, PROGRAM);
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let p = auth::payload(&SIGNED_KEY, 1, self.next_seq.get());
            frame[PAYLOAD_OFFSET..].copy_from_slice(&p);
            self.next_seq.set(self.next_seq.get() + 1);
            total += run(prog, frame, 1, XDP_DROP);
        }
        total
    }
}

/// A signed heartbeat of host id 1 from the hot host.
fn signed_frame(seq: u64) -> Vec<u8> {
    ipv4_udp(HOT_HOST, DEFAULT_PORT, &auth::payload(&SIGNED_KEY, 1, seq))
}

struct Frames {
    hot: Vec<u8>,
    other_port: Vec<u8>,
    tcp: Vec<u8>,
    arp: Vec<u8>,
    /// Rewritten with a new source before every single-packet run.
    scratch: Vec<u8>,
}

fn main() {
    let quiet_list = std::env::args().any(|a| a == "--list");
    let mut main = kit::load(MAIN_MAX_HOSTS);
    load_baseline(&mut main);

    let frames = Frames {
        hot: hb4(&[], HOT_HOST),
        other_port: ipv4_udp(HOT_HOST, OTHER_PORT, OTHER_PAYLOAD),
        tcp: ipv4_tcp(HOT_HOST, DEFAULT_PORT),
        arp: padded(eth(&[], ETH_P_ARP, &arp_request([198, 18, 0, 2])), 0),
        scratch: hb4(&[], HOT_HOST),
    };

    // The hot host, then every cold one, once each.
    {
        let hb = xdp(&main, PROGRAM);
        run(hb, &frames.hot, 1, XDP_DROP);
        let mut scratch = frames.scratch.clone();
        let started = std::time::Instant::now();
        for i in 0..COLD_HOSTS {
            set_ipv4_src(&mut scratch, src_addr(i));
            run(hb, &scratch, 1, XDP_DROP);
        }
        let counters = main.table.counters().expect("reading counters");
        assert_eq!(main.table.len(), COLD_HOSTS as usize + 1);
        assert_eq!(
            counters[Counter::NewHost as usize],
            u64::from(COLD_HOSTS) + 1
        );
        eprintln!(
            "xdp bench: {} cold hosts added in {:.2?}",
            COLD_HOSTS,
            started.elapsed()
        );
    }

    let mut new_hosts = NewHosts::new();
    let mut new5 = Layout5NewHosts::new();
    // No plots: with whole-nanosecond kernel times some distributions are
    // degenerate, which the plotters backend cannot draw.
    // No HTML report: the kernel reports whole nanoseconds, so samples are
    // often all equal and criterion's plotting panics on zero variance.
    let mut c = Criterion::default().without_plots().configure_from_args();
    same_frame_group(&mut c, &main, &frames);
    single_packet_group(&mut c, &main, &frames, &mut new_hosts, &mut new5);
    c.final_summary();

    if !quiet_list {
        table(&main, &frames, &mut new_hosts, &mut new5, &Signed::new());
    }
}

fn same_frame_group(c: &mut Criterion, main: &Loaded, frames: &Frames) {
    let (hb, empty) = (xdp(main, PROGRAM), xdp(main, BASELINE_PROGRAM));
    let mut g = c.benchmark_group("xdp_same_frame");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    // Kernel-measured time of `iters` runs in as few calls as possible.
    let mut case = |name: &str, prog: &Xdp, frame: &[u8], verdict: u32, outcome| {
        check_outcome(main, prog, frame, verdict, outcome, name);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| repeated(prog, frame, verdict, iters))
        });
    };
    case("empty_program", empty, &frames.hot, XDP_PASS, None);
    let beat = Some(Counter::Heartbeat);
    case("heartbeat_hot_host", hb, &frames.hot, XDP_DROP, beat);
    let other = Some(Counter::OtherPort);
    case("udp_other_port", hb, &frames.other_port, XDP_PASS, other);
    case("ipv4_tcp", hb, &frames.tcp, XDP_PASS, Some(Counter::NotUdp));
    case("arp", hb, &frames.arp, XDP_PASS, Some(Counter::NotIp));
    g.finish();
}

fn single_packet_group(
    c: &mut Criterion,
    main: &Loaded,
    frames: &Frames,
    new: &mut NewHosts,
    new5: &mut Layout5NewHosts,
) {
    let (hb, empty) = (xdp(main, PROGRAM), xdp(main, BASELINE_PROGRAM));
    let mut g = c.benchmark_group("xdp_single_packet");
    // Criterion sizes samples from the wall time of its warm-up, so each
    // case runs for about the measurement time; the time returned is only
    // the kernel's part of it (each packet also costs a system call).
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    let mut scratch = frames.scratch.clone();
    // The baseline of this group: the empty program, one packet per call,
    // timer overhead included exactly as for the cases below.
    let mut cycle = ColdCycle { next: 0 };
    g.bench_function("empty_program_repeat1", |b| {
        b.iter_custom(|iters| single(empty, &mut scratch, XDP_PASS, iters, || cycle.next_src()))
    });
    g.bench_function("heartbeat_cold_keys_1M", |b| {
        b.iter_custom(|iters| single(hb, &mut scratch, XDP_DROP, iters, || cycle.next_src()))
    });
    g.bench_function("heartbeat_new_host", |b| {
        b.iter_custom(|iters| new_hosts(new, &mut scratch, iters))
    });
    g.bench_function("heartbeat_new_host_layout5", |b| {
        b.iter_custom(|iters| new_hosts(new5, &mut scratch, iters))
    });
    g.finish();
}

/// A same-frame case of the final table: `program` of each of `loads` on
/// `frame`, which must give `verdict`.
struct Case<'a> {
    name: &'static str,
    loads: &'a [Loaded],
    program: &'static str,
    frame: &'a [u8],
    verdict: u32,
    /// The counter the frame must land in.
    outcome: Option<Counter>,
}

/// Makes cases of `program` on each of `loads`.
fn case<'a>(
    loads: &'a [Loaded],
    program: &'static str,
) -> impl Fn(&'static str, &'a [u8], u32, Option<Counter>) -> Case<'a> {
    move |name, frame, verdict, outcome| Case {
        name,
        loads,
        program,
        frame,
        verdict,
        outcome,
    }
}

/// Loads of the object for the same-frame cases (see `PLACEMENTS`), each
/// with its empty program loaded and the hot host in the table; with `key`,
/// the hot host's signed heartbeat `SIGNED_RUN` seen too (so that it is
/// refused as a replay from then on).
fn placements(key: bool) -> Vec<Loaded> {
    (0..PLACEMENTS)
        .map(|_| {
            let auth = key.then_some(AuthSettings {
                key: SIGNED_KEY,
                require: false,
            });
            let settings = Settings {
                also_load: &[EVERY_FOLD_PROGRAM],
                ..kit::settings(1024)
            };
            let mut l = kit::addressed(
                xdp::load_auth(settings, auth).expect("loading the XDP programs (root, BPF)"),
            );
            load_baseline(&mut l);
            let hb = xdp(&l, PROGRAM);
            run(hb, &hb4(&[], HOT_HOST), 1, XDP_DROP);
            if key {
                run(hb, &signed_frame(SIGNED_RUN), 1, XDP_DROP);
            }
            l
        })
        .collect()
}

/// Intervals learned of the hot host in `l`'s table.
fn hot_samples(l: &Loaded) -> u32 {
    let slot = l
        .table
        .slot(&HostKey::from_ipv4(HOT_HOST))
        .expect("hot host in the table");
    l.table.timing(slot).samples()
}

/// One measurement of every case, in this one run, printed as markdown.
fn table(
    main: &Loaded,
    frames: &Frames,
    new: &mut NewHosts,
    new5: &mut Layout5NewHosts,
    signed: &Signed,
) {
    let (hb, empty) = (xdp(main, PROGRAM), xdp(main, BASELINE_PROGRAM));
    let keyed = xdp(&signed.loaded, PROGRAM);
    // The primed heartbeat again: verified, then refused as a replay.
    let replay = signed_frame(SIGNED_RUN);
    let mut forged = signed_frame(SIGNED_RUN + 1);
    forged[PAYLOAD_OFFSET + 24] ^= 1;
    let v6_other_port = ipv6_udp(HOT_HOST6, OTHER_PORT, OTHER_PAYLOAD);
    // `frames.other_port` behind an 802.1Q tag, and with 4 bytes of options.
    let other_datagram = udp(SPORT, OTHER_PORT, OTHER_PAYLOAD);
    let tagged_other_port = eth(
        &[ETH_P_8021Q],
        ETH_P_IPV4,
        &V4::new(HOT_HOST).build(&other_datagram),
    );
    let with_options = eth(
        &[],
        ETH_P_IPV4,
        &V4 {
            options: v4_options(1),
            ..V4::new(HOT_HOST)
        }
        .build(&other_datagram),
    );

    // Same-frame cases: on each of PLACEMENTS loads, TABLE_ROUNDS calls of
    // TABLE_REPEAT repeats, round-robin over cases and loads; the minimum of
    // the kernel's per-repeat times per load, then the mean over the loads.
    let plain = placements(false);
    let with_key = placements(true);
    let (on_empty, on_plain, on_fold, on_keyed) = (
        case(&plain, BASELINE_PROGRAM),
        case(&plain, PROGRAM),
        case(&plain, EVERY_FOLD_PROGRAM),
        case(&with_key, PROGRAM),
    );
    let same = [
        on_empty("empty program", &frames.hot, XDP_PASS, None),
        on_plain(
            "heartbeat, hot host",
            &frames.hot,
            XDP_DROP,
            Some(Counter::Heartbeat),
        ),
        on_fold(
            "heartbeat, hot host, timing folded in (hb_every_fold: as real heartbeats, a tick or more apart)",
            &frames.hot,
            XDP_DROP,
            Some(Counter::Heartbeat),
        ),
        on_plain(
            "UDP to another port",
            &frames.other_port,
            XDP_PASS,
            Some(Counter::OtherPort),
        ),
        on_plain("IPv4 TCP", &frames.tcp, XDP_PASS, Some(Counter::NotUdp)),
        on_plain("ARP", &frames.arp, XDP_PASS, Some(Counter::NotIp)),
        on_plain(
            "IPv6 UDP to another port",
            &v6_other_port,
            XDP_PASS,
            Some(Counter::OtherPort),
        ),
        on_plain(
            "802.1Q-tagged UDP to another port",
            &tagged_other_port,
            XDP_PASS,
            Some(Counter::OtherPort),
        ),
        on_plain(
            "UDP to another port, IPv4 options (general path)",
            &with_options,
            XDP_PASS,
            Some(Counter::OtherPort),
        ),
        on_keyed(
            "bare heartbeat, hot host, key configured",
            &frames.hot,
            XDP_DROP,
            Some(Counter::Heartbeat),
        ),
        on_keyed(
            "signed heartbeat, replayed (MAC verified, refused)",
            &replay,
            XDP_DROP,
            Some(Counter::Replayed),
        ),
        on_keyed(
            "signed heartbeat, bad MAC",
            &forged,
            XDP_DROP,
            Some(Counter::Forged),
        ),
    ];
    for c in &same {
        for l in c.loads {
            check_outcome(l, xdp(l, c.program), c.frame, c.verdict, c.outcome, c.name);
        }
    }
    // The folding program folds: the hot host learns intervals (a run of
    // frames within a tick, each an interval of 1; one that spans a tick
    // may be long, which Karn's rule leaves out).
    for l in &plain {
        let before = hot_samples(l);
        run(xdp(l, EVERY_FOLD_PROGRAM), &frames.hot, 1000, XDP_DROP);
        let after = hot_samples(l);
        assert!(
            after > before || after == 255,
            "hb_every_fold folded no interval into the hot host's timing ({before} then {after} intervals learned)"
        );
    }
    let mut best = vec![[f64::MAX; PLACEMENTS]; same.len()];
    for _ in 0..TABLE_ROUNDS {
        for (i, c) in same.iter().enumerate() {
            for (k, l) in c.loads.iter().enumerate() {
                let d = run(xdp(l, c.program), c.frame, TABLE_REPEAT, c.verdict);
                best[i][k] = best[i][k].min(d.as_nanos() as f64);
            }
        }
    }
    let same_ns: Vec<(f64, f64, f64)> = best
        .iter()
        .map(|b| {
            let mean = b.iter().sum::<f64>() / b.len() as f64;
            let lo = b.iter().copied().fold(f64::MAX, f64::min);
            let hi = b.iter().copied().fold(f64::MIN, f64::max);
            (mean, lo, hi)
        })
        .collect();

    // Single-packet cases: TABLE_SINGLE packets each, in interleaved chunks;
    // mean of the kernel's per-packet times (timer overhead included).
    let mut scratch = frames.scratch.clone();
    let mut cycle = ColdCycle { next: 0 };
    let mut signed_scratch = signed_frame(SIGNED_RUN);
    let mut totals = [Duration::ZERO; 4];
    for _ in 0..TABLE_SINGLE / TABLE_CHUNK {
        let n = u64::from(TABLE_CHUNK);
        totals[0] += single(empty, &mut scratch, XDP_PASS, n, || cycle.next_src());
        totals[1] += single(hb, &mut scratch, XDP_DROP, n, || cycle.next_src());
        totals[2] += signed.fresh(&mut signed_scratch, n);
        // The same host unsigned, run the same way: what signing adds.
        totals[3] += single(keyed, &mut scratch, XDP_DROP, n, || HOT_HOST);
    }
    let table = &signed.loaded.table;
    let slot = table
        .slot(&HostKey::from_host_id(1))
        .expect("signed host in the table");
    assert_eq!(
        table.entry(slot).beats,
        1 + TABLE_SINGLE,
        "every fresh signed heartbeat should have been accepted"
    );
    let single_ns = totals.map(|d| d.as_nanos() as f64 / f64::from(TABLE_SINGLE));

    // A new host, layout 6 against layout 5, with their own baseline: the
    // three chunks of a round in an order that rotates, so that none
    // always follows the same case; ratios per round, then their median
    // (a round that the machine disturbed is one outlier, not a drift).
    new.reset();
    new5.reset();
    let mut new_totals = [Duration::ZERO; 3];
    let mut six_to_five = Vec::new();
    let n = u64::from(NEW_CHUNK);
    for round in 0..NEW_ROUNDS {
        let mut t = [Duration::ZERO; 3];
        for k in 0..3 {
            let case = (round + k) % 3;
            t[case as usize] = match case {
                0 => single(empty, &mut scratch, XDP_PASS, n, || cycle.next_src()),
                1 => new_hosts(new, &mut scratch, n),
                _ => new_hosts(new5, &mut scratch, n),
            };
        }
        six_to_five.push(t[1].as_secs_f64() / t[2].as_secs_f64());
        for (sum, d) in new_totals.iter_mut().zip(t) {
            *sum += d;
        }
    }
    let new_ns = new_totals.map(|d| d.as_nanos() as f64 / f64::from(NEW_ROUNDS * NEW_CHUNK));

    println!();
    println!(
        "XDP per-packet cost, kernel-measured (BPF_PROG_TEST_RUN), one run. \
         Same-frame cases: {PLACEMENTS} loads of the object (the JIT places a program \
         at a random offset), on each the minimum of {TABLE_ROUNDS} calls x \
         repeat={TABLE_REPEAT} (the kernel reports whole ns per packet); mean over the \
         loads, and their range. One-packet-per-call cases: mean of {TABLE_SINGLE} \
         calls x repeat=1, kernel timer overhead included in them and in their \
         baseline alike."
    );
    println!();
    println!("| case | ns/packet | range over loads | ratio to empty program |");
    println!("| --- | ---: | ---: | ---: |");
    let empty_ns = same_ns[0].0;
    for (Case { name, .. }, (ns, lo, hi)) in same.iter().zip(&same_ns) {
        println!(
            "| {name} (repeat={TABLE_REPEAT}) | {ns:.2} | {lo:.0}–{hi:.0} | {:.3} |",
            ns / empty_ns
        );
    }
    let single_names = [
        "empty program (repeat=1, baseline of the rows below)",
        "heartbeat, cold keys: 1M known hosts in turn (repeat=1)",
        "signed heartbeat, hot host, next sequence number every packet (repeat=1)",
        "bare heartbeat, hot host, key configured (repeat=1)",
    ];
    for (name, ns) in single_names.iter().zip(single_ns) {
        println!("| {name} | {ns:.1} | | {:.2} |", ns / single_ns[0]);
    }
    let new_names = [
        "empty program (repeat=1, baseline of the two rows below, measured with them)",
        "heartbeat, new host every packet (repeat=1)",
        "heartbeat, new host every packet, layout 5's program (repeat=1)",
    ];
    for (name, ns) in new_names.iter().zip(new_ns) {
        println!("| {name} | {ns:.1} | | {:.2} |", ns / new_ns[0]);
    }
    println!();
    // Medians of the rounds of each quarter of the fill.
    let quarters: Vec<String> = six_to_five
        .chunks(six_to_five.len() / 4)
        .map(|c| {
            let mut c = c.to_vec();
            c.sort_by(f64::total_cmp);
            format!("{:.3}", c[c.len() / 2])
        })
        .collect();
    six_to_five.sort_by(f64::total_cmp);
    let q = |f: f64| six_to_five[((six_to_five.len() - 1) as f64 * f) as usize];
    println!(
        "New host, layout 6 / layout 5, this run, both tables filled from empty to \
         full in step: {:.3} (means of {} packets each); per round of {NEW_CHUNK}: \
         median {:.3}, quartiles {:.3}–{:.3}, range {:.3}–{:.3} over {NEW_ROUNDS} rounds; \
         median per quarter of the fill: {}",
        new_ns[1] / new_ns[2],
        NEW_ROUNDS * NEW_CHUNK,
        q(0.5),
        q(0.25),
        q(0.75),
        six_to_five[0],
        six_to_five[six_to_five.len() - 1],
        quarters.join(", "),
    );
    println!();
    println!(
        "(new-host objects of {NEW_MAX_HOSTS} slots reloaded outside the measurement: \
         layout 6 {} time(s), layout 5 {} time(s))",
        new.reloads, new5.reloads
    );
}
