//! Heartbeat frames of simulated hosts: Ethernet + IPv4/IPv6 + UDP, valid
//! enough (lengths, UDP checksum for IPv6) that a socket would accept them.
