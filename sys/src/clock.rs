//! The wall clock, as images record it.

/// Current time in nanoseconds since the Unix epoch (0 if the clock is
/// before it, as on a machine whose RTC was never set).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
