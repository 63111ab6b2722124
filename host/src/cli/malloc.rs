//! glibc's malloc, tuned for tensor buffers when the binary starts.
//!
//! Every op writes a fresh output buffer of megabytes (a `[4096, 1536]` activation is 24 MiB).
//! By default glibc serves such blocks with `mmap` and returns them with `munmap` (or trims the
//! heap top past 128 KiB of free space), so the next op's buffer arrives as fresh pages that
//! the kernel faults in and zeroes one 4 KiB page at a time: ~400,000 page faults in a
//! three-run MiniLM inference benchmark, 7–9 % of the profile. Serving them from the heap and
//! keeping freed memory for the next op (raised mmap and trim thresholds) leaves ~88,000
//! (`docs/performance.md`, "Where the time goes"); peak RSS stays within a few percent, as
//! freed blocks are reused rather than added to.
//!
//! The user's own `MALLOC_*` environment settings win: when any is set nothing is changed.
//! `PEFT_MALLOC_TUNE=0` turns the tuning off.

/// Blocks up to this size come from the heap, not `mmap`: the ceiling of glibc's own dynamic
/// threshold on 64-bit, above MiniLM's largest activation at batch 32 × 128 (24 MiB).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory kept at the heap's top before it is returned to the system.
const TRIM_THRESHOLD: i32 = 1 << 30;
/// Extra heap grown on each `brk`, so a growing model does not fault page by page.
const TOP_PAD: i32 = 64 << 20;

/// Applies the tuning, once, before any worker thread starts. Returns whether it did.
pub fn tune() -> bool {
    let user_set = std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"));
    let off = std::env::var("PEFT_MALLOC_TUNE").is_ok_and(|v| v == "0");
    if user_set || off {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    let mut ok = true;
    for (param, value) in [
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (libc::M_TOP_PAD, TOP_PAD),
    ] {
        // SAFETY: `mallopt` takes two integers and only changes the allocator's parameters
        // (under its own lock); it refuses (returns 0) a value outside its range, which is
        // reported, not ignored.
        ok &= unsafe { libc::mallopt(param, value) } == 1;
    }
    ok
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    /// glibc accepts every value (`mallopt` returns 1 for each).
    #[test]
    fn glibc_accepts_the_thresholds() {
        assert_eq!(
            super::apply(),
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
    }
}
