//! Wire constants: the heartbeat's port and payload, and the Ethernet, IP,
//! UDP and TCP numbers and header lengths hb reads (the XDP parser) or
//! writes (test frames, the load generator). All `const`, of the types the
//! parser compares them as, so it compiles to the same code as literals.

/// UDP port the classic PyHeartBeat clients send to.
pub const DEFAULT_PORT: u16 = 43278;

/// The whole heartbeat payload of a classic client.
pub const MAGIC: [u8; 4] = *b"PyHB";

/// Ethernet header: two MAC addresses and the EtherType.
pub const ETH_HLEN: usize = 14;
/// Shortest Ethernet frame, without the FCS; shorter ones are padded.
pub const ETH_ZLEN: usize = 60;

// EtherTypes.
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_LLDP: u16 = 0x88cc;
/// 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad service tag (QinQ outer tag).
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tag: hb does not walk it.
pub const ETH_P_QINQ1: u16 = 0x9100;

/// One VLAN tag: its TPID and TCI.
pub const VLAN_HLEN: usize = 4;
/// IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// IPv6 fixed header.
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
/// TCP header without options.
pub const TCP_HLEN: usize = 20;

// IP protocol numbers (IPv4 protocol, IPv6 next header).
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;

// IPv4 flags and fragment offset (one 16-bit field).
/// Don't fragment.
pub const IP_DF: u16 = 0x4000;
/// More fragments.
pub const IP_MF: u16 = 0x2000;
/// The fragment offset, in 8-byte units.
pub const IP_OFFMASK: u16 = 0x1fff;

// XDP verdicts (the kernel's `enum xdp_action`), as an XDP program returns
// them and BPF_PROG_TEST_RUN reports them.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
