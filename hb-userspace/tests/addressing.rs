//! Only heartbeats addressed to the collector, on real packets: `hb run`
//! follows the addresses of its namespace as they change. Heartbeats to an
//! address that is not (yet) on its interface pass and are counted
//! `not_for_us`; once the address is added, heartbeats to it are recorded.

use std::{net::UdpSocket, time::Duration};

use hb_testkit::{
    collector::{Collector, is_event},
    netns::{Link, Netns},
};

/// The binary under test.
const HB: &str = env!("CARGO_BIN_EXE_hb");

const COLLECTOR_MAC: [u8; 6] = [0x02, 0x48, 0x42, 0, 0x0a, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0x48, 0x42, 0, 0x0a, 0x02];

/// Sends `PyHB` from `from` to `to`:43278, `n` times, in namespace `ns`.
fn send(ns: &Netns, from: &'static str, to: &'static str, n: usize) {
    ns.within(move || {
        let s = UdpSocket::bind((from, 0)).expect("bind in the client namespace");
        for _ in 0..n {
            s.send_to(b"PyHB", (to, 43278)).expect("send");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .unwrap();
}

#[test]
fn an_address_added_while_running_is_followed() {
    let link = Link::new(
        Netns::for_test("addra"),
        Netns::for_test("addrb"),
        "hbaddr0",
        "hbaddr1",
        Some([COLLECTOR_MAC, CLIENT_MAC]),
    )
    .expect("creating a veth pair");
    let (srv, cli) = (&link.a, &link.b);
    srv.ip(&["addr", "add", "198.18.5.1/24", "dev", &link.a_if])
        .unwrap();
    for a in ["198.18.5.2/24", "198.18.5.3/24"] {
        cli.ip(&["addr", "add", a, "dev", &link.b_if]).unwrap();
    }
    // The client reaches .9 and .10 at the collector's MAC whether or not
    // the collector has them (no ARP needed).
    let mac = COLLECTOR_MAC.map(|b| format!("{b:02x}")).join(":");
    for to in ["198.18.5.9", "198.18.5.10"] {
        cli.ip(&["neigh", "add", to, "lladdr", &mac, "dev", &link.b_if])
            .unwrap();
    }
    let collector = Collector::start(
        HB,
        srv,
        &["--iface", &link.a_if, "--timeout", "3s", "--sweep", "200ms"],
    );
    let (first, _) = collector.wait_for(Duration::from_secs(10), |v| v["event"] == "summary");
    assert!(first.is_some(), "collector printed no summary");

    // Not (yet) an address of the collector's: passed, not_for_us.
    send(cli, "198.18.5.2", "198.18.5.9", 5);
    let (counted, seen) = collector.wait_for(Duration::from_secs(3), |v| {
        v["event"] == "summary" && v["packets"]["not_for_us"].as_u64() >= Some(5)
    });
    assert!(counted.is_some(), "no not_for_us counted; saw {seen:?}");
    assert!(
        !seen.iter().any(|v| v["event"] == "new"),
        "a heartbeat to another address was recorded: {seen:?}"
    );

    srv.ip(&["addr", "add", "198.18.5.9/32", "dev", &link.a_if])
        .unwrap();
    // Within a sweep or two the program knows it; until then heartbeats to
    // it are still not_for_us, so the client keeps beating.
    let mut recorded = None;
    let mut seen = Vec::new();
    for _ in 0..20 {
        send(cli, "198.18.5.2", "198.18.5.9", 1);
        send(cli, "198.18.5.3", "198.18.5.10", 1);
        let (new, lines) = collector.wait_for(Duration::from_millis(300), |v| {
            is_event(v, "new", "198.18.5.2")
        });
        seen.extend(lines);
        if new.is_some() {
            recorded = new;
            break;
        }
    }
    assert!(
        recorded.is_some(),
        "heartbeats to the added address were not recorded; saw {seen:?}"
    );
    // The address still not the collector's: never recorded, counted.
    let before = seen
        .iter()
        .rev()
        .find(|v| v["event"] == "summary")
        .and_then(|v| v["packets"]["not_for_us"].as_u64())
        .unwrap_or(0);
    send(cli, "198.18.5.3", "198.18.5.10", 5);
    let (counted, lines) = collector.wait_for(Duration::from_secs(3), |v| {
        v["event"] == "summary" && v["packets"]["not_for_us"].as_u64() >= Some(before + 5)
    });
    seen.extend(lines);
    assert!(counted.is_some(), "not_for_us not counted; saw {seen:?}");
    assert!(
        !seen.iter().any(|v| is_event(v, "new", "198.18.5.3")),
        "a heartbeat to an address not on the collector was recorded: {seen:?}"
    );
}
