//! How full the kernel ring buffer is: the producer position minus the consumer position, read
//! from the ring's own position pages. Sampled before every drain, its maximum is the ring's
//! high-water mark (`capture.ring_high_water_bytes` in the stats): how close a run came to
//! losing events, which the loss counters alone cannot say.

use std::{
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

/// A read-only mapping of the ring's consumer page and producer page (the first two pages of
/// the map's mmap layout); the data pages are not mapped a second time.
pub struct RingDepth {
    base: NonNull<libc::c_void>,
    page: usize,
}

impl RingDepth {
    /// `None` if the pages cannot be mapped: the high-water mark then stays 0, nothing else
    /// changes.
    pub fn new(ring: BorrowedFd<'_>) -> Option<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        // SAFETY: a fresh shared read-only mapping of two pages of the ring's fd; the kernel
        // allows mapping the consumer and producer pages read-only.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                ring.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(Self {
            base: NonNull::new(p)?,
            page,
        })
    }

    /// Bytes written by the kernel and not yet consumed (record headers included).
    pub fn pending(&self) -> u64 {
        // SAFETY: both positions are u64s at the start of their pages, mapped for our lifetime;
        // the kernel updates them atomically.
        let (cons, prod) = unsafe {
            let base = self.base.as_ptr().cast::<u8>();
            (
                (*base.cast::<AtomicU64>()).load(Ordering::Acquire),
                (*base.add(self.page).cast::<AtomicU64>()).load(Ordering::Acquire),
            )
        };
        prod.saturating_sub(cons)
    }
}

impl Drop for RingDepth {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.base.as_ptr(), 2 * self.page) };
    }
}

// SAFETY: the mapping is read-only and owned; reading it from another thread is fine.
unsafe impl Send for RingDepth {}
