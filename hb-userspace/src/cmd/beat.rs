//! `hb beat`: the client. Sends the 4-byte `PyHB` datagram every period, like
//! the classic PyHeartBeat client, to an IPv4 or IPv6 collector; with a
//! fleet key, the signed 32-byte form instead (see `hb_common::auth`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _, UdpSocket},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use hb_common::{MAGIC, auth, sip::siphash24};
use log::{info, warn};

use super::key;
use crate::{cli::BeatArgs, track::events::host_id};

/// Signs heartbeats: sequence numbers are `run << 32 | n`, `n` this
/// process's heartbeat count and `run` a Unix second: the second the
/// process started in (`start` waits for a fresh one, so a restarted client
/// never reuses numbers), moved on to the wall clock's second whenever that
/// passes it. So each number is `max(previous + 1, clock)` with the count
/// carried along: a client whose clock was ahead on an earlier run is
/// accepted again, without a restart, once its clock has passed that run;
/// and the collector counts a gap in `n` as lost heartbeats, a count that
/// starts again from 0 as a restart (docs/wire-format.md).
pub struct Signer {
    key: [u8; auth::KEY_LEN],
    host_id: u64,
    run: u32,
    /// The next heartbeat's `n`.
    n: u32,
}

impl Signer {
    pub fn new(key: [u8; auth::KEY_LEN], host_id: u64, run: u32) -> Self {
        Self {
            key,
            host_id,
            run,
            n: 0,
        }
    }

    /// A signer whose run starts at the next whole second of the wall clock,
    /// after sleeping until then: a previous run of the same host started
    /// in an earlier second, so its numbers are all smaller.
    pub fn start(key: [u8; auth::KEY_LEN], host_id: u64) -> Result<Self> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the system clock is before 1970")?;
        let run = u32::try_from(now.as_secs() + 1)
            .map_err(|_| anyhow!("the system clock is past 2106"))?;
        thread::sleep(Duration::from_secs(u64::from(run)).saturating_sub(now));
        Ok(Self::new(key, host_id, run))
    }

    /// The next heartbeat's payload, numbered by the wall clock now.
    pub fn sign_next(&mut self) -> [u8; auth::LEN] {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.sign_at(now)
    }

    /// The next heartbeat's payload when the wall clock reads `now` (Unix
    /// seconds): a later second than the run moves the run on, the count
    /// goes on either way.
    pub fn sign_at(&mut self, now: u64) -> [u8; auth::LEN] {
        if let Ok(now) = u32::try_from(now)
            && now > self.run
        {
            self.run = now;
        }
        let seq = u64::from(self.run) << 32 | u64::from(self.n);
        let p = auth::payload(&self.key, self.host_id, seq);
        // After 2^32 heartbeats the count wraps: a new run keeps the
        // numbers rising (the collector sees a restart).
        self.n = self.n.wrapping_add(1);
        if self.n == 0 {
            self.run = self.run.saturating_add(1);
        }
        p
    }
}

/// The default host id: a hash of /etc/machine-id (unique per installation
/// and stable across renames; hashed because it is meant to stay private),
/// or of the host name where there is none. Says which.
pub fn default_host_id() -> Result<(u64, &'static str)> {
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(id) = std::fs::read_to_string(path)
            && !id.trim().is_empty()
        {
            return Ok((host_id_of(&id), path));
        }
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").context(
        "no /etc/machine-id and no host name to derive a host id from: pass --host-id N",
    )?;
    Ok((host_id_of(&name), "the host name"))
}

/// The host id derived from a machine id (or host name): SipHash-2-4 under
/// the key `hb host id v1\0\0\0` of the text without surrounding
/// whitespace (docs/wire-format.md). Fixed: a host's id must not change
/// when hb is upgraded.
pub fn host_id_of(machine_id: &str) -> u64 {
    // Not secret: it only spreads the input over 64 bits.
    const SALT: [u8; 16] = *b"hb host id v1\0\0\0";
    siphash24(&SALT, machine_id.trim().as_bytes())
}

/// Resolves `server` (`addr`, `addr:port`, `[v6]:port`, `name`, `name:port`).
pub fn resolve(server: &str, default_port: u16) -> Result<SocketAddr> {
    if let Ok(sa) = server.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = server.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let with_port = if server.contains(':') {
        server.to_owned()
    } else {
        format!("{server}:{default_port}")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve collector address `{server}`"))?
        .next()
        .with_context(|| format!("`{server}` resolves to no address"))
}

/// One socket per address family the collectors need, so an IPv4 and an
/// IPv6 collector can both be beaten to (the same payload to each).
struct Sockets {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

impl Sockets {
    fn bind(bind: Option<IpAddr>, servers: &[SocketAddr]) -> Result<Self> {
        let open = |unspecified: IpAddr| -> Result<UdpSocket> {
            let local = SocketAddr::new(bind.unwrap_or(unspecified), 0);
            UdpSocket::bind(local).with_context(|| format!("binding to {local}"))
        };
        if let Some(ip) = bind
            && let Some(other) = servers.iter().find(|s| s.is_ipv4() != ip.is_ipv4())
        {
            bail!("--bind {ip} and collector {other} are of different address families");
        }
        Ok(Self {
            v4: servers
                .iter()
                .any(SocketAddr::is_ipv4)
                .then(|| open(Ipv4Addr::UNSPECIFIED.into()))
                .transpose()?,
            v6: servers
                .iter()
                .any(SocketAddr::is_ipv6)
                .then(|| open(Ipv6Addr::UNSPECIFIED.into()))
                .transpose()?,
        })
    }

    fn send_to(&self, payload: &[u8], server: SocketAddr) -> std::io::Result<usize> {
        let socket = if server.is_ipv4() { &self.v4 } else { &self.v6 };
        socket
            .as_ref()
            .expect("a socket for every collector's family")
            .send_to(payload, server)
    }
}

pub fn beat(args: BeatArgs) -> Result<()> {
    args.validate().map_err(|e| anyhow!(e))?;
    // Read first: a bad key file is reported before anything is sent.
    let key = args.key_file.as_deref().map(key::read).transpose()?;
    let servers = args
        .server
        .iter()
        .map(|s| resolve(s, args.port))
        .collect::<Result<Vec<_>>>()?;
    let sockets = Sockets::bind(args.bind, &servers)?;
    let mut signer = match key {
        Some(key) => {
            let id = match args.host_id {
                Some(id) => id,
                None => {
                    let (id, from) = default_host_id()?;
                    info!("host id {} (derived from {from})", host_id(id));
                    id
                }
            };
            Some(Signer::start(key, id)?)
        }
        None => None,
    };
    info!(
        "sending {} heartbeats to {} every {}",
        if signer.is_some() { "signed" } else { "PyHB" },
        servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" and "),
        humantime::format_duration(args.period)
    );
    let mut sent = 0u64;
    let mut next = Instant::now();
    loop {
        let signed;
        let payload: &[u8] = match signer.as_mut() {
            Some(s) => {
                signed = s.sign_next();
                &signed
            }
            None => &MAGIC,
        };
        // A collector that is down or unreachable must not stop the client
        // (nor keep the others from hearing it): it keeps beating and the
        // collector sees it when it is back.
        for &server in &servers {
            if let Err(e) = sockets.send_to(payload, server) {
                warn!("sending to {server}: {e}");
            }
        }
        sent += 1;
        if args.count.is_some_and(|n| sent >= n) {
            return Ok(());
        }
        next += args.period;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_form() {
        assert_eq!(
            resolve("127.0.0.1", 43278).unwrap(),
            "127.0.0.1:43278".parse().unwrap()
        );
        assert_eq!(
            resolve("127.0.0.1:9", 43278).unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert_eq!(
            resolve("::1", 43278).unwrap(),
            "[::1]:43278".parse().unwrap()
        );
        assert_eq!(
            resolve("[::1]", 43278).unwrap(),
            "[::1]:43278".parse().unwrap()
        );
        assert_eq!(
            resolve("[::1]:7", 43278).unwrap(),
            "[::1]:7".parse().unwrap()
        );
        assert_eq!(resolve("localhost", 5).unwrap().port(), 5);
        assert!(resolve("no-such-host.invalid", 5).is_err());
    }

    #[test]
    fn sends_pyhb_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rx.local_addr().unwrap().port();
        beat(BeatArgs {
            server: vec!["127.0.0.1".into()],
            port,
            period: std::time::Duration::from_millis(1),
            bind: None,
            count: Some(3),
            key_file: None,
            host_id: None,
        })
        .unwrap();
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"PyHB");
        }
    }

    #[test]
    fn beats_to_every_collector_given() {
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6 = UdpSocket::bind("[::1]:0").unwrap();
        // A third collector that is not there must not keep the others
        // from hearing every heartbeat.
        let gone = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gone_addr = gone.local_addr().unwrap();
        drop(gone);
        beat(BeatArgs {
            server: vec![
                gone_addr.to_string(),
                v4.local_addr().unwrap().to_string(),
                v6.local_addr().unwrap().to_string(),
            ],
            port: 43278,
            period: std::time::Duration::from_millis(1),
            bind: None,
            count: Some(3),
            key_file: None,
            host_id: None,
        })
        .unwrap();
        for rx in [&v4, &v6] {
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 16];
            for _ in 0..3 {
                let n = rx.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], b"PyHB");
            }
        }
    }

    #[test]
    fn a_bind_address_of_the_other_family_is_refused() {
        let err = Sockets::bind(
            Some("127.0.0.1".parse().unwrap()),
            &["127.0.0.1:1".parse().unwrap(), "[::1]:1".parse().unwrap()],
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("different address families"),
            "{err}"
        );
    }

    #[test]
    fn signs_with_rising_sequence_numbers() {
        let key = *b"fleet key 16 byt";
        let run = 1_800_000_000u64;
        let mut s = Signer::new(key, 0x0102_0304_0506_0708, run as u32);
        let seq = |p: &[u8; 32]| u64::from_be_bytes(p[16..24].try_into().unwrap());
        for n in 0..3 {
            // The clock still in the run's second, or behind it.
            let p = s.sign_at(run - n);
            assert_eq!(&p[..8], b"PyHB\x01\0\0\0");
            assert_eq!(p[8..16], 0x0102_0304_0506_0708u64.to_be_bytes());
            assert_eq!(seq(&p), (run << 32) + n);
            let mac = siphasher::sip::SipHasher24::new_with_key(&key).hash(&p[..24]);
            assert_eq!(p[24..], mac.to_le_bytes(), "beat {n}");
        }
        // The clock passes the run: a new run, the count goes on.
        assert_eq!(seq(&s.sign_at(run + 5)), (run + 5) << 32 | 3);
        assert_eq!(seq(&s.sign_at(run + 5)), (run + 5) << 32 | 4);
        // A clock that steps back changes nothing: the numbers still rise.
        assert_eq!(seq(&s.sign_at(run)), (run + 5) << 32 | 5);
        assert_eq!(seq(&s.sign_at(run + 7)), (run + 7) << 32 | 6);
        // A count that wraps moves to the next run.
        s.n = u32::MAX;
        assert_eq!(seq(&s.sign_at(run)), (run + 7) << 32 | u64::from(u32::MAX));
        assert_eq!(seq(&s.sign_at(run)), (run + 8) << 32);
    }

    /// The promise of docs/wire-format.md: a client started while its clock
    /// is behind an earlier run's numbers sends `max(previous + 1, clock)`,
    /// so its first number after the clock passes that run is above all of
    /// the earlier run's.
    #[test]
    fn a_client_behind_an_earlier_run_passes_it_once_its_clock_does() {
        let key = *b"fleet key 16 byt";
        let earlier = (1_800_000_100u64 << 32) | 1_000_000;
        let mut s = Signer::new(key, 1, 1_800_000_000);
        let seq = |p: [u8; 32]| u64::from_be_bytes(p[16..24].try_into().unwrap());
        let mut clock = 1_800_000_000;
        let mut last = 0;
        while clock <= 1_800_000_100 {
            last = seq(s.sign_at(clock));
            assert!(last < earlier, "{last:x} before the clock passed");
            clock += 5;
        }
        let healed = seq(s.sign_at(clock));
        assert!(healed > earlier && healed > last, "{healed:x}");
    }

    /// The derivation docs/wire-format.md fixes: SipHash-2-4 under the key
    /// `hb host id v1\0\0\0` of the machine id without surrounding
    /// whitespace. The expected ids were computed outside hb, with the
    /// reference `siphasher` crate
    /// (`SipHasher24::new_with_key(b"hb host id v1\0\0\0").hash(id)`) and
    /// with a SipHash-2-4 written in Python from the paper (checked against
    /// the paper's vector); both agree.
    #[test]
    fn host_ids_derive_from_the_machine_id_by_a_fixed_rule() {
        assert_eq!(
            host_id_of("0123456789abcdef0123456789abcdef\n"),
            0xcf35_97ae_3dff_4f44
        );
        assert_eq!(
            host_id_of("b08dfa6083e7567a1921a715000001fb"),
            0x3b2d_54a8_30f7_60ca
        );
        // A host name (no machine id), with whitespace around it.
        assert_eq!(host_id_of(" collector-7\n"), 0x176d_c7d7_b00e_9984);
    }

    /// `default_host_id` hashes this machine's /etc/machine-id, as the
    /// reference implementation does by the documented rule.
    #[test]
    fn the_default_host_id_is_that_of_etc_machine_id() {
        let Some(machine_id) = std::fs::read_to_string("/etc/machine-id")
            .ok()
            .filter(|id| !id.trim().is_empty())
        else {
            eprintln!("no /etc/machine-id here: nothing to compare");
            return;
        };
        let expected = siphasher::sip::SipHasher24::new_with_key(b"hb host id v1\0\0\0")
            .hash(machine_id.trim().as_bytes());
        assert_eq!(default_host_id().unwrap(), (expected, "/etc/machine-id"));
    }

    #[test]
    fn sends_signed_datagrams() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("hb-beat-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("key");
        std::fs::write(&key_file, "00112233445566778899aabbccddeeff\n").unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rx.local_addr().unwrap().port();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        beat(BeatArgs {
            server: vec!["127.0.0.1".into()],
            port,
            period: std::time::Duration::from_millis(1),
            bind: None,
            count: Some(2),
            key_file: Some(key_file),
            host_id: Some(7),
        })
        .unwrap();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let key: [u8; 16] = core::array::from_fn(|i| (i as u8) * 0x11);
        let mut buf = [0u8; 64];
        let mut seqs = Vec::new();
        for _ in 0..2 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, 32);
            assert_eq!(buf[8..16], 7u64.to_be_bytes());
            assert_eq!(
                u64::from_le_bytes(buf[24..32].try_into().unwrap()),
                siphash24(&key, &buf[..24])
            );
            seqs.push(u64::from_be_bytes(buf[16..24].try_into().unwrap()));
        }
        // The run is a second that began after the client started (it waits
        // for a fresh one) and before it finished (it waited until then):
        // later than `before`'s second, not later than `after`'s. Bounds,
        // not one value: the clock may pass a second boundary anywhere
        // between the two readings.
        let run = seqs[0] >> 32;
        assert!(
            before.as_secs() < run && run <= after.as_secs(),
            "run {run} not in ({}, {}]",
            before.as_secs(),
            after.as_secs()
        );
        assert_eq!(seqs, [seqs[0], seqs[0] + 1]);
        assert_eq!(seqs[0] & 0xffff_ffff, 0);
    }
}
