//! What hb's tests and benchmarks share: test frames, network namespaces,
//! the reference classifier, the program loaded with defaults, and a
//! harness for a running `hb run`.
//!
//! - [`frames`]: builders of every frame the tests send, one writer per
//!   layer, and the load generator's allocation-free UDP frame writer.
//! - [`netns`]: network namespaces and veth pairs, removed on drop.
//! - [`reference`](mod@reference): what a correct parser makes of a frame,
//!   in plain Rust.
//! - [`program`]: the XDP program loaded with hb's defaults.
//! - [`layout5`]: pins as a collector of map layout 5 left them, for the
//!   migration's tests.
//! - [`maps`]: the program's own maps, found through it: the outcome
//!   counters CPU by CPU, the slot hints.
//! - [`race`]: threads pinned to CPUs of their own, racing the program in
//!   lockstep, and the proof that they raced.
//! - [`collector`]: `hb run --format json` in a namespace, its lines read
//!   (a collector that exits, prints junk or stops sweeping fails the
//!   test), and its `/metrics` parsed.
//! - [`control`]: a collector seen from outside: signals, exit codes,
//!   `hb status`, pins, the program on the interface, its stderr.
//! - [`prom`]: Prometheus and Alertmanager (Debian's packages) run for real
//!   in a test namespace, with their HTTP APIs and `promtool`/`amtool`.
//!
//! Errors: [`netns`] returns them (the load test reports them); the test
//! helpers ([`program`], [`collector`], [`control`], the `for_test`
//! constructors) panic with the cause, as a failed test should.

pub mod collector;
pub mod control;
pub mod frames;
pub mod layout5;
pub mod maps;
pub mod netns;
pub mod program;
pub mod prom;
pub mod race;
pub mod reference;
