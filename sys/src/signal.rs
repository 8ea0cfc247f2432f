//! Signal dispositions.

/// Lets SIGPIPE end the process, as command-line tools do when the reader
/// of their output goes away (`kjump info DEV | head`), rather than fail a
/// write and panic. Rust starts programs with SIGPIPE ignored.
pub fn die_on_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler
    // code; nothing else in this process handles SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
