//! Observability: `tracing` events (target `mproc`) behind the cargo feature `tracing`; without
//! it the macro expands to nothing and the arguments are not evaluated.

/// Emits a `tracing` event at `$level` (`info`, `warn`...) when the feature is on.
macro_rules! event {
    ($level:ident, $($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        {
            ::tracing::$level!(target: "mproc", $($arg)*);
        }
    };
}

pub(crate) use event;
