//! The allocator setting both processes use: glibc's mmap threshold, fixed.
//!
//! glibc serves a block of at least `M_MMAP_THRESHOLD` bytes from a mapping of its own, unmapped
//! when freed; by default the threshold starts at 128 KiB and rises to the size of every large
//! block freed (up to 32 MiB), after which large buffers land in the heap, where a few live
//! small blocks around them keep their pages resident. Fixing it at [`MMAP_THRESHOLD`]:
//! - the agent (under `mlockall`, where freed heap pages cannot be handed back at all):
//!   RSS at ready with 10,000 secrets 32.3 → 27.1 MB (docs/performance.md);
//! - the vault (whose heap is trimmed after a fleet leaves, `vault::trim`): two PostgreSQL
//!   instances a minute after their first 15,000 agents left, +26 % → +16 % over their base
//!   (`cargo bench --bench fleet`, docs/performance.md).

/// Blocks at least this large get their own mapping.
pub const MMAP_THRESHOLD: usize = 64 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`]; elsewhere nothing.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let threshold = libc::c_int::try_from(MMAP_THRESHOLD).expect("fits");
        // SAFETY: mallopt sets one of the allocator's parameters under its own lock; it takes
        // no pointer of ours.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) } != 1 {
            tracing::debug!("mallopt(M_MMAP_THRESHOLD) refused");
        }
    }
}
