//! Process and host figures read from Linux's /proc: CPU time, memory, descriptors.
//! Plain file reads, cheap enough for the monitor's sample timer. Also hands freed heap memory
//! back to the OS ([`release_free_memory`]) before each sample.

use std::io;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
}

/// Reads `/proc/self/stat` (CPU time, start time, sizes) and counts `/proc/self/fd`.
pub fn sample() -> io::Result<ProcessSample> {
    sample_of("self")
}

/// [`sample`] of another process (`process` is a pid, or `self`); the load bench reads the
/// server's CPU time with it.
pub fn sample_of(process: &str) -> io::Result<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{process}/stat"))?;
    let mut sample = parse_stat(&stat, clock_ticks(), rustix::param::page_size() as u64)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/<pid>/stat"))?;
    if let (Some(start), Some(boot)) = (sample.start_time_seconds, boot_time_seconds()) {
        sample.start_time_seconds = Some(boot + start);
    }
    sample.open_fds = std::fs::read_dir(format!("/proc/{process}/fd"))
        .ok()
        .map(|entries| entries.count() as u64);
    Ok(sample)
}

/// Returns freed heap memory to the OS. glibc keeps what a burst freed in its per-thread
/// arenas (after a load test ~120 MB stayed resident with nothing using it), and only trims
/// the top of the main heap on its own; `malloc_trim` releases free pages of every arena.
/// Runs on the monitor's timer, off the request path.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    // SAFETY: `malloc_trim` has no preconditions; it takes each arena's lock itself.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

/// Sets glibc's thresholds for the process, once, before any thread starts. A segment
/// response grows actix's write buffer by up to a chunk and releases it after the write; with
/// glibc's defaults each such block is a fresh `mmap`, paying its page faults on every chunk.
/// Blocks under 4 MiB now come from the heap and are reused, and the heap's top is not trimmed
/// on every free; [`release_free_memory`] returns free pages on the monitor's timer.
///
/// At most [`MALLOC_ARENAS`] arenas: glibc's default is eight per core, and every blocking
/// thread that allocates (sled, file and upload I/O, hashing, job supervision) may get one.
/// After load each arena keeps a few MB of partly used pages that `malloc_trim` cannot return,
/// so fewer arenas mean less idle memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() {
    const MMAP_THRESHOLD_BYTES: libc::c_int = 4 * 1024 * 1024;
    const TRIM_THRESHOLD_BYTES: libc::c_int = 64 * 1024 * 1024;
    // SAFETY: `mallopt` has no preconditions; called before other threads allocate.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

/// See [`tune_allocator`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 2;

/// Other allocators size their own pools.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

fn clock_ticks() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// Parses the fields after the command name (which may hold spaces and parentheses).
/// `start_time_seconds` comes back relative to boot.
fn parse_stat(stat: &str, ticks_per_second: f64, page_size: u64) -> Option<ProcessSample> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
    let cpu_ticks = field(14)? + field(15)?;
    Some(ProcessSample {
        cpu_seconds: cpu_ticks as f64 / ticks_per_second,
        resident_bytes: field(24)?.saturating_mul(page_size),
        virtual_bytes: field(23)?,
        start_time_seconds: field(22).map(|ticks| ticks as f64 / ticks_per_second),
        open_fds: None,
    })
}

fn boot_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse::<f64>().ok())
}

/// The host's memory (MemTotal), the base of the memory-usage alert.
pub fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

pub fn cpu_cores() -> u64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 \
                    9 0 12345 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let sample = parse_stat(stat, 100.0, 4096).unwrap();
        assert!((sample.cpu_seconds - 3.0).abs() < 1e-9);
        assert_eq!(sample.virtual_bytes, 104_857_600);
        assert_eq!(sample.resident_bytes, 2560 * 4096);
        assert_eq!(sample.start_time_seconds, Some(123.45));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_goes_back_to_the_os() {
        // Many small blocks from a second thread, in its own arena. One in 50 stays alive, as
        // long-lived allocations do among a burst's: the heap cannot shrink from its top, so
        // glibc keeps the freed pages in between resident.
        let (resident_with_blocks, survivors) = std::thread::spawn(|| {
            let blocks: Vec<Vec<u8>> = (0..100_000).map(|i| vec![i as u8; 2000]).collect();
            let resident = sample().unwrap().resident_bytes;
            let survivors: Vec<Vec<u8>> = blocks.into_iter().step_by(50).collect();
            (resident, survivors)
        })
        .join()
        .unwrap();
        release_free_memory();
        let after_trim = sample().unwrap().resident_bytes;
        assert!(
            resident_with_blocks > 150 * 1024 * 1024,
            "the blocks were resident: {resident_with_blocks}"
        );
        // Without the trim the freed pages stay resident (measured: 212 MB before and after).
        assert!(
            after_trim + 100 * 1024 * 1024 < resident_with_blocks,
            "freed blocks stay resident: {resident_with_blocks} with them, {after_trim} after"
        );
        assert_eq!(survivors.len(), 2000);
    }

    #[test]
    fn samples_this_process() {
        let sample = sample().unwrap();
        assert!(sample.resident_bytes > 1024 * 1024);
        assert!(sample.open_fds.unwrap() >= 3);
        assert!(host_memory_bytes().unwrap() > sample.resident_bytes);
    }
}
