//! The interface that carries the default route: what `hb run` watches
//! when it is given no interface. IPv4 first (/proc/net/route), then IPv6
//! (/proc/net/ipv6_route); of several default routes, the lowest metric.

use std::path::Path;

/// The default route's interface in this network namespace, if any.
pub fn interface() -> Option<String> {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    ipv4(&read("/proc/net/route")).or_else(|| ipv6(&read("/proc/net/ipv6_route")))
}

const RTF_UP: u32 = 0x1;
const RTF_REJECT: u32 = 0x200;

/// `/proc/net/route`: a header, then `Iface Destination Gateway Flags
/// RefCnt Use Metric Mask ...`, numbers in hex.
fn ipv4(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, flags, metric, mask) =
                (f.first()?, f.get(1)?, f.get(3)?, f.get(6)?, f.get(7)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let default = *dest == "00000000" && *mask == "00000000";
            (default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0)
                .then(|| Some((metric.parse::<u32>().ok()?, iface.to_string())))?
        })
        .min()
        .map(|(_, iface)| iface)
}

/// `/proc/net/ipv6_route`: `dest plen src splen nexthop metric refcnt use
/// flags iface`, numbers in hex. The kernel lists unreachable defaults on
/// `lo`, with RTF_REJECT.
fn ipv6(table: &str) -> Option<String> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, plen, metric, flags, iface) =
                (f.first()?, f.get(1)?, f.get(5)?, f.get(8)?, f.get(9)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let default = dest.bytes().all(|b| b == b'0') && *plen == "00";
            (default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && *iface != "lo")
                .then(|| Some((u32::from_str_radix(metric, 16).ok()?, iface.to_string())))?
        })
        .min()
        .map(|(_, iface)| iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_default_route() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth1\t0012A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth2\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
            eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
        assert_eq!(ipv4(table).as_deref(), Some("eth0"));
        let no_default = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
            eth1\t0012A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(ipv4(no_default), None);
        assert_eq!(ipv4(""), None);
    }

    #[test]
    fn ipv6_default_route() {
        let zero = "00000000000000000000000000000000";
        let table = format!(
            "{zero} 00 {zero} 00 {zero} ffffffff 00000001 00000000 00200200       lo\n\
             fe800000000000000000000000000000 40 {zero} 00 {zero} 00000100 00000001 00000000 00000001     eth3\n\
             {zero} 00 {zero} 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth3\n"
        );
        assert_eq!(ipv6(&table).as_deref(), Some("eth3"));
        let unreachable_only =
            format!("{zero} 00 {zero} 00 {zero} ffffffff 00000001 00000000 00200200       lo\n");
        assert_eq!(ipv6(&unreachable_only), None);
    }
}
