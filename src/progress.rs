//! Progress bars for [`Pool::imap`](crate::Pool::imap) and
//! [`Pool::imap_unordered`](crate::Pool::imap_unordered) (cargo feature `progress`).

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::Result;

/// Adds a progress bar to an iterator of task results: `pool.imap(f, xs).progress()`.
///
/// The bar shows results received, the total when the input's length is known, the rate and
/// the time left, and counts failures. It draws on stderr only when stderr is a terminal, so
/// logs and pipes stay clean.
///
/// # Examples
/// ```
/// use mproc::ProgressExt;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let sum: u64 = pool.imap(square, 0..1000).progress().map(|r| r.unwrap()).sum();
/// assert_eq!(sum, 332_833_500);
/// # Ok::<(), mproc::Error>(())
/// ```
pub trait ProgressExt<R>: Iterator<Item = Result<R>> + Sized {
    /// Wraps the iterator with a progress bar.
    fn progress(self) -> Progress<Self> {
        let bar = match self.size_hint() {
            (_, Some(total)) => ProgressBar::new(total as u64),
            (_, None) => ProgressBar::no_length(),
        };
        let style =
            ProgressStyle::with_template("{bar:40} {pos}/{len} tasks  {per_sec}  ETA {eta}  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Progress {
            inner: self,
            bar,
            failed: 0,
        }
    }
}

impl<R, I: Iterator<Item = Result<R>>> ProgressExt<R> for I {}

/// An iterator of task results drawing a progress bar; see [`ProgressExt`].
pub struct Progress<I> {
    inner: I,
    bar: ProgressBar,
    failed: u64,
}

impl<R, I: Iterator<Item = Result<R>>> Iterator for Progress<I> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        let next = self.inner.next();
        match &next {
            None => self.bar.finish(),
            Some(r) => {
                if r.is_err() {
                    self.failed += 1;
                    self.bar.set_message(format!("{} failed", self.failed));
                }
                self.bar.inc(1);
            }
        }
        next
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<I> Drop for Progress<I> {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.abandon();
        }
    }
}
