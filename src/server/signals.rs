//! Process signals: SIGINT and SIGTERM (through `ctrlc`) trigger the one shutdown path; SIGHUP
//! asks for a catalog rescan instead of ending the process.

use std::sync::atomic::{AtomicBool, Ordering};

use super::Shutdown;

static RESCAN_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sighup(_: libc::c_int) {
    RESCAN_REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the handlers once per process. SIGHUP is re-registered after `ctrlc` (whose
/// `termination` feature would otherwise treat it as a shutdown).
pub fn install_signal_handlers(shutdown: &Shutdown) -> Result<(), String> {
    let sd = shutdown.clone();
    ctrlc::set_handler(move || {
        if sd.is_triggered() {
            // A second Ctrl-C: the user does not want to wait for the grace period.
            std::process::exit(130);
        }
        eprintln!("ferry: shutting down (Ctrl-C again to stop at once)");
        sd.trigger();
    })
    .map_err(|e| format!("signals: {e}"))?;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the function
    // pointer has the `extern "C" fn(c_int)` signature signal(2) expects.
    let old = unsafe {
        libc::signal(
            libc::SIGHUP,
            on_sighup as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    if old == libc::SIG_ERR {
        return Err("signals: cannot install the SIGHUP handler".into());
    }
    Ok(())
}

/// True once per SIGHUP received since the last call.
pub fn take_rescan_request() -> bool {
    RESCAN_REQUESTED.swap(false, Ordering::SeqCst)
}
