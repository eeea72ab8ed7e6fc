//! What the program takes as addressed to this collector: the interface's
//! MAC and the addresses of its network namespace, written into the
//! program's global `LocalSet` (an array map of one, `.data.hb_local`) and
//! kept current.
//!
//! An rtnetlink socket subscribed to link and address changes is read,
//! without blocking, before every sweep: when anything changed, the
//! addresses are dumped again and the set rewritten if it differs. A
//! change is therefore seen within one `--sweep`, as the table itself is;
//! a quiet namespace costs one `recv` a sweep.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, Map, MapData};
use hb_common::{HostKey, LocalSet, local_bucket};
use log::{info, warn};

/// The program's view of "addressed to us".
pub struct LocalMaps {
    set: Array<MapData, LocalSet>,
    /// What the program holds now.
    written: Box<LocalSet>,
}

impl LocalMaps {
    pub fn new(set: Map) -> Result<Self> {
        Ok(Self {
            set: Array::try_from(set).context("the program's LocalSet is not an array")?,
            written: Box::new(LocalSet::EMPTY),
        })
    }

    /// Makes `mac` and `addrs` the local ones (a `None` MAC: only group
    /// MACs). Returns the addresses that did not fit (more than
    /// `LOCAL_WAYS` in a bucket); their heartbeats are `not_for_us`.
    pub fn set(&mut self, mac: Option<[u8; 6]>, addrs: &[IpAddr]) -> Result<Vec<IpAddr>> {
        let mut mac_word = [0u8; 8];
        if let Some(m) = mac {
            mac_word[..6].copy_from_slice(&m);
        }
        let mut set = Box::new(LocalSet::EMPTY);
        set.mac = u64::from_le_bytes(mac_word);
        let mut left_out = Vec::new();
        let keys: BTreeSet<HostKey> = addrs.iter().map(|a| key_of(*a)).collect();
        for key in keys {
            let b = &mut set.buckets[local_bucket(key.words()) as usize];
            match b.iter_mut().find(|k| **k == HostKey::default()) {
                Some(place) => *place = key,
                None => left_out.push(ip_of(key)),
            }
        }
        // One write of the whole set, which the kernel copies in place (as
        // it did each bucket when they were a map): a program reading it
        // meanwhile may see a changing address half old, half new, as
        // before, and what does not change is rewritten with its own bytes.
        if set != self.written {
            self.set
                .set(0, set.as_ref(), 0)
                .context("writing the program's LocalSet")?;
            self.written = set;
        }
        Ok(left_out)
    }
}

fn key_of(ip: IpAddr) -> HostKey {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    HostKey { addr: v6.octets() }
}

fn ip_of(key: HostKey) -> IpAddr {
    let v6 = Ipv6Addr::from(key.addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// Keeps [`LocalMaps`] current for the interface `iface`.
pub struct LocalWatch {
    iface: String,
    /// Subscribed to link and address changes; non-blocking.
    events: OwnedFd,
    /// What the maps were last told, to log changes once.
    last: Option<(Option<[u8; 6]>, Vec<IpAddr>)>,
}

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

impl LocalWatch {
    /// Subscribes to changes, then fills `maps` (so no change is missed).
    pub fn start(iface: &str, maps: &mut LocalMaps) -> Result<Self> {
        let events = netlink_socket(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
            .context("subscribing to address changes (rtnetlink)")?;
        let mut this = Self {
            iface: iface.to_owned(),
            events,
            last: None,
        };
        this.refresh(maps)?;
        Ok(this)
    }

    /// Before a sweep: rewrites the maps if a link or address changed.
    pub fn check(&mut self, maps: &mut LocalMaps) {
        if self.drain()
            && let Err(e) = self.refresh(maps)
        {
            // Tried again at the next change.
            warn!("reading the local addresses: {e:#}");
        }
    }

    /// Whether anything arrived (or was lost: the socket overflowed).
    fn drain(&mut self) -> bool {
        let mut any = false;
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: a valid buffer of that length.
            let n = unsafe {
                libc::recv(
                    self.events.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                any = true;
                continue;
            }
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => any,
                // ENOBUFS: changes were lost, so read everything again.
                _ => true,
            };
        }
    }

    fn refresh(&mut self, maps: &mut LocalMaps) -> Result<()> {
        let mac = hw_addr(&self.iface);
        let mut addrs = dump_addrs()?;
        addrs.sort();
        let left_out = maps.set(mac, &addrs)?;
        if !left_out.is_empty() {
            warn!(
                "{} local addresses do not fit the program's address set (too many in one bucket): heartbeats to them are passed and counted not_for_us: {left_out:?}",
                left_out.len()
            );
        }
        let now = (mac, addrs);
        if self.last.as_ref() != Some(&now) {
            info!(
                "heartbeats taken when addressed to {} ({}) at {:?}",
                self.iface,
                now.0.map_or("no MAC".to_owned(), |m| format!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                )),
                now.1
            );
            self.last = Some(now);
        }
        Ok(())
    }
}

/// A rtnetlink socket, subscribed to `groups` (0: none).
fn netlink_socket(groups: u32) -> Result<OwnedFd> {
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_nl is valid.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = groups;
    // SAFETY: a valid sockaddr_nl of that size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(fd)
}

/// Every address of this network namespace that traffic from outside can
/// be addressed to (loopback addresses are not).
pub fn dump_addrs() -> Result<Vec<IpAddr>> {
    let fd = netlink_socket(0)?;
    // nlmsghdr (16 bytes) + ifaddrmsg (8 bytes), family AF_UNSPEC.
    let mut req = [0u8; 24];
    req[0..4].copy_from_slice(&24u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETADDR.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: a valid buffer.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error()).context("RTM_GETADDR");
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32768];
    loop {
        // SAFETY: a valid buffer of that length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e).context("reading the address dump");
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(msgs[4..6].try_into().unwrap());
            if len < 16 || len > msgs.len() {
                bail!("malformed netlink message");
            }
            match kind {
                k if k == libc::NLMSG_DONE as u16 => return Ok(out),
                k if k == libc::NLMSG_ERROR as u16 => bail!("the address dump failed"),
                k if k == libc::RTM_NEWADDR => {
                    if let Some(ip) = address(&msgs[16..len])
                        && !ip.is_loopback()
                    {
                        out.push(ip);
                    }
                }
                _ => {}
            }
            msgs = msgs.get((len + 3) & !3..).unwrap_or(&[]);
        }
    }
}

/// The address of one RTM_NEWADDR message body (ifaddrmsg + attributes):
/// IFA_LOCAL where present (the local end of a point-to-point link), else
/// IFA_ADDRESS.
fn address(body: &[u8]) -> Option<IpAddr> {
    let family = i32::from(*body.first()?);
    let mut attrs = body.get(8..)?;
    let (mut addr, mut local) = (None, None);
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        let v = &attrs[4..len];
        let ip = match (family, v.len()) {
            (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).unwrap()))),
            (libc::AF_INET6, 16) => {
                Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).unwrap())))
            }
            _ => None,
        };
        match kind {
            libc::IFA_ADDRESS => addr = ip,
            libc::IFA_LOCAL => local = ip,
            _ => {}
        }
        let next = (len + 3) & !3;
        attrs = attrs.get(next..).unwrap_or(&[]);
    }
    local.or(addr)
}

/// The interface's MAC, if it has one of 6 bytes.
fn hw_addr(iface: &str) -> Option<[u8; 6]> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a valid ifreq for SIOCGIFHWADDR.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return None;
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware address.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != libc::ARPHRD_ETHER {
        return None;
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Some(mac)
}
