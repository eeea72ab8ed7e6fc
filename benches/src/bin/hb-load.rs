//! hb-load: the end-to-end load test (see `hb_benches::load`).

fn main() {
    eprintln!("hb-load: not implemented yet");
    std::process::exit(1);
}
