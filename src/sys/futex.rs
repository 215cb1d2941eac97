//! Waiting on a 32-bit word in shared memory: Linux futexes, shared between processes (no
//! `FUTEX_PRIVATE_FLAG`: the word lives in a mapping many processes hold).
//!
//! Elsewhere a short sleep loop stands in; it is correct (every caller re-checks its condition
//! in a loop) but slower, and a macOS port would use `os_sync_wait_on_address`.

use std::sync::atomic::AtomicU32;
use std::time::Instant;

/// Blocks while `*word == expected`, until woken, a signal, or `deadline`. Returns `false` only
/// when the deadline passed; spurious returns are possible, so callers re-check in a loop.
#[cfg(target_os = "linux")]
pub(crate) fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> bool {
    let timeout = match deadline {
        None => None,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            Some(libc::timespec {
                // `as _`: `time_t` is a deprecated name on musl (it is to change width there);
                // capped where any width holds it (68 years: the caller waits again).
                tv_sec: left.as_secs().min(i32::MAX as u64) as _,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            })
        }
    };
    let ts = timeout
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call (a shared mapping or
    // memory of this process); `ts` is null or points at a live timespec. FUTEX_WAIT reads the
    // word and sleeps; it writes nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    !(r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT))
}

/// Wakes up to `n` waiters on `word` in any process. Returns how many were woken.
#[cfg(target_os = "linux")]
pub(crate) fn wake(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: FUTEX_WAKE only uses the address as a key; `word` is valid and aligned.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    r.max(0) as usize
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> bool {
    use std::sync::atomic::Ordering;
    let step = std::time::Duration::from_micros(200);
    loop {
        if word.load(Ordering::Acquire) != expected {
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        std::thread::sleep(step);
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn wake(_word: &AtomicU32, _n: u32) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[test]
    fn wait_times_out_and_returns_at_once_on_a_changed_word() {
        let w = AtomicU32::new(1);
        let t = Instant::now();
        assert!(!wait(
            &w,
            1,
            Some(Instant::now() + Duration::from_millis(20))
        ));
        assert!(t.elapsed() >= Duration::from_millis(20));
        assert!(wait(&w, 2, Some(Instant::now() + Duration::from_secs(30))));
    }

    #[test]
    fn wake_releases_a_waiter() {
        let w = AtomicU32::new(0);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(30);
                while w.load(Ordering::Acquire) == 0 {
                    assert!(wait(&w, 0, Some(deadline)), "never woken");
                }
            });
            w.store(1, Ordering::Release);
            wake(&w, 1);
            h.join().unwrap();
        });
    }
}
