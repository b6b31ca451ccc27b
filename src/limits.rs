//! Process limits Berth sets for itself at start (an OS-call edge, like the socket code).

/// Raise the soft limit on open files to the hard limit: every DNS TCP connection, admin and
/// proxy client holds a descriptor, and a soft limit of 1024 (a common default) is reached
/// long before the connection caps are. Logged either way, so the real limit is on record.
pub fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot read the open files limit (RLIMIT_NOFILE)");
        return;
    }
    let mut target = lim.rlim_max;
    #[cfg(target_os = "linux")]
    if target == libc::RLIM_INFINITY {
        // "Unlimited" is refused for RLIMIT_NOFILE; the kernel's ceiling is nr_open.
        if let Some(n) = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            target = n;
        }
    }
    if lim.rlim_cur >= target {
        tracing::info!(limit = lim.rlim_cur, "open files limit (RLIMIT_NOFILE)");
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        tracing::info!(
            from = lim.rlim_cur,
            to = target,
            "raised the open files limit (RLIMIT_NOFILE) to the hard limit"
        );
    } else {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, limit = lim.rlim_cur, hard = lim.rlim_max, "cannot raise the open files limit (RLIMIT_NOFILE)");
    }
}

/// The soft limit on open files now (`process_max_fds`), if it can be read.
pub fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

/// Clock ticks per second (`_SC_CLK_TCK`) and the page size in bytes: the units of the CPU
/// times and resident size in `/proc/self/stat` (`process_*` metrics).
pub fn clock_ticks_and_page_size() -> (f64, u64) {
    // SAFETY: sysconf only reads a configuration value.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (ticks.max(1) as f64, page.max(1) as u64)
}
