//! Arbitrary bytes as a worker's answers, through the parent's frame reader and every decoder
//! of worker messages (hello, done, panic report, failure, refusal, fds, run): a panic, a hang
//! or an allocation past the limit is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::__fuzz::worker_stream(data, 1 << 16);
});
