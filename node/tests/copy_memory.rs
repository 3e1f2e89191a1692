//! Heap held by idle copies: an idle connection must not keep copy buffers (issue 17's
//! per-connection memory goal). This test binary counts every live heap byte through its own
//! global allocator, so it holds one test only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn idle_copies_hold_no_copy_buffers() {
    const COPIES: usize = 2000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The streams themselves are allocated before the baseline: only what the copies add
        // is counted.
        let mut ends = Vec::with_capacity(COPIES);
        let mut middles = Vec::with_capacity(COPIES);
        for _ in 0..COPIES {
            let (client, client_far) = duplex(4096);
            let (upstream, upstream_far) = duplex(4096);
            ends.push((client, upstream));
            middles.push((client_far, upstream_far));
        }
        let before = LIVE.load(Ordering::Relaxed);
        let mut tasks = Vec::with_capacity(COPIES);
        for (mut a, mut b) in middles {
            tasks.push(tokio::spawn(async move {
                node::copy::copy_both_ways(
                    &mut a,
                    &mut b,
                    Duration::from_secs(600),
                    &|_| {},
                    &|_| {},
                )
                .await
            }));
        }
        // One exchange on every connection, so both directions have copied bytes, then idle.
        for (client, upstream) in &mut ends {
            client.write_all(b"request").await.unwrap();
            let mut got = [0u8; 7];
            upstream.read_exact(&mut got).await.unwrap();
            upstream.write_all(b"answer!").await.unwrap();
            client.read_exact(&mut got).await.unwrap();
        }
        let after = LIVE.load(Ordering::Relaxed);
        let per_copy = (after - before) / COPIES as isize;
        println!("heap per idle copy: {per_copy} bytes ({COPIES} copies)");
        // A task and its copy state are a few hundred bytes to a few KiB, plus the free buffers
        // of each thread's pool (at most 32 × 64 KiB per thread, ~3 KiB per copy here); one
        // 64 KiB buffer per direction held while idle (tokio's copy_bidirectional) would be
        // 128 KiB.
        assert!(
            per_copy < 12 * 1024,
            "{per_copy} bytes of heap per idle copy: copy buffers are held while idle"
        );
        for (client, upstream) in ends {
            drop((client, upstream));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}
