//! How full the kernel's ring buffer is: the bytes the kernel has written and we have not read
//! yet, from the ring's own position counters (a ring that stays full loses events; the fill
//! shows it coming). aya 0.14 keeps its mappings of the counters private, so the two metadata
//! pages are mapped here a second time, read-only: the consumer page at offset 0, the producer
//! page after it (the kernel's layout of a BPF ring buffer map).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    sync::atomic::{AtomicU64, Ordering},
};

/// A read-only shared mapping of one page.
struct Page {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Page {
    fn map(fd: BorrowedFd<'_>, offset: usize, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh read-only shared mapping of the map's fd; nothing else aliases it
        // mutably on our side, and it is unmapped once, on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    /// The page's first 8 bytes: the position counter the kernel (or the reader) advances.
    fn position(&self) -> u64 {
        // SAFETY: the mapping is page-aligned and at least 8 bytes long; the kernel updates
        // the counter atomically, so it is read as an atomic.
        unsafe { (*(self.ptr as *const AtomicU64)).load(Ordering::Acquire) }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

pub struct RingFill {
    consumer: Page,
    producer: Page,
    size: u64,
}

// SAFETY: the pages are only read, through atomics.
unsafe impl Send for RingFill {}

impl RingFill {
    /// `fd`: the ring buffer map; `size`: its data size in bytes.
    pub fn new(fd: BorrowedFd<'_>, size: u32) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => 4096,
        };
        Ok(Self {
            consumer: Page::map(fd, 0, page)?,
            producer: Page::map(fd, page, page)?,
            size: size.into(),
        })
    }

    /// Bytes written by the kernel and not read yet (record headers included).
    pub fn pending_bytes(&self) -> u64 {
        let consumer = self.consumer.position();
        let producer = self.producer.position();
        producer.saturating_sub(consumer).min(self.size)
    }
}
