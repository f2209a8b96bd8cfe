//! What the response cache's bookkeeping costs natively, per request, outside valgrind (whose
//! CPU model has no SHA extensions, so `instructions.py --mode cache` counts the key's SHA-256 on
//! `sha2`'s software path). Run with `cargo run --release --example cache_bench`.
//!
//! Each figure is the median over 15 batches, in nanoseconds per call. The machine is shared, so
//! compare figures from one run only.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tollgate::cache_parts::{key, Endpoint, Entry, Nanos, ResponseCache};

const BATCHES: usize = 15;

/// Median nanoseconds per call of `f` over `BATCHES` batches of `n` calls.
fn median_ns(n: u32, mut f: impl FnMut(u32)) -> f64 {
    let mut v: Vec<f64> = (0..BATCHES)
        .map(|b| {
            let t = Instant::now();
            for i in 0..n {
                f(b as u32 * n + i);
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[BATCHES / 2]
}

fn body_of(len: usize) -> Vec<u8> {
    // bench.py's chat body, its user message padded to `len` bytes.
    let head = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark."#;
    let tail = br#""}],"max_tokens":16}"#;
    let mut b = head.to_vec();
    while b.len() + tail.len() < len {
        b.push(b'x');
    }
    b.extend_from_slice(tail);
    b
}

fn entry(answer: &Bytes) -> Arc<Entry> {
    Arc::new(Entry {
        status: 200,
        content_type: Some("application/json".into()),
        body: answer.clone(),
        sse: false,
        cost: Nanos(12_345),
        expires: Instant::now() + Duration::from_secs(3600),
    })
}

fn main() {
    println!("| part | ns per call |");
    println!("|---|---|");
    for len in [107, 2_048, 116_000] {
        let body = body_of(len);
        let n = if len > 10_000 { 200 } else { 20_000 };
        let ns = median_ns(n, |_| {
            black_box(key(
                black_box("bench"),
                Endpoint::ChatCompletions,
                "gpt-4o-mini",
                black_box(&body),
            ));
        });
        println!(
            "| key of a {len}-byte body | {ns:.0} ({:.2} ns/byte) |",
            ns / len as f64
        );
        let sha = median_ns(n, |_| {
            use sha2::Digest;
            black_box(sha2::Sha256::digest(black_box(&body)));
        });
        println!("| SHA-256 of the body alone | {sha:.0} |");
    }
    // The memory at its byte budget, so every store also evicts the least recently used.
    let answer = Bytes::from(vec![b'a'; 606]);
    let cache = ResponseCache::new(16 * 64 * 1024);
    let keys: Vec<[u8; 32]> = (0u32..200_000)
        .map(|i| key("bench", Endpoint::ChatCompletions, "m", &i.to_be_bytes()))
        .collect();
    for k in &keys[..50_000] {
        cache.put(*k, entry(&answer));
    }
    let now = Instant::now();
    let ns = median_ns(5_000, |i| {
        black_box(cache.get(&keys[100_000 + i as usize], now));
    });
    println!("| lookup, not there | {ns:.0} |");
    let ns = median_ns(5_000, |i| {
        cache.put(keys[100_000 + i as usize], entry(&answer));
    });
    println!("| store a 606-byte answer (the entry, the insert, one eviction) | {ns:.0} |");
    // The last thousand stored are there (the budget holds about 1,400 entries).
    let ns = median_ns(5_000, |i| {
        let e = cache.get(&keys[174_000 + (i % 1_000) as usize], now);
        assert!(e.is_some());
        black_box(e);
    });
    println!("| lookup, there (a hit) | {ns:.0} |");
}
