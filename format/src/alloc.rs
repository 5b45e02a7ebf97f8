//! Allocator settings for the chunk pipelines.
//!
//! Sending, receiving and verifying allocate and free buffers of 64 KiB to 4 MiB at a
//! high rate from several threads. With glibc's defaults, the larger ones are mapped
//! and unmapped again on every use, and freed memory at the top of a heap is handed
//! back at once, so each use of a buffer pays page faults and zeroing by the kernel:
//! 6-8 % of the samples of a verify and 0.1-0.2 s of system time of a 1 GiB send.
//! Keeping buffers up to 8 MiB in the heap and trimming only above 8 MiB makes the
//! freed buffers come back without a trip through the kernel (verify of 1 GiB in 64 KiB
//! chunks: 0.50 -> 0.40 s). Larger thresholds (32 and 64 MiB) were as fast but let the
//! heaps of the reader threads keep up to 140 MiB with 4 MiB chunks; with 8 MiB the
//! peak stays under 90 MiB at every chunk size.

/// Apply the settings; call once, first thing in `main`. Other C libraries than glibc
/// are left as they are.
pub fn tune_for_pipelines() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads
    // exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}
