use clap::Parser;

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    borscht::cli::Cli::parse().run()
}

/// candle allocates a fresh buffer for every tensor op. glibc serves large buffers
/// with mmap and unmaps them on free, so each op paid page faults for memory it had
/// just released (a third of a VQGAN training step went to the kernel). Keeping
/// freed memory in the heap lets the next op reuse it.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes glibc's allocator; it runs before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's largest allowed value on 64-bit
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 512 << 20);
    }
}
