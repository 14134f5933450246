//! Gives the heap back to the system after a fleet disconnects.
//!
//! Thousands of connections leave thousands of small freed blocks spread over the allocator's
//! arenas; glibc's `free` returns memory to the system only from the top of a heap, so without
//! help the vault keeps its peak resident size after the agents go. When the open connections
//! have fallen to half of their peak (and the peak was a fleet, not a handful; the peak is
//! recorded as connections are admitted, so a fleet that came and went between two looks
//! counts), the vault asks
//! the allocator to release every free page (`malloc_trim(0)`, which also `madvise`s free pages
//! inside the arenas). Measured in `benches/fleet.rs` (docs/performance.md).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::vault::limits::Admission;

/// How often the open connections are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Fleets smaller than this are not worth a trim.
const MIN_PEAK: usize = 256;

/// Decides when to trim: after the connections fell to half of a peak of at least
/// [`MIN_PEAK`].
#[derive(Debug, Default)]
struct Trigger {
    peak: usize,
}

impl Trigger {
    /// `open`: connections open now; `peak`: the most open at once since the last look.
    fn observe(&mut self, open: usize, peak: usize) -> bool {
        self.peak = self.peak.max(open).max(peak);
        if self.peak >= MIN_PEAK && open <= self.peak / 2 {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Releases free heap pages to the system (glibc only; elsewhere nothing).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists under its own locks; it
    // takes no pointer of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The allocator's view of the heap (glibc's `mallinfo2`): bytes in live allocations, and
/// bytes the allocator holds (live + free, arenas and mmapped blocks). `None` off glibc.
/// For `GET /admin/stats` and the fleet benchmark: resident memory above `held` is not heap
/// (stacks, code); `held` above `in_use` is free memory the allocator keeps.
pub fn heap_usage() -> Option<(u64, u64)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's own counters under its own locks and
        // returns a plain struct.
        let m = unsafe { libc::mallinfo2() };
        let in_use = (m.uordblks + m.hblkhd) as u64;
        let held = (m.arena + m.hblkhd) as u64;
        Some((in_use, held))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Runs until shutdown.
pub fn spawn(admission: Arc<Admission>, shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut trigger = Trigger::default();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::vault::stopped(shutdown.clone()) => return,
            }
            let peak = admission.take_peak();
            if trigger.observe(admission.open_connections(), peak) {
                let started = std::time::Instant::now();
                let _ = tokio::task::spawn_blocking(release_free_memory).await;
                tracing::debug!(
                    ms = started.elapsed().as_millis() as u64,
                    "released free heap memory after connections dropped"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_after_a_fleet_halves_not_for_small_numbers() {
        let mut t = Trigger::default();
        assert!(
            !(0..200).any(|n| t.observe(n, n)),
            "a handful is never trimmed"
        );
        assert!(!t.observe(10, 10));
        assert!(!t.observe(15_000, 15_000));
        assert!(!t.observe(8_000, 8_000));
        assert!(t.observe(7_000, 7_000), "half of the peak: trim");
        assert!(!t.observe(6_000, 6_000), "once per drop");
        assert!(!t.observe(4_000, 4_000));
        assert!(t.observe(10, 10), "the new peak (7,000) halved again");
        // A fleet that came and went between two looks is still trimmed after.
        let mut t = Trigger::default();
        assert!(!t.observe(3, 3));
        assert!(t.observe(2, 1_000));
        release_free_memory();
        if let Some((in_use, held)) = heap_usage() {
            assert!(in_use > 0 && held >= in_use, "{in_use} {held}");
        }
    }
}
