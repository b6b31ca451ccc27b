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
