//! Ctrl-C and SIGTERM: every loop of the load test polls [`stopping`] and
//! unwinds, so the namespaces and the collector are removed by their guards.
//! If that takes too long, a watchdog kills the collectors and deletes the
//! namespaces itself.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Result, bail};

static STOP: AtomicBool = AtomicBool::new(false);
/// Collector processes alive, for the watchdog.
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Has a stop been requested?
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// An error if a stop was requested: `?` it in loops.
pub fn check() -> Result<()> {
    if stopping() {
        bail!("interrupted");
    }
    Ok(())
}

pub fn register_child(pid: i32) {
    CHILDREN.lock().unwrap().push(pid);
}

pub fn unregister_child(pid: i32) {
    CHILDREN.lock().unwrap().retain(|&p| p != pid);
}

/// Installs the handler: SIGINT and SIGTERM are blocked in this thread (call
/// it first in `main`, before any thread starts, so every thread inherits
/// the mask) and taken by a thread of their own. Children get an empty mask
/// (std resets it before exec).
pub fn install() -> Result<()> {
    // SAFETY: plain libc signal-set manipulation on local storage.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc));
        }
        set
    };
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig = 0;
                // SAFETY: waits for the signals blocked above.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if STOP.swap(true, Ordering::SeqCst) {
                    eprintln!("hb-load: second signal, cleaning up now");
                    last_resort(130);
                }
                eprintln!("hb-load: stopping (signal {sig}), cleaning up");
                thread::spawn(|| {
                    thread::sleep(Duration::from_secs(20));
                    eprintln!("hb-load: cleanup is taking too long, forcing it");
                    last_resort(130);
                });
            }
        })?;
    Ok(())
}

/// Kills the collectors, deletes the namespaces, exits.
fn last_resort(code: i32) -> ! {
    if let Ok(children) = CHILDREN.try_lock() {
        for &pid in children.iter() {
            // SAFETY: signalling our own children.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    hb_testkit::netns::cleanup_all();
    std::process::exit(code);
}
