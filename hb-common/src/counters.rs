//! The program's outcome counters.

/// Outcome counters. Every packet the program sees lands in exactly one of
/// them, except `NewHost`, which counts the subset of `Heartbeat`s that
/// added a host, and `Lost`, which counts heartbeats that never came.
/// Indices are stable: new counters are appended.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A heartbeat was recorded.
    Heartbeat = 0,
    /// ...and it was the host's first.
    NewHost = 1,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp = 2,
    /// IP, but not UDP (or behind an IPv6 extension header hb does not walk).
    NotUdp = 3,
    /// UDP to another port.
    OtherPort = 4,
    /// UDP to the heartbeat port, but the payload is not exactly `PyHB`.
    WrongPayload = 5,
    /// The frame ends inside a header or the payload.
    Truncated = 6,
    /// An IP fragment (IPv4 MF or offset, IPv6 fragment header).
    Fragment = 7,
    /// A valid heartbeat from a new host that did not fit in the table.
    TableFull = 8,
    /// A signed heartbeat whose MAC does not verify, or of an unknown version
    /// or flags.
    Forged = 9,
    /// A signed heartbeat whose sequence number is not newer than the last
    /// one accepted from its host.
    Replayed = 10,
    /// A bare `PyHB` while authentication is required.
    Unauthenticated = 11,
    /// Not a packet outcome: heartbeats missing from the sequence numbers of
    /// accepted signed heartbeats (added per gap).
    Lost = 12,
    /// A heartbeat to another MAC (not broadcast or multicast) or to an
    /// address that is not the collector's (passed untouched).
    NotForUs = 13,
    /// A heartbeat from a source no host has: unspecified, loopback,
    /// multicast, broadcast, IPv4-mapped or -compatible IPv6.
    BadSource = 14,
    /// A heartbeat whose IPv4 header checksum is wrong (passed: the kernel
    /// drops and counts it).
    BadChecksum = 15,
}

impl Counter {
    pub const COUNT: usize = 16;
    /// The packet outcomes: every packet lands in exactly one of them
    /// (`NewHost` counts a subset of `Heartbeat`), in the order output
    /// lists them.
    pub const PACKETS: &'static [Counter] = &[
        Counter::Heartbeat,
        Counter::NewHost,
        Counter::NotIp,
        Counter::NotUdp,
        Counter::OtherPort,
        Counter::WrongPayload,
        Counter::Truncated,
        Counter::Fragment,
        Counter::NotForUs,
        Counter::BadChecksum,
        Counter::BadSource,
        Counter::TableFull,
        Counter::Forged,
        Counter::Replayed,
        Counter::Unauthenticated,
    ];
    pub const ALL: [Counter; Self::COUNT] = [
        Counter::Heartbeat,
        Counter::NewHost,
        Counter::NotIp,
        Counter::NotUdp,
        Counter::OtherPort,
        Counter::WrongPayload,
        Counter::Truncated,
        Counter::Fragment,
        Counter::TableFull,
        Counter::Forged,
        Counter::Replayed,
        Counter::Unauthenticated,
        Counter::Lost,
        Counter::NotForUs,
        Counter::BadSource,
        Counter::BadChecksum,
    ];

    /// Name used in output and metrics (snake_case).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Heartbeat => "heartbeat",
            Counter::NewHost => "new_host",
            Counter::NotIp => "not_ip",
            Counter::NotUdp => "not_udp",
            Counter::OtherPort => "other_port",
            Counter::WrongPayload => "wrong_payload",
            Counter::Truncated => "truncated",
            Counter::Fragment => "fragment",
            Counter::TableFull => "table_full",
            Counter::Forged => "forged",
            Counter::Replayed => "replayed",
            Counter::Unauthenticated => "unauthenticated",
            Counter::Lost => "lost",
            Counter::NotForUs => "not_for_us",
            Counter::BadSource => "bad_source",
            Counter::BadChecksum => "bad_checksum",
        }
    }
}
