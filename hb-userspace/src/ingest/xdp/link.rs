//! Where a pinned XDP link is attached. Interface names and indexes are
//! only unique within a network namespace while bpffs is shared, so a link
//! pinned under a collector's name is adopted only if it is attached to
//! that interface in this namespace: its index here is the link's
//! (`bpf_link_info.xdp.ifindex`), and the interface here runs the link's
//! program (asked over rtnetlink in this namespace; program ids are unique
//! on the machine). aya 0.14 does not expose the link's ifindex, hence the
//! raw `BPF_OBJ_GET` and `BPF_OBJ_GET_INFO_BY_FD`.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use anyhow::{Context as _, Result};

/// Where the link pinned at a path is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// To the interface asked about, in this network namespace.
    Here,
    /// To another interface, here or in another namespace (or it is not an
    /// XDP link): someone else's.
    Elsewhere { ifindex: u32, program: u32 },
    /// Nowhere: its interface was deleted. Nothing filters through it.
    Gone,
}

/// Where the link pinned at `pin` is attached, seen from `iface` in this
/// network namespace; None if nothing is pinned there.
pub fn place(pin: &Path, iface: &str) -> Result<Option<Place>> {
    let fd = match obj_get(pin) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("opening the pinned link {}", pin.display()));
        }
    };
    let info = link_info(&fd).with_context(|| format!("reading the link {}", pin.display()))?;
    if info.type_ != BPF_LINK_TYPE_XDP {
        return Ok(Some(Place::Elsewhere {
            ifindex: 0,
            program: info.prog_id,
        }));
    }
    let ifindex = info.ifindex;
    if ifindex == 0 {
        return Ok(Some(Place::Gone));
    }
    let here = if_index(iface) == Some(ifindex)
        && xdp_programs(ifindex)
            .context("asking rtnetlink which XDP program the interface runs")?
            .contains(&info.prog_id);
    Ok(Some(if here {
        Place::Here
    } else {
        Place::Elsewhere {
            ifindex,
            program: info.prog_id,
        }
    }))
}

/// Detaches the link pinned at `pin` from its interface at once, even
/// while a process (a running collector that took it over) holds it; the
/// pin itself stays. Nothing pinned there is fine.
pub fn detach(pin: &Path) -> Result<()> {
    let fd = match obj_get(pin) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| format!("opening the pinned link {}", pin.display()));
        }
    };
    // struct { __u32 link_fd; }
    let mut attr = [u64::from(fd.as_raw_fd() as u32)];
    bpf(BPF_LINK_DETACH, &mut attr, 8)
        .with_context(|| format!("detaching the link {}", pin.display()))?;
    Ok(())
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_TYPE_XDP: u32 = 6;

/// The start of `struct bpf_link_info`, with the XDP member of its union
/// (which is 8-byte aligned, so `ifindex` is at offset 16), padded to the
/// union's size: the kernel writes at most `info_len` bytes.
#[repr(C)]
#[derive(Default)]
struct LinkInfo {
    type_: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    _rest: [u32; 11],
}

fn bpf(cmd: libc::c_long, attr: &mut [u64], size: usize) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable buffer of at least `size` bytes
    // laid out as the command's union bpf_attr member.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A new fd for the object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    let mut attr = [path.as_ptr() as u64, 0];
    let fd = bpf(BPF_OBJ_GET, &mut attr, 16)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn link_info(fd: &OwnedFd) -> io::Result<LinkInfo> {
    let mut info = LinkInfo::default();
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    let mut attr = [
        u64::from(fd.as_raw_fd() as u32) | ((size_of::<LinkInfo>() as u64) << 32),
        &raw mut info as u64,
    ];
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr, 16)?;
    Ok(info)
}

const IFLA_XDP: u16 = 43;
/// IFLA_XDP_PROG_ID, then the driver, generic and hardware modes' ids.
const IFLA_XDP_PROG_IDS: std::ops::RangeInclusive<u16> = 4..=7;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The ids of the XDP programs attached to interface `ifindex` of this
/// network namespace (RTM_GETLINK, as `ip link show` asks).
fn xdp_programs(ifindex: u32) -> io::Result<Vec<u32>> {
    // SAFETY: plain socket call.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // nlmsghdr (16 bytes) + ifinfomsg (16 bytes).
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[20..24].copy_from_slice(&ifindex.to_ne_bytes());
    // SAFETY: sending from a live buffer of its length; the kernel is the
    // default destination of a netlink socket.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: receiving into a live buffer of its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_link_reply(&buf[..n as usize])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The XDP program ids in one RTM_NEWLINK reply (or its error).
fn parse_link_reply(msg: &[u8]) -> io::Result<Vec<u32>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply");
    let len = u32_at(msg, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(msg, 4).ok_or_else(bad)?;
    let msg = msg.get(..len).ok_or_else(bad)?;
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = u32_at(msg, 16).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != libc::RTM_NEWLINK {
        return Err(bad());
    }
    let mut ids = Vec::new();
    for (kind, value) in attributes(msg.get(32..).ok_or_else(bad)?) {
        if kind != IFLA_XDP {
            continue;
        }
        for (kind, value) in attributes(value) {
            if IFLA_XDP_PROG_IDS.contains(&kind)
                && let Some(id) = u32_at(value, 0)
                && id != 0
            {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// The netlink attributes in `b`: (type, value).
fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let kind = u16_at(b, 2)? & NLA_TYPE_MASK;
        let value = b.get(4..len)?;
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

/// The interface's index in this network namespace, if it exists.
pub fn if_index(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    #[test]
    fn finds_the_xdp_program_ids_of_a_link_reply() {
        let mut xdp = attr(2, &[1]);
        xdp.extend(attr(4, &77u32.to_ne_bytes()));
        xdp.extend(attr(6, &77u32.to_ne_bytes()));
        let mut body = attr(3, b"eth0\0");
        body.extend(attr(IFLA_XDP | 0x8000, &xdp));
        let mut msg = vec![0u8; 32];
        msg.extend(body);
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        assert_eq!(parse_link_reply(&msg).unwrap(), [77, 77]);

        let mut err = vec![0u8; 20];
        err[0..4].copy_from_slice(&20u32.to_ne_bytes());
        err[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert_eq!(
            parse_link_reply(&err).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
    }

    #[test]
    fn link_info_layout_matches_the_kernel() {
        // type, id, prog_id, then the union at 16; 64 bytes in all.
        assert_eq!(std::mem::offset_of!(LinkInfo, ifindex), 16);
        assert_eq!(size_of::<LinkInfo>(), 64);
    }
}
