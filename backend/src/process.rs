//! Process-wide settings for fast CPU inference, made before any thread starts, and the
//! thread the work runs on: used by `borscht`'s `main` and by the criterion benchmarks,
//! so both measure the same thing.

/// Applies the settings below. Call first thing in `main`, before other threads exist.
pub fn configure() {
    keep_freed_memory();
    no_spinning_pool_on_two_cores();
    thread_count_read_once();
}

/// Runs `work` on a thread of rayon's global pool, the caller waiting. The CPU kernels'
/// and matrix products' parallel parts then start on the thread that asks for them, with
/// the pool's other threads stealing work, instead of being handed over from outside the
/// pool and waited for: a decoding step has about a hundred small parallel parts, and
/// the tiny preset's captioning ran twice as fast (the 350M preset's a tenth faster).
/// While the work runs a serial stretch, one pool thread spins for work rather than all.
///
/// For whole commands; a long-lived thread that waits for requests takes a pool of its
/// own instead (the server's model workers), so it never holds the global pool's threads.
pub fn on_compute_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}

/// criterion's `criterion_main!` for benchmarks that should measure what `borscht` runs:
/// the process settings first, then the groups on rayon's pool.
#[macro_export]
macro_rules! bench_main {
    ($($group:path),+ $(,)?) => {
        fn main() {
            $crate::process::configure();
            $crate::process::on_compute_pool(|| { $($group();)+ });
            criterion::Criterion::default().configure_from_args().final_summary();
        }
    };
}

/// candle asks for its thread count at every matrix product, and without
/// `RAYON_NUM_THREADS` it counts the physical cores by parsing `/proc/cpuinfo` each time:
/// in the tiny preset's image drawing (64 decoding steps of small products) that took
/// 45 % of the time. Setting the variable to the count rayon's pool already uses (the
/// CPUs this process may run on) answers it from the environment instead; rayon's pool
/// stays as it was, and candle's products use as many threads as our own kernels.
fn thread_count_read_once() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}

/// candle runs element-wise ops on its own thread pool, whose workers spin between ops;
/// our convolutions, kernels and matrix products run on rayon's. With two cores the
/// spinning worker takes a core from rayon's threads (a VQGAN decode and a training step
/// ran 5-10 % slower), so there candle's ops stay on the calling thread.
fn no_spinning_pool_on_two_cores() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores <= 2 && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// candle allocates a fresh buffer for every tensor op. glibc serves large buffers
/// with mmap and unmaps them on free, so each op paid page faults for memory it had
/// just released (a third of a VQGAN training step went to the kernel). Keeping
/// freed memory in the heap lets the next op reuse it. Raising the size from which
/// glibc maps buffers (at most 32 MB) was not enough for the 350M VQGAN, whose encode of
/// 16 pictures makes feature maps of 134 MB: with no buffer mapped at all it took about
/// a fifth less time, for 3 % more peak memory. The process keeps its peak heap.
///
/// The settings hold for glibc's main heap, and every thread allocates from it: other
/// threads would get heaps of their own, of at most 64 MB, given back as soon as they
/// empty, and the 350M preset's forward on a pool thread ran a quarter slower for the
/// page faults (32 s against 24 s).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes glibc's allocator; it runs before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0); // every buffer from the heap, however large
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 512 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn commands_run_on_a_thread_of_the_pool() {
        assert_eq!(rayon::current_thread_index(), None, "the test itself runs outside the pool");
        assert!(super::on_compute_pool(rayon::current_thread_index).is_some());
    }
}
