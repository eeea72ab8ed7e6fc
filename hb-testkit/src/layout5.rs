//! Pins exactly as a collector of map layout 5 left them (hb before the
//! compact table), made with raw `bpf(BPF_MAP_CREATE)` and `BPF_OBJ_PIN`,
//! so that the migration to a later layout is tested against real kernel
//! objects without an old hb binary.
//!
//! Written from layout 5's definition (hb-ebpf's `table.rs` and
//! `main.rs` at commit ee8d61f, and the tracker's told words as
//! `track/tracker.rs` documents them), never from hb's migration code: the
//! maps' types, key and value sizes, flags and names are what that
//! program created (checked against a real layout-5 collector's pins with
//! `BPF_OBJ_GET_INFO_BY_FD`).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use hb_common::{AuthSlot, HostKey};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_PIN: libc::c_long = 6;

const HASH: u32 = 1;
const ARRAY: u32 = 2;
const PERCPU_ARRAY: u32 = 6;
const QUEUE: u32 = 22;
const MMAPABLE: u32 = 1 << 10;
/// Layout 5's outcome counters.
pub const COUNTERS: usize = 16;
/// First word of a forgotten host's key.
pub const FORGOTTEN_KEY_WORD: u64 = u64::MAX;

/// What the output of the layout-5 collector was told about a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// Nothing: its `new` line was never written.
    Nothing,
    /// `new` (and `recovered`, if ever silent): alive.
    Alive,
    /// `silent`.
    Silent,
}

/// One slot of the table.
#[derive(Debug, Clone, Copy)]
pub enum Slot {
    /// A host: its key, last heartbeat (CLOCK_MONOTONIC ns), count, replay
    /// state (signed hosts, with `auth`) and what was told.
    Host {
        key: HostKey,
        last_seen_ns: u64,
        beats: u64,
        auth: Option<AuthSlot>,
        told: Told,
    },
    /// A forgotten host its collector had not yet freed (known, key
    /// forgotten, nothing recorded).
    Forgotten,
    /// A freed slot, queued in `HB_FREE`.
    Free,
}

/// A layout-5 table: slot `i` is `slots[i]`.
pub struct Table {
    pub capacity: u32,
    /// `HB_AUTH` as long as the table (a fleet key was configured).
    pub auth: bool,
    pub slots: Vec<Slot>,
    /// The tracker's last sweep told whole (CLOCK_MONOTONIC ns).
    pub last_sweep_ns: u64,
    /// Counters summed over CPUs (put on CPU 0).
    pub counters: [u64; COUNTERS],
}

fn bpf(cmd: libc::c_long, attr: &[u64; 16]) -> io::Result<i64> {
    // SAFETY: a 128-byte bpf_attr, zero beyond what the command reads.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), 128usize) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `BPF_MAP_CREATE` of a map of `kind` (`BPF_MAP_TYPE_*`), named `name`,
/// pinned at `dir/name`; panics on failure.
pub fn create(
    dir: &Path,
    name: &str,
    kind: u32,
    key: u32,
    value: u32,
    max: u32,
    flags: u32,
) -> OwnedFd {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(kind) | u64::from(key) << 32;
    attr[1] = u64::from(value) | u64::from(max) << 32;
    attr[2] = u64::from(flags);
    // map_name: bytes 28..44.
    let mut bytes = [0u8; 128];
    for (i, w) in attr.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
    }
    bytes[28..28 + name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    for (i, w) in attr.iter_mut().enumerate() {
        *w = u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
    }
    let fd = bpf(BPF_MAP_CREATE, &attr).unwrap_or_else(|e| panic!("creating {name}: {e}"));
    // SAFETY: a new fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let path = CString::new(dir.join(name).as_os_str().as_bytes()).unwrap();
    let mut pin = [0u64; 16];
    pin[0] = path.as_ptr() as u64;
    pin[1] = fd.as_raw_fd() as u64;
    bpf(BPF_OBJ_PIN, &pin).unwrap_or_else(|e| panic!("pinning {name}: {e}"));
    fd
}

/// `BPF_MAP_UPDATE_ELEM` of `value` at `key` (no key: a queue's push).
fn update(fd: &OwnedFd, key: Option<&[u8]>, value: &[u8]) {
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u64;
    attr[1] = key.map_or(0, |k| k.as_ptr() as u64);
    attr[2] = value.as_ptr() as u64;
    bpf(BPF_MAP_UPDATE_ELEM, &attr).unwrap_or_else(|e| panic!("updating a map: {e}"));
}

fn words(w: &[u64]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// The kernel's possible CPUs (a per-CPU value holds one 8-byte value each).
fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    s.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

impl Table {
    /// Pins the table's eleven maps in `dir` (created; must not exist).
    pub fn pin(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let cap = self.capacity;
        let n = self.slots.len() as u32;
        assert!(n <= cap);
        let slots = create(dir, "HB_SLOTS", HASH, 16, 4, cap, 0);
        let free = create(dir, "HB_FREE", QUEUE, 0, 4, cap, 0);
        let last_seen = create(dir, "HB_LAST_SEEN", ARRAY, 4, 8, cap, MMAPABLE);
        let beats = create(dir, "HB_BEATS", ARRAY, 4, 8, cap, MMAPABLE);
        let keys = create(dir, "HB_SLOT_KEYS", ARRAY, 4, 16, cap, MMAPABLE);
        let alloc = create(dir, "HB_ALLOC", ARRAY, 4, 8, 1, MMAPABLE);
        let bare = create(dir, "HB_BARE", ARRAY, 4, 8, 1, MMAPABLE);
        // Hints: two an element, at least as many as the table's slots
        // rounded up to a power of two.
        let hints = create(
            dir,
            "HB_HINTS",
            ARRAY,
            4,
            8,
            (cap.next_power_of_two() / 2).max(1),
            0,
        );
        let auth_len = if self.auth { cap } else { 1 };
        let auth = create(dir, "HB_AUTH", ARRAY, 4, 32, auth_len, MMAPABLE);
        let bitmap = (cap as usize).div_ceil(64);
        let tracker_len = 4 + 2 * bitmap;
        let tracker = create(dir, "HB_TRACKER", ARRAY, 4, 8, tracker_len as u32, MMAPABLE);
        let counters = create(dir, "HB_COUNTERS", PERCPU_ARRAY, 4, 8, COUNTERS as u32, 0);
        drop(hints);

        let mut told = vec![0u64; tracker_len];
        let (mut hosts, mut bare_hosts) = (0u64, 0u64);
        for (i, slot) in self.slots.iter().enumerate() {
            let idx = (i as u32).to_ne_bytes();
            let bit = |w: &mut [u64], map: usize| w[4 + map * bitmap + i / 64] |= 1 << (i % 64);
            match *slot {
                Slot::Host {
                    key,
                    last_seen_ns,
                    beats: count,
                    auth: replay,
                    told: t,
                } => {
                    update(&slots, Some(&key.addr), &(i as u32).to_ne_bytes());
                    update(&keys, Some(&idx), &key.addr);
                    update(&beats, Some(&idx), &count.to_ne_bytes());
                    update(&last_seen, Some(&idx), &last_seen_ns.to_ne_bytes());
                    if let (true, Some(a)) = (self.auth, replay) {
                        let [a0, a1] = a.addr.words();
                        update(&auth, Some(&idx), &words(&[a.seq, a.lost, a0, a1]));
                    }
                    bare_hosts += u64::from(key.host_id().is_none());
                    if t != Told::Nothing {
                        bit(&mut told, 0);
                        hosts += 1;
                    }
                    if t == Told::Silent {
                        bit(&mut told, 1);
                    }
                }
                Slot::Forgotten => {
                    update(&keys, Some(&idx), &words(&[FORGOTTEN_KEY_WORD, 0]));
                    bit(&mut told, 0);
                    hosts += 1;
                }
                Slot::Free => {
                    update(&keys, Some(&idx), &words(&[FORGOTTEN_KEY_WORD, 0]));
                    update(&free, None, &(i as u32).to_ne_bytes());
                }
            }
        }
        update(
            &alloc,
            Some(&0u32.to_ne_bytes()),
            &u64::from(n).to_ne_bytes(),
        );
        update(&bare, Some(&0u32.to_ne_bytes()), &bare_hosts.to_ne_bytes());
        // Header: last sweep told whole, every slot below `ready_upto`
        // known, known hosts, the latest sweep told anything.
        let ready_upto = (0..n as usize)
            .find(|&i| told[4 + i / 64] & (1 << (i % 64)) == 0)
            .unwrap_or(n as usize);
        told[..4].copy_from_slice(&[
            self.last_sweep_ns,
            ready_upto as u64,
            hosts,
            self.last_sweep_ns,
        ]);
        for (i, w) in told.iter().enumerate() {
            update(&tracker, Some(&(i as u32).to_ne_bytes()), &w.to_ne_bytes());
        }
        let cpus = possible_cpus();
        for (i, &total) in self.counters.iter().enumerate() {
            let mut per_cpu = vec![0u64; cpus];
            per_cpu[0] = total;
            update(&counters, Some(&(i as u32).to_ne_bytes()), &words(&per_cpu));
        }
    }
}

/// The state file a layout-5 collector left at `path` (`/run/hb/<instance>.json`):
/// its pid (`pid`, gone by now), settings, layout 5.
pub fn write_state(path: &Path, pid: u32, port: u16, timeout_ms: u64, max_hosts: u32, auth: &str) {
    let state = serde_json::json!({
        "pid": pid,
        "layout": 5,
        "port": port,
        "timeout_ms": timeout_ms,
        "sweep_ms": 1000,
        "max_hosts": max_hosts,
        "started": "2026-11-30T12:00:00.000Z",
        "auth": auth,
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, state.to_string()).unwrap();
}

/// Layout 5's XDP program, as hb built it at commit ee8d61f (hb-ebpf,
/// debug sections stripped with `llvm-objcopy --strip-debug`): the program
/// a layout-5 collector leaves recording after SIGUSR2.
static PROGRAM5: &[u8] = aya::include_bytes_aligned!("../fixtures/hb-layout5.bpf.o");

/// Loads (and verifies, does not attach) layout 5's program on the maps
/// pinned in `dir` (by [`Table::pin`], of `capacity` slots). With
/// `any_destination`, heartbeats to any address are taken; without, only
/// those to the addresses written into its `.data.hb_local` (see
/// [`set_local`]). With `key`, signed ones are verified as well as bare
/// ones. Panics on failure (for tests and benchmarks).
pub fn load_program(
    dir: &Path,
    capacity: u32,
    key: Option<[u8; 16]>,
    any_destination: bool,
) -> aya::Ebpf {
    use aya::programs::Xdp;
    let hint_mask = capacity.next_power_of_two() - 1;
    let any_dest = u8::from(any_destination);
    let mode = u8::from(key.is_some());
    let sip = key.map_or([0u64; 4], |k| hb_common::auth::state_after_header(&k).0);
    let mut loader = aya::EbpfLoader::new();
    loader
        .override_global("HB_ANY_DESTINATION", &any_dest, true)
        .override_global("HB_HINT_MASK", &hint_mask, true)
        .override_global("HB_MAX_BARE", &capacity, true)
        .override_global("HB_AUTH_MODE", &mode, true)
        .override_global("HB_SIP_STATE", &sip, true);
    for name in [
        "HB_SLOTS",
        "HB_FREE",
        "HB_LAST_SEEN",
        "HB_BEATS",
        "HB_SLOT_KEYS",
        "HB_ALLOC",
        "HB_BARE",
        "HB_HINTS",
        "HB_AUTH",
        "HB_TRACKER",
        "HB_COUNTERS",
    ] {
        loader.map_pin_path(name, dir.join(name));
    }
    let mut ebpf = loader
        .load(PROGRAM5)
        .unwrap_or_else(|e| panic!("loading layout 5's object: {e}"));
    let prog: &mut Xdp = ebpf
        .program_mut("hb")
        .expect("layout 5's program")
        .try_into()
        .expect("an XDP program");
    prog.load()
        .unwrap_or_else(|e| panic!("the kernel refused layout 5's program: {e}"));
    ebpf
}

/// Makes `mac` and `addrs` what layout 5's program, loaded by
/// [`load_program`] without `any_destination`, takes as addressed to it,
/// written as the collector writes its own (`LocalMaps`): its `LocalSet`
/// is the one hb-common defines today (unchanged since layout 5).
pub fn set_local(ebpf: &mut aya::Ebpf, mac: [u8; 6], addrs: &[std::net::IpAddr]) {
    let map = ebpf
        .take_map(hb_common::LOCAL_SET_SECTION)
        .expect("layout 5's local set");
    let left_out = hb_userspace::xdp::LocalMaps::new(map)
        .and_then(|mut local| local.set(Some(mac), addrs))
        .expect("writing layout 5's local set");
    assert!(left_out.is_empty(), "not in the local set: {left_out:?}");
}

/// Loads layout 5's program on the maps pinned in `dir` (by [`Table::pin`],
/// of `capacity` slots), attaches it to `iface` of the calling thread's
/// network namespace (generic mode) and pins its link at `link`: what a
/// layout-5 collector stopped with SIGUSR2 leaves. Heartbeats to any
/// address are taken; with `key`, signed ones are verified as well as bare
/// ones. Panics on failure (for tests).
pub fn attach_program(dir: &Path, capacity: u32, iface: &str, link: &Path, key: Option<[u8; 16]>) {
    use aya::programs::{Xdp, XdpMode, links::FdLink};
    let mut ebpf = load_program(dir, capacity, key, true);
    let prog: &mut Xdp = ebpf
        .program_mut("hb")
        .expect("layout 5's program")
        .try_into()
        .expect("an XDP program");
    let id = prog
        .attach(iface, XdpMode::Skb)
        .unwrap_or_else(|e| panic!("attaching layout 5's program to {iface}: {e}"));
    let fd_link = FdLink::try_from(prog.take_link(id).expect("the link")).expect("a bpf link");
    fd_link
        .pin(link)
        .unwrap_or_else(|e| panic!("pinning the link at {}: {e}", link.display()));
}
