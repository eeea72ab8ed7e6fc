//! `hb beat`: the client. Sends the 4-byte `PyHB` datagram every period, like
//! the classic PyHeartBeat client, to an IPv4 or IPv6 collector.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _, UdpSocket},
    thread,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use hb_common::MAGIC;
use log::{info, warn};

use crate::cli::BeatArgs;

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

pub fn beat(args: BeatArgs) -> Result<()> {
    let server = resolve(&args.server, args.port)?;
    let local = match (args.bind, server) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, SocketAddr::V4(_)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        (None, SocketAddr::V6(_)) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    if local.is_ipv4() != server.is_ipv4() {
        bail!(
            "--bind {} and collector {server} are of different address families",
            local.ip()
        );
    }
    let socket = UdpSocket::bind(local).with_context(|| format!("binding to {local}"))?;
    info!(
        "sending heartbeats to {server} every {}",
        humantime::format_duration(args.period)
    );
    let mut sent = 0u64;
    let mut next = Instant::now();
    loop {
        // A collector that is down or unreachable must not stop the client:
        // it keeps beating and the collector sees it when it is back.
        if let Err(e) = socket.send_to(&MAGIC, server) {
            warn!("sending to {server}: {e}");
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
            server: "127.0.0.1".into(),
            port,
            period: std::time::Duration::from_millis(1),
            bind: None,
            count: Some(3),
        })
        .unwrap();
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"PyHB");
        }
    }
}
