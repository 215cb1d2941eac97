//! [`Mapping`]: one shared mapping of a file, owned — made, grown, accessed within bounds and
//! unmapped in one place for every kind of shared memory mproc has (regions, windows,
//! payloads, worker arenas).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// `len` bytes of a file mapped shared at `ptr`, unmapped when dropped. Every byte access is
/// bounds-checked: an access out of the mapping is a bug of the caller (who validates what it
/// read from shared memory before using it as an offset), so it panics.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory with no thread affinity. Through `&Mapping` its
// bytes are reached only by copies, atomics, and slices whose users hold the lock guarding
// them (the owners' contracts), so moving or sharing the handle between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

/// How a mapping may be accessed.
#[derive(Clone, Copy)]
pub(crate) enum Access {
    /// Read and write.
    ReadWrite,
    /// Read only, every page faulted in at once (`MAP_POPULATE` where there is one).
    ReadPopulated,
}

impl Mapping {
    /// Maps `[offset, offset + len)` of the file `fd` shared, where the kernel chooses. The
    /// mapping outlives `fd`. `len` must be non-zero.
    pub(crate) fn new(
        fd: BorrowedFd<'_>,
        len: usize,
        offset: usize,
        access: Access,
    ) -> io::Result<Mapping> {
        let file_offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let (prot, flags) = match access {
            Access::ReadWrite => (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED),
            Access::ReadPopulated => (libc::PROT_READ, libc::MAP_SHARED | POPULATE),
        };
        // SAFETY: a fresh shared mapping chosen by the kernel (addr null) over an open file;
        // no existing memory is affected. The result is checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                flags,
                fd.as_raw_fd(),
                file_offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).expect("mmap never returns null on success");
        Ok(Mapping { ptr, len })
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Address of the first byte in this process.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Makes the mapping (of `[offset, ..)` of `fd`) `new_len` bytes long, growing or
    /// shrinking it: in place or moved by `mremap`, which needs address space for the added
    /// bytes only. The file must cover the new length. On failure the old mapping is intact.
    /// `&mut self`: no reference into the mapping lives across the move.
    pub(crate) fn resize(
        &mut self,
        fd: BorrowedFd<'_>,
        offset: usize,
        new_len: usize,
    ) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let _ = (fd, offset); // mremap keeps the file and offset
            // SAFETY: `ptr`/`len` are exactly our live mapping; MREMAP_MAYMOVE lets the kernel
            // pick a new address, which replaces `ptr` below; nothing points into the mapping
            // across this call (`&mut self`). The result is checked for MAP_FAILED.
            let ptr = unsafe {
                libc::mremap(
                    self.ptr.as_ptr().cast(),
                    self.len,
                    new_len,
                    libc::MREMAP_MAYMOVE,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            self.ptr = NonNull::new(ptr.cast::<u8>()).expect("mremap never returns null");
            self.len = new_len;
        }
        #[cfg(not(target_os = "linux"))]
        {
            // Without `mremap`: a new mapping; the old one is unmapped as it is replaced.
            *self = Mapping::new(fd, new_len, offset, Access::ReadWrite)?;
        }
        Ok(())
    }

    /// The `AtomicU32` at byte `offset` (4-aligned, in bounds).
    #[inline]
    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        self.check(offset, 4, 4);
        // SAFETY: in bounds and aligned (checked); the mapping lives as long as `self`; an
        // `AtomicU32` is valid for any bit pattern and is the only way mproc touches these
        // bytes, so shared references to it from many threads and processes are sound.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// The `AtomicU64` at byte `offset` (8-aligned, in bounds).
    #[inline]
    pub(crate) fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        self.check(offset, 8, 8);
        // SAFETY: as in `atomic_u32`.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// Copies `src` into the mapping at `offset`. The caller must own that range (hold the
    /// lock guarding it, or have reserved it); a racing writer in another process could tear
    /// the bytes, never break memory safety here, since bytes have no invalid values.
    pub(crate) fn write(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len(), 1);
        // SAFETY: destination in bounds (checked), source a valid slice, the two cannot
        // overlap (the mapping is its own, never a Rust allocation).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        }
    }

    /// Copies bytes at `offset` into `dst` (same ownership rule as [`write`](Mapping::write)).
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len(), 1);
        // SAFETY: source in bounds (checked), destination a valid exclusive slice, no overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }

    /// Copies `len` bytes within the mapping, from `from` to `to` (the ranges may overlap).
    pub(crate) fn copy_within(&self, from: usize, to: usize, len: usize) {
        self.check(from, len, 1);
        self.check(to, len, 1);
        // SAFETY: both ranges in bounds (checked); `ptr::copy` allows overlap.
        unsafe { std::ptr::copy(self.ptr.as_ptr().add(from), self.ptr.as_ptr().add(to), len) }
    }

    /// Panics unless `[offset, offset + size)` lies in the mapping and `offset` is
    /// `align`-aligned (the mapping's base is page-aligned).
    #[inline]
    pub(crate) fn check(&self, offset: usize, size: usize, align: usize) {
        assert!(
            offset.checked_add(size).is_some_and(|end| end <= self.len),
            "region access out of bounds: {offset}+{size} > {}",
            self.len
        );
        assert!(offset % align == 0, "misaligned region access at {offset}");
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly our mapping, unmapped once here; every reference
        // into it borrows `self` (or an owner holding `self`), so none outlives it.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(target_os = "linux")]
const POPULATE: libc::c_int = libc::MAP_POPULATE;
#[cfg(not(target_os = "linux"))]
const POPULATE: libc::c_int = 0;
