//! Exhausts linear memory: keeps allocating 1 MiB chunks, writing every byte
//! of each (so no page stays untouched) and keeping them all, until an
//! allocation fails. Allocation goes through `try_reserve`, so when the host
//! refuses to grow memory (`memory.grow` returns -1) the guest frees its
//! hoard and returns `Err(io("memory exhausted after N MiB: ..."))`; a host
//! that traps on a refused grow ends it with a trap instead. Never `Ok`; the
//! input is ignored.
//!
//! A correct host caps the instance's memory (a limiter, or the pooling
//! allocator's limits) far below the machine's, reports the run as failed,
//! and keeps serving other runs.

use std::hint::black_box;

use test_programs::{Guest, PipelineError, Report};

const CHUNK: usize = 1 << 20;

struct MemoryBomb;

impl Guest for MemoryBomb {
    fn process(_input: String, _output_dir: String) -> Result<Report, PipelineError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        let failure = loop {
            if let Err(err) = hoard.try_reserve(1) {
                break err;
            }
            let mut chunk = Vec::new();
            if let Err(err) = chunk.try_reserve_exact(CHUNK) {
                break err;
            }
            chunk.resize(CHUNK, 0xA5);
            hoard.push(black_box(chunk));
        };
        let mebibytes = hoard.len();
        // Free the hoard first: the error message needs a little memory.
        drop(black_box(hoard));
        Err(PipelineError::Io(format!("memory exhausted after {mebibytes} MiB: {failure}")))
    }
}

test_programs::export!(MemoryBomb with_types_in test_programs::bindings);
