//! A worker's control block and result arena: one anonymous file, its first page mapped by
//! both sides (the control block: atomics only), the rest mapped by the worker alone.
//!
//! The worker writes each finished item's encoded result into the arena and then publishes
//! how far it got in the control block, so that when it dies mid-chunk its parent reads the
//! finished results back with [`read_at`] — nothing of them is lost with the process, and no
//! syscall is made per item. The parent never maps the arena part, so the worker may grow it
//! ([`GrowMap::resize`]) without telling anyone.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU64;

use super::mapping::Mapping;
use super::shm::{file_size, map_shared_rw};

/// Bytes of the control block at the start of the file; the arena follows.
pub(crate) const PAGE: usize = 4096;

/// The worker's mapping of the whole file: the control block, then the arena.
#[derive(Debug)]
pub(crate) struct GrowMap {
    fd: OwnedFd,
    /// The control block is reached only through atomics; the arena only through `&mut self`
    /// (one writer in this process) or `&self` (reads), and no other process maps it (the
    /// parent reads it with `pread` once this process is dead).
    map: Mapping,
}

impl GrowMap {
    /// Maps the file `fd` (at least [`PAGE`] bytes) whole, read-write.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<GrowMap> {
        let len = file_size(fd.as_fd())?;
        if len < PAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a control block shorter than a page",
            ));
        }
        let map = map_shared_rw(fd.as_fd(), len, 0)?;
        Ok(GrowMap { fd, map })
    }

    /// A private one, for a worker whose parent sent no control block (its arena then only
    /// saves a copy, not results).
    pub(crate) fn anonymous() -> io::Result<GrowMap> {
        GrowMap::from_fd(control_file()?)
    }

    /// Bytes available to the arena (the mapping less the control block).
    pub(crate) fn capacity(&self) -> usize {
        self.map.len() - PAGE
    }

    /// Makes the arena `cap` bytes long (growing or shrinking the file and the mapping).
    pub(crate) fn resize(&mut self, cap: usize) -> io::Result<()> {
        let new_len = cap
            .checked_add(PAGE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "arena too large"))?;
        let size = u64::try_from(new_len)
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "arena too large"))?;
        if new_len > self.map.len() {
            // Grow the file first: the new pages of the mapping must have a file behind them.
            set_len(self.fd.as_fd(), size)?;
            self.remap(new_len)
        } else {
            // Shrink the mapping first: no page of it may outlive the file behind it (SIGBUS).
            self.remap(new_len)?;
            set_len(self.fd.as_fd(), size)
        }
    }

    fn remap(&mut self, new_len: usize) -> io::Result<()> {
        self.map.resize(self.fd.as_fd(), 0, new_len)
    }

    /// The `AtomicU64` at byte `offset` of the control block (8-aligned, below [`PAGE`]: a bug
    /// otherwise, so it panics).
    #[inline]
    pub(crate) fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset % 8 == 0 && offset + 8 <= PAGE,
            "bad control offset {offset}"
        );
        // The control block is only ever accessed through atomics, by both processes.
        self.map.atomic_u64(offset)
    }

    /// The arena: every byte after the control block.
    pub(crate) fn arena_mut(&mut self) -> &mut [u8] {
        // SAFETY: `[ptr + PAGE, ptr + len)` is mapped read-write for as long as `self` lives
        // (`len >= PAGE` since `from_fd`); `&mut self` makes this the only reference into the
        // arena in this process, and no other process maps it.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr().add(PAGE), self.capacity()) }
    }

    /// The arena, read-only.
    pub(crate) fn arena(&self) -> &[u8] {
        // SAFETY: as in `arena_mut`; a shared borrow of `self` excludes `arena_mut`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(PAGE), self.capacity()) }
    }
}

/// Reads `buf.len()` bytes of the file `fd` at `offset` (`pread`), whole or an error.
pub(crate) fn read_at(fd: BorrowedFd<'_>, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        if i64::try_from(offset).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset out of range",
            ));
        }
        match super::unix::retry(|| rustix::io::pread(fd, &mut *buf, offset))? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

fn set_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    if i64::try_from(len).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "file too large",
        ));
    }
    Ok(rustix::fs::ftruncate(fd, len)?)
}

/// A fresh control file of one page: not sealed, so that the worker can shrink its arena
/// back (and free its pages) after a large chunk.
pub(crate) fn control_file() -> io::Result<OwnedFd> {
    let fd = anonymous_file()?;
    set_len(fd.as_fd(), PAGE as u64)?;
    Ok(fd)
}

#[cfg(target_os = "linux")]
fn anonymous_file() -> io::Result<OwnedFd> {
    super::shm::memfd("worker-control", rustix::fs::MemfdFlags::CLOEXEC)
}

#[cfg(not(target_os = "linux"))]
fn anonymous_file() -> io::Result<OwnedFd> {
    let region = super::shm::Region::create("arena", PAGE)?;
    let fd = region.fd().try_clone_to_owned()?;
    drop(region);
    super::unix::above_stdio(fd)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `std::time::Instant` on Linux, the same in
/// every process of the machine, so a time one process writes another can compare.
pub(crate) fn monotonic_ns() -> u64 {
    // Served by the vDSO where there is one: no system call.
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn an_arena_grows_keeps_its_bytes_and_reads_back_through_the_fd() {
        let mut m = GrowMap::anonymous().unwrap();
        assert_eq!(m.capacity(), 0);
        m.resize(10).unwrap();
        m.arena_mut()[..3].copy_from_slice(b"abc");
        m.atomic_u64(8).store(7, Ordering::Relaxed);
        m.resize(1 << 20).unwrap();
        assert_eq!(&m.arena()[..3], b"abc");
        assert_eq!(m.atomic_u64(8).load(Ordering::Relaxed), 7);
        let mut back = [0; 3];
        read_at(m.fd.as_fd(), PAGE as u64, &mut back).unwrap();
        assert_eq!(&back, b"abc");
        m.resize(4).unwrap();
        assert_eq!(m.capacity(), 4);
        assert_eq!(file_size(m.fd.as_fd()).unwrap(), PAGE + 4);
        let mut past = [0; 8];
        assert!(read_at(m.fd.as_fd(), PAGE as u64, &mut past).is_err());
    }

    #[test]
    fn monotonic_ns_matches_instant() {
        let a = monotonic_ns();
        let i = std::time::Instant::now();
        let b = monotonic_ns();
        assert!(a <= b);
        let _ = i;
    }
}
