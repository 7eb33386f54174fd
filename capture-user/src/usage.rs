//! CPU time and peak memory of this process, for the exit summary and the metrics.

/// What `getrusage(RUSAGE_SELF)` reports, in the units the summary line prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    pub user_ms: u64,
    pub sys_ms: u64,
    /// Peak resident set size in KiB.
    pub max_rss_kb: u64,
}

/// This process's usage so far.
pub fn own() -> ProcessUsage {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ms = |tv: libc::timeval| tv.tv_sec as u64 * 1000 + tv.tv_usec as u64 / 1000;
    ProcessUsage { user_ms: ms(ru.ru_utime), sys_ms: ms(ru.ru_stime), max_rss_kb: ru.ru_maxrss as u64 }
}
