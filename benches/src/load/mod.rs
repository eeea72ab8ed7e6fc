//! The end-to-end load test: a generator in one network namespace simulates
//! a fleet of hosts and sends their heartbeats through a veth pair to a real
//! `hb run` in another, then compares what was sent with what the collector
//! accounted and reported.

pub mod collector;
pub mod cpu;
pub mod fleet;
pub mod frames;
pub mod generator;
pub mod signals;
pub mod topology;
