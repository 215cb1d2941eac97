//! Shared memory regions: anonymous files (`memfd`) mapped into every process holding them.
//!
//! Every IPC object of mproc (queue, lock, value, array, shared memory) is one [`Region`]. A
//! region has no name in any filesystem: it lives exactly as long as some process holds its fd
//! or a mapping of it, so the kernel frees it when the last holder exits, however it exits.
//! That is the whole leak-freedom story — nothing to unlink, nothing in `/dev/shm`.
//!
//! A fresh region reads as zeros. Objects place their state at fixed offsets: atomics through
//! [`Region::atomic_u32`] / [`Region::atomic_u64`], bulk bytes through [`Region::read`] /
//! [`Region::write`], typed views through [`Region::pod_slice_mut`].

use std::ffi::CString;
use std::io;
#[cfg(not(target_os = "linux"))]
use std::os::fd::FromRawFd;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64};

use super::mapping::{Access, Mapping};
use super::unix::above_stdio;

/// A shared memory mapping of a whole anonymous file.
#[derive(Debug)]
pub(crate) struct Region {
    fd: OwnedFd,
    /// Every access goes through atomics or through data guarded by a lock living in the
    /// region itself (see the accessors below).
    map: Mapping,
}

impl Region {
    /// A new zero-filled region of `len` bytes. `name` shows in `/proc/PID/fd` (debugging only).
    ///
    /// The size is reserved, not allocated: pages are allocated as they are first written, so
    /// a large sparse region (a queue's ring) costs only what is used.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Region> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a shared memory region needs at least one byte",
            ));
        }
        let fd = anonymous_file(name)?;
        set_file_len(fd.as_fd(), len)?;
        seal_shrink(fd.as_fd())?;
        Region::map(fd, len)
    }

    /// Maps only the first `len` bytes of a region received from another process: the part an
    /// object keeps at a fixed place (a queue's header), when the rest of its file is mapped
    /// on its own and may grow ([`Region::map_window`]).
    pub(crate) fn from_fd_prefix(fd: OwnedFd, len: usize) -> io::Result<Region> {
        if len == 0 || file_size(fd.as_fd())? < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an mproc shared memory region (file too short)",
            ));
        }
        Region::map(fd, len)
    }

    /// Maps a region received from another process (its fd came through `SCM_RIGHTS`).
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Region> {
        let len = file_size(fd.as_fd())?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an mproc shared memory region (empty file)",
            ));
        }
        Region::map(fd, len)
    }

    /// Opens a region by path, e.g. `/proc/PID/fd/N` of a process that holds it.
    pub(crate) fn open_path(path: &str) -> io::Result<Region> {
        use rustix::fs::{Mode, OFlags};
        if path.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path contains a NUL",
            ));
        }
        // No controlling terminal, no blocking open, whatever the path turns out to be.
        let flags = OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = above_stdio(rustix::fs::open(path, flags, Mode::empty())?)?;
        Region::from_fd(fd)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Region> {
        let map = map_shared_rw(fd.as_fd(), len, 0)?;
        Ok(Region { fd, map })
    }

    /// Bytes in the region (its mapping here; the file may be longer: see [`Window`]).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes in the region's file.
    pub(crate) fn file_len(&self) -> io::Result<usize> {
        file_size(self.fd.as_fd())
    }

    /// Makes the region's file at least `len` bytes long; the new bytes read as zeros and use
    /// no memory until written. Never shrinks it (regions are sealed against shrinking: other
    /// processes may map its end).
    pub(crate) fn grow_file(&self, len: usize) -> io::Result<()> {
        if self.file_len()? >= len {
            return Ok(());
        }
        // Growing a file leaves every existing mapping of it valid.
        set_file_len(self.fd.as_fd(), len)
    }

    /// Maps `[offset, offset + len)` of the region's file on its own (`offset` a multiple of
    /// the page size, the file at least that long): a part that can be remapped larger while
    /// the region's own mapping stays where it is (a queue's ring, see [`Window`]).
    pub(crate) fn map_window(&self, offset: usize, len: usize) -> io::Result<Window> {
        window_fits(self, offset, len)?;
        // Within the file's length (checked above), and the file cannot shrink: it is sealed.
        let map = map_shared_rw(self.fd.as_fd(), len, offset)?;
        Ok(Window { map, offset })
    }

    /// The file behind the region (to send it to another process).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Address of the first byte in this process (for `SharedMemory::as_ptr`).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// The `AtomicU32` at byte `offset` (4-aligned, in bounds; a bug otherwise, so it panics).
    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        self.map.atomic_u32(offset)
    }

    /// The `AtomicU64` at byte `offset` (8-aligned, in bounds).
    pub(crate) fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        self.map.atomic_u64(offset)
    }

    /// Copies `src` into the region at `offset`.
    ///
    /// The caller must own that range (hold the lock guarding it, or have reserved it); a
    /// racing writer in another process could tear the bytes, never break memory safety here,
    /// since bytes have no invalid values.
    pub(crate) fn write(&self, offset: usize, src: &[u8]) {
        self.map.write(offset, src)
    }

    /// Copies bytes at `offset` out of the region into `dst` (same ownership rule as `write`).
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) {
        self.map.read(offset, dst)
    }

    /// A typed view of `n` values of `T` at `offset`.
    ///
    /// Taking `&mut self.guard` stands for exclusive access: callers pass the guard of the lock
    /// that protects this range in every process, so no other `&mut` or write exists while the
    /// slice lives. `T: Pod` makes every bit pattern another process wrote a valid `T`.
    pub(crate) fn pod_slice_mut<'a, T: bytemuck::Pod, G>(
        &'a self,
        _exclusive: &'a mut G,
        offset: usize,
        n: usize,
    ) -> &'a mut [T] {
        let size = std::mem::size_of::<T>()
            .checked_mul(n)
            .expect("caller checked the array size");
        self.map.check(offset, size, std::mem::align_of::<T>());
        // SAFETY: in bounds and aligned for `T` (checked); `T: Pod` is valid for any bytes; the
        // caller holds the cross-process lock for this range (witnessed by `_exclusive`, borrowed
        // for the slice's lifetime), so the slice is the only access while it lives.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr().add(offset).cast::<T>(), n) }
    }

    /// A shared typed view of `n` values of `T` at `offset`: [`pod_slice_mut`] for a guard
    /// borrowed shared. Callers pass the guard of the lock protecting this range: while the
    /// view lives, the guard cannot give out a `&mut` view (it is borrowed), and other threads
    /// and processes wait for the lock.
    ///
    /// [`pod_slice_mut`]: Region::pod_slice_mut
    pub(crate) fn pod_slice<'a, T: bytemuck::Pod, G>(
        &'a self,
        _held: &'a G,
        offset: usize,
        n: usize,
    ) -> &'a [T] {
        let size = std::mem::size_of::<T>()
            .checked_mul(n)
            .expect("caller checked the array size");
        self.map.check(offset, size, std::mem::align_of::<T>());
        // SAFETY: in bounds and aligned for `T` (checked); `T: Pod` is valid for any bytes; the
        // caller holds the cross-process lock for this range (witnessed by `_held`, borrowed for
        // the slice's lifetime, so no `&mut` view through the same guard can coexist), so no
        // one writes the range while the slice lives.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(offset).cast::<T>(), n) }
    }

    /// Bytes of memory the region's pages occupy now (a sparse region uses less than `len`).
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> u64 {
        rustix::fs::fstat(&self.fd).map_or(0, |st| st.st_blocks as u64 * 512)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // A mutex in here held through a forgotten guard must leave the robust list first.
        // (The mapping itself goes with the field, after this.)
        super::robust::unmapping(self.map.as_ptr() as usize, self.map.len());
    }
}

/// A part of a region's file mapped on its own, from a page-aligned offset: the ring of a
/// queue, which grows ([`Window::grow`]) while the region's header stays mapped where it is —
/// futex words and atomics of the header are used without a lock and must never move, while
/// a window is only touched under the object's lock. A window holds no fd (its region does)
/// and must hold no robust mutex (its unmapping does not unlink them).
#[derive(Debug)]
pub(crate) struct Window {
    /// Reached only through copies and through slices borrowed from a lock guard.
    map: Mapping,
    /// Where the window starts in the file.
    offset: usize,
}

impl Window {
    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Copies `src` into the window at `offset` (ownership rule of [`Region::write`]).
    pub(crate) fn write(&self, offset: usize, src: &[u8]) {
        self.map.write(offset, src)
    }

    /// Copies bytes at `offset` into `dst` (ownership rule of [`Region::write`]).
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) {
        self.map.read(offset, dst)
    }

    /// Copies `len` bytes within the window, from `from` to `to` (the ranges may overlap).
    pub(crate) fn copy_within(&self, from: usize, to: usize, len: usize) {
        self.map.copy_within(from, to, len)
    }

    /// A shared view of `n` bytes at `offset`, under the lock witnessed by `_held` (as
    /// [`Region::pod_slice`]).
    pub(crate) fn bytes<'a, G>(&'a self, _held: &'a G, offset: usize, n: usize) -> &'a [u8] {
        self.map.check(offset, n, 1);
        // SAFETY: in bounds (checked); bytes are valid for any contents; the caller holds the
        // cross-process lock for this range (witnessed by `_held`, borrowed for the slice's
        // lifetime), so no one writes the range while the slice lives; the window cannot be
        // remapped meanwhile (`grow` takes `&mut self`).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(offset), n) }
    }

    /// Gives the pages of `[offset, offset + len)` of the window back to the kernel; they read
    /// as zeros after. Used by queues on ranges already consumed, so a long-lived queue holds
    /// memory in proportion to what is queued, not to what ever passed through. Best effort.
    /// `region` is the region whose file the window maps.
    pub(crate) fn discard(&self, region: &Region, offset: usize, len: usize) {
        self.map.check(offset, len, 1);
        punch_hole(region.fd(), self.offset + offset, len);
    }

    /// Remaps the window to `len` bytes of `region`'s file (the file must be that long:
    /// [`Region::grow_file`]). Its address may change; on failure the window stays as it was.
    pub(crate) fn grow(&mut self, region: &Region, len: usize) -> io::Result<()> {
        if len <= self.len() {
            return Ok(());
        }
        window_fits(region, self.offset, len)?;
        let added = len - self.len();
        self.map
            .resize(region.fd(), self.offset, len)
            .map_err(|e| explain_map_error(added, e))
    }
}

/// Refuses a window that does not start on a page or runs past the end of the file (a mapping
/// past the end would fault with `SIGBUS` on use).
fn window_fits(region: &Region, offset: usize, len: usize) -> io::Result<()> {
    if len == 0 || offset % page_size() != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a window must be non-empty and start on a page",
        ));
    }
    let end = offset.checked_add(len);
    if end.is_none_or(|end| end > region.file_len().unwrap_or(0)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the shared memory file is shorter than its header says",
        ));
    }
    Ok(())
}

fn page_size() -> usize {
    rustix::param::page_size()
}

/// The address-space limit of this process (`RLIMIT_AS`), if it has one.
pub(crate) fn address_space_limit() -> Option<u64> {
    // `None`: unlimited.
    rustix::process::getrlimit(rustix::process::Resource::As).current
}

/// Address space this process has mapped now (`VmSize`), where the system says.
fn address_space_in_use() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A failed mapping of `len` bytes, explained: when the address space ran out under an
/// `RLIMIT_AS` (`ulimit -v`), the error names the limit.
fn explain_map_error(len: usize, err: io::Error) -> io::Error {
    if err.raw_os_error() != Some(rustix::io::Errno::NOMEM.raw_os_error()) {
        return err;
    }
    let msg = match (address_space_limit(), address_space_in_use()) {
        (Some(limit), Some(used)) => format!(
            "cannot reserve {len} bytes of address space: the address-space limit \
             (RLIMIT_AS, ulimit -v) is {limit} bytes and {used} are in use"
        ),
        (Some(limit), None) => format!(
            "cannot reserve {len} bytes of address space: the address-space limit \
             (RLIMIT_AS, ulimit -v) is {limit} bytes"
        ),
        (None, _) => format!("cannot reserve {len} bytes of address space: {err}"),
    };
    io::Error::new(io::ErrorKind::OutOfMemory, msg)
}

/// A large payload received from another process (a task's argument, a result): a read-only
/// mapping of the anonymous file its sender wrote whole and sealed (see
/// `wire::codec::encode_spilling` and [`seal_payload`]). The file's fd is closed once mapped,
/// so a process holding many payloads holds no fd for them.
pub(crate) struct Payload {
    /// Read-only memory that nobody can change (the file is sealed against writes, shrinking
    /// and growing).
    map: Mapping,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("len", &self.map.len())
            .finish()
    }
}

impl Payload {
    /// Maps the payload file `fd`, whole and at once (`MAP_POPULATE`, not one fault per few
    /// pages as the decoder walks it), then closes `fd`.
    ///
    /// Refused, as a clear error: anything but a sealed anonymous file — a sender that kept
    /// its fd could otherwise change the bytes under the decoder or truncate the file, which
    /// would kill this process with `SIGBUS` at the next read — an empty file, and a file with
    /// holes (mapping it would allocate memory its sender never spent: a tiny sparse file can
    /// claim gigabytes).
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Payload> {
        if !payload_sealed(fd.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a payload file that is not sealed against changes",
            ));
        }
        let (len, allocated) = file_stat(fd.as_fd())?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an empty payload file",
            ));
        }
        if allocated < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a payload file with holes (not written whole)",
            ));
        }
        // The mapping stays valid after `fd` is closed below.
        let map = Mapping::new(fd.as_fd(), len, 0, Access::ReadPopulated)?;
        Ok(Payload { map })
    }

    /// The payload's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives (the borrow ties
        // the slice to it). No process can change them: the file is sealed against writes
        // (`F_SEAL_WRITE`: no write, no writable shared mapping), shrinking and growing, and
        // the seals themselves are sealed; `from_fd` checked all of it before mapping.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.len()) }
    }
}

/// The seals a payload file carries once written: no more writes, no resizing, no other seals.
#[cfg(target_os = "linux")]
const PAYLOAD_SEALS: rustix::fs::SealFlags = rustix::fs::SealFlags::WRITE
    .union(rustix::fs::SealFlags::SHRINK)
    .union(rustix::fs::SealFlags::GROW)
    .union(rustix::fs::SealFlags::SEAL);

/// Seals a payload file its sender has finished writing (see [`Payload`]).
#[cfg(target_os = "linux")]
pub(crate) fn seal_payload(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::fs::fcntl_add_seals(fd, PAYLOAD_SEALS)?)
}

/// Without memfd there are no payload files (see [`payload_file`]).
#[cfg(not(target_os = "linux"))]
pub(crate) fn seal_payload(_fd: BorrowedFd<'_>) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// True if `fd` carries every seal of [`PAYLOAD_SEALS`].
#[cfg(target_os = "linux")]
fn payload_sealed(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|seals| seals.contains(PAYLOAD_SEALS))
}

#[cfg(not(target_os = "linux"))]
fn payload_sealed(_fd: BorrowedFd<'_>) -> bool {
    false
}

/// Maps `[offset, offset + len)` of the file `fd` shared and read-write, where the kernel
/// chooses; a refusal under `RLIMIT_AS` names the limit. The mapping outlives `fd`; the caller
/// unmaps it.
pub(crate) fn map_shared_rw(fd: BorrowedFd<'_>, len: usize, offset: usize) -> io::Result<Mapping> {
    Mapping::new(fd, len, offset, Access::ReadWrite).map_err(|e| explain_map_error(len, e))
}

/// The size of the regular file `fd`.
pub(crate) fn file_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    file_stat(fd).map(|(size, _)| size)
}

/// Size and allocated bytes of a regular file.
fn file_stat(fd: BorrowedFd<'_>) -> io::Result<(usize, u64)> {
    let st = rustix::fs::fstat(fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an mproc shared memory region (not a regular file)",
        ));
    }
    let size = usize::try_from(st.st_size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "region size out of range"))?;
    let allocated = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
    Ok((size, allocated))
}

/// Sets the length of the file `fd` to `len` bytes (`ftruncate`).
pub(crate) fn set_file_len(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let len = u64::try_from(len)
        .ok()
        .filter(|&l| i64::try_from(l).is_ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
    Ok(rustix::fs::ftruncate(fd, len)?)
}

#[cfg(target_os = "linux")]
fn anonymous_file(name: &str) -> io::Result<OwnedFd> {
    use rustix::fs::MemfdFlags;
    memfd(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
}

/// Seals a region's file against shrinking: a process holding it cannot truncate it under
/// the others' mappings (their next access would fault with `SIGBUS`). It can still grow.
#[cfg(target_os = "linux")]
fn seal_shrink(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::fs::fcntl_add_seals(
        fd,
        rustix::fs::SealFlags::SHRINK,
    )?)
}

/// Without memfd there are no seals.
#[cfg(not(target_os = "linux"))]
fn seal_shrink(_fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(())
}

/// A new memfd named `mproc-{name}`, with `flags`.
#[cfg(target_os = "linux")]
pub(crate) fn memfd(name: &str, flags: rustix::fs::MemfdFlags) -> io::Result<OwnedFd> {
    let c = CString::new(format!("mproc-{name}")).expect("names are ours, without NUL");
    above_stdio(rustix::fs::memfd_create(c.as_c_str(), flags)?)
}

/// An empty anonymous file (memfd where there is one) that can be sealed, to write a payload
/// into with `std::fs::File`, seal ([`seal_payload`]) and send whole; the receiver maps it
/// with [`Payload::from_fd`]. Elsewhere (no memfd) it is unsupported and callers keep
/// payloads inline: a POSIX shared memory object may refuse `write`, and has no seals.
#[cfg(target_os = "linux")]
pub(crate) fn payload_file(name: &str) -> io::Result<OwnedFd> {
    use rustix::fs::MemfdFlags;
    memfd(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn payload_file(_name: &str) -> io::Result<OwnedFd> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Without memfd: a POSIX shared memory object unlinked at once, so it is just as anonymous.
#[cfg(not(target_os = "linux"))]
fn anonymous_file(name: &str) -> io::Result<OwnedFd> {
    use std::sync::atomic::Ordering;
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let path = format!(
        "/mproc-{}-{}-{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let c = CString::new(path).expect("names are ours, without NUL");
    // SAFETY: `c` is a valid NUL-terminated name.
    let raw = unsafe {
        libc::shm_open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            0o600 as libc::c_uint,
        )
    };
    if raw == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `c` names the object just created; unlinking leaves our fd valid.
    unsafe { libc::shm_unlink(c.as_ptr()) };
    // SAFETY: `raw` is a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    super::unix::set_cloexec(fd.as_fd(), true)?;
    above_stdio(fd)
}

#[cfg(target_os = "linux")]
fn punch_hole(fd: BorrowedFd<'_>, offset: usize, len: usize) {
    use rustix::fs::FallocateFlags;
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    let _ = rustix::fs::fallocate(fd, flags, offset as u64, len as u64);
}

#[cfg(not(target_os = "linux"))]
fn punch_hole(_fd: BorrowedFd<'_>, _offset: usize, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;

    #[test]
    fn two_mappings_of_one_region_share_bytes() {
        let a = Region::create("test", 4096).unwrap();
        let fd = a.fd().try_clone_to_owned().unwrap();
        let b = Region::from_fd(fd).unwrap();
        assert_eq!(b.len(), 4096);
        a.atomic_u64(8).store(42, Ordering::SeqCst);
        assert_eq!(b.atomic_u64(8).load(Ordering::SeqCst), 42);
        b.write(100, b"hello");
        let mut out = [0u8; 5];
        a.read(100, &mut out);
        assert_eq!(&out, b"hello");
    }

    #[test]
    fn a_window_maps_the_file_past_the_region_and_grows() {
        let r = Region::create("test", 4096).unwrap();
        assert!(
            r.map_window(4096, 4096).is_err(),
            "past the end of the file"
        );
        assert!(r.map_window(100, 64).is_err(), "not on a page");
        r.grow_file(3 * 4096).unwrap();
        assert_eq!(r.file_len().unwrap(), 3 * 4096);
        r.grow_file(4096).unwrap();
        assert_eq!(r.file_len().unwrap(), 3 * 4096, "never shrinks");
        let mut w = r.map_window(4096, 4096).unwrap();
        w.write(10, b"ring");
        // Another mapping of the same file sees it.
        let other = Region::from_fd(r.fd().try_clone_to_owned().unwrap()).unwrap();
        let mut out = [0u8; 4];
        other.read(4096 + 10, &mut out);
        assert_eq!(&out, b"ring");
        assert!(w.grow(&r, 3 * 4096).is_err(), "the file is too short");
        assert_eq!(w.len(), 4096, "unchanged after a failed growth");
        r.grow_file(4 * 4096).unwrap();
        w.grow(&r, 3 * 4096).unwrap();
        assert_eq!(w.len(), 3 * 4096);
        w.read(10, &mut out);
        assert_eq!(&out, b"ring", "bytes kept across the remap");
        w.copy_within(10, 2 * 4096, 4);
        let other = Region::from_fd(r.fd().try_clone_to_owned().unwrap()).unwrap();
        other.read(3 * 4096, &mut out);
        assert_eq!(&out, b"ring");
        w.discard(&r, 0, 4096);
        w.read(10, &mut out);
        assert_eq!(out, [0; 4], "discarded pages read as zero");
        // The file cannot be truncated under the mappings.
        let f = std::fs::File::from(r.fd().try_clone_to_owned().unwrap());
        assert!(f.set_len(4096).is_err(), "sealed against shrinking");
    }

    #[test]
    fn a_region_maps_a_prefix_of_its_file() {
        let r = Region::create("test", 8192).unwrap();
        let fd = || r.fd().try_clone_to_owned().unwrap();
        assert_eq!(Region::from_fd_prefix(fd(), 4096).unwrap().len(), 4096);
        assert!(Region::from_fd_prefix(fd(), 3 * 4096).is_err());
    }

    #[test]
    fn a_region_opens_by_its_proc_path() {
        let a = Region::create("test", 64).unwrap();
        a.write(0, b"x");
        let path = format!("/proc/{}/fd/{}", std::process::id(), a.fd().as_raw_fd());
        let b = Region::open_path(&path).unwrap();
        let mut out = [0u8; 1];
        b.read(0, &mut out);
        assert_eq!(&out, b"x");
    }

    #[test]
    fn foreign_files_are_refused() {
        let (s, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(Region::from_fd(s.into()).is_err());
        assert!(Region::create("test", 0).is_err());
    }

    #[test]
    fn payload_files_must_be_sealed_and_written_whole() {
        let write = |fd: &OwnedFd, bytes: &[u8]| {
            std::io::Write::write_all(&mut std::fs::File::from(fd.try_clone().unwrap()), bytes)
                .unwrap();
        };
        // Written and sealed: maps, and its fd is not kept.
        let written = payload_file("test").unwrap();
        write(&written, &[7; 9000]);
        seal_payload(written.as_fd()).unwrap();
        let p = Payload::from_fd(written).unwrap();
        assert_eq!(p.bytes(), [7; 9000]);
        // Not sealed: its sender could still change or truncate it under the reader.
        let unsealed = payload_file("test").unwrap();
        write(&unsealed, &[1; 100]);
        let err = Payload::from_fd(unsealed).unwrap_err();
        assert!(err.to_string().contains("sealed"), "{err}");
        // A region (never sealed), a socket, an empty or sparse file: all refused.
        let region = Region::create("test", 1 << 30).unwrap();
        assert!(Payload::from_fd(region.fd().try_clone_to_owned().unwrap()).is_err());
        let (s, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(Payload::from_fd(s.into()).is_err());
        let empty = payload_file("test").unwrap();
        seal_payload(empty.as_fd()).unwrap();
        assert!(Payload::from_fd(empty).is_err());
        let sparse = payload_file("test").unwrap();
        std::fs::File::from(sparse.try_clone().unwrap())
            .set_len(1 << 30)
            .unwrap();
        seal_payload(sparse.as_fd()).unwrap();
        let err = Payload::from_fd(sparse).unwrap_err();
        assert!(err.to_string().contains("holes"), "1 GiB of holes: {err}");
        // Sealed files cannot change any more.
        let fixed = payload_file("test").unwrap();
        write(&fixed, b"abc");
        seal_payload(fixed.as_fd()).unwrap();
        let f = std::fs::File::from(fixed);
        assert!(f.set_len(1).is_err(), "no shrinking");
        assert!(
            std::io::Write::write_all(&mut &f, b"d").is_err(),
            "no writing"
        );
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn out_of_bounds_access_is_a_bug() {
        let a = Region::create("test", 64).unwrap();
        a.atomic_u64(64);
    }
}
