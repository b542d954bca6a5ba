//! Kernel time to wall time: the kernel stamps events with CLOCK_BOOTTIME, records carry
//! wall-clock times.

/// The offset from boot time to the epoch, taken once.
#[derive(Copy, Clone, Debug)]
pub struct Clock {
    boot_to_epoch_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let epoch = clock_ns(libc::CLOCK_REALTIME);
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        Self {
            boot_to_epoch_ns: epoch - boot,
        }
    }

    /// A clock whose epoch equals boot time (tests).
    pub fn identity() -> Self {
        Self {
            boot_to_epoch_ns: 0,
        }
    }

    pub fn epoch_ns(&self, boot_ns: u64) -> u64 {
        (boot_ns as i128 + self.boot_to_epoch_ns).max(0) as u64
    }

    pub fn now_epoch_ns(&self) -> u64 {
        self.epoch_ns(clock_ns(libc::CLOCK_BOOTTIME) as u64)
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid clock id and timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}
