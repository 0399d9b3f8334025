//! The binary's allocator, mimalloc, and the options it sets: when freed memory goes back to the
//! OS, and how much address space it reserves at a time. The peak RSS and page-fault figures
//! behind them are in docs/BENCHMARKS.md.

/// mimalloc keeps freed pages for reuse: glibc's malloc returns the large per-step buffers
/// (28 MB logits and their gradients) to the OS and page-faults them back in every step.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`, which the bindings leave
/// unnamed): how long freed memory waits before it is returned to the OS, in ms; -1: never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never purge freed memory, for the training steps: a step frees and reallocates the same large
/// buffers (logits, gradients, workspaces), and with mimalloc's default 10 ms delay the pages
/// went back to the OS between steps and were zeroed again on the next: 6% of a `medium` step's
/// samples were the kernel's `clear_page`. With this, a 16-step `medium` bench takes ~480 page
/// faults instead of 19,000 - 27,000, and ran 3 - 11% faster in alternating runs
/// (docs/BENCHMARKS.md).
pub fn keep_freed_memory() {
    set_purge_delay(-1);
}

/// Purge freed memory at once while `train` prepares a text and builds the model: the passes
/// over the text free what they used on every thread, and kept, that memory set the peak of
/// preparing a 30M-token text at 523 - 564 MiB; purged, 355 - 363, in the same time
/// (docs/BENCHMARKS.md). `train` keeps freed memory again from its first training split on.
pub fn purge_freed_memory() {
    set_purge_delay(0);
}

/// Sets mimalloc's purge delay: `ms` milliseconds, 0 at once, -1 never.
fn set_purge_delay(ms: std::ffi::c_long) {
    // SAFETY: `mi_option_set` stores the value of one of mimalloc's options, which it reads
    // each time it schedules a purge; mimalloc exports it to be called at run time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
}

/// mimalloc's `mi_option_arena_reserve` (its place in `mi_option_e`): the size of each arena it
/// reserves from the OS, in KiB.
const MI_OPTION_ARENA_RESERVE: libmimalloc_sys::mi_option_t = 23;

/// Reserve mimalloc's arenas 64 MiB at a time instead of 1 GiB, unless the user's
/// `MIMALLOC_ARENA_RESERVE` says otherwise: in one 1 GiB arena the step's large buffers (6.8 - 28
/// MB, a dozen sizes) were placed far apart, and `medium`'s peak RSS was 256 - 290 MiB for 171 MiB
/// of live allocations; in 64 MiB arenas it is 244 - 252, at the same speed (docs/BENCHMARKS.md).
/// The first arena is reserved by the first allocation, which Rust's runtime makes before `main`,
/// so this runs as a constructor on Linux (below), before any allocation; elsewhere `main` calls
/// it, and only the arenas after the first are smaller.
pub extern "C" fn small_arenas() {
    // SAFETY: `getenv` reads the environment without allocating; `mi_option_set` stores a
    // value. Runs before `main` on Linux (no other thread yet), or first thing in `main`.
    unsafe {
        if libc::getenv(c"MIMALLOC_ARENA_RESERVE".as_ptr()).is_null() {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_RESERVE, 64 * 1024);
        }
    }
}

/// Runs [`small_arenas`] as an ELF constructor, before Rust's runtime allocates.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static SMALL_ARENAS: extern "C" fn() = small_arenas;
