//! What prompt policy costs per request: walking a ~10 KB chat body for its texts, the
//! credential detector over them, a one-pattern `block_patterns` set, and all of it together
//! as `policy::check_prompt` does it. Run with `cargo run --release --example scan_bench`.
//!
//! Each figure is the median over 10 batches of `ITERATIONS` runs, in nanoseconds per run and
//! per 10,000 body bytes. The machine is shared, so compare figures from one run only.

use tollgate::scan;

use regex::RegexSet;
use serde_json::json;
use std::hint::black_box;
use std::time::Instant;

const ITERATIONS: u32 = 2_000;
const BATCHES: usize = 10;
const TARGET_BYTES: usize = 10_000;

const PROSE: &[&str] = &[
    "I am migrating our billing service from a cron job to a queue consumer, and I would like a \
     second opinion on the retry policy. Each task reads an invoice, asks the risk-scoring service \
     for a verdict, and writes the result back; the disk-usage alarms fire when the dead-letter \
     queue grows past a few thousand messages.",
    "The main concern is idempotency: if a worker crashes after charging the card but before it \
     acknowledges the message, the next worker will charge again. We keep a ledger keyed by the \
     invoice id, but the ledger write and the acknowledgement are not atomic.",
    "Could you review the function below, point out any race, and suggest how to make the retry \
     loop back off exponentially with jitter? Please keep the answer short and focus on the \
     failure modes that matter in production, not on style.",
    "For context, we run three replicas behind a load balancer in the Asia-Pacific region, the \
     database is Postgres 15 with serializable isolation for the ledger table only, and the queue \
     guarantees at-least-once delivery with a visibility timeout of thirty seconds.",
];

const CODE: &str = r#"```rust
pub async fn process(msg: &Message, ledger: &Ledger, risk: &RiskClient) -> Result<(), Error> {
    let invoice: Invoice = serde_json::from_slice(&msg.body)?;
    if ledger.already_charged(invoice.id).await? {
        return Ok(()); // a redelivery: the previous attempt charged and crashed
    }
    let verdict = risk.score(&invoice).await?;
    if verdict.score > 0.8 {
        ledger.flag(invoice.id, "risk-review").await?;
        return Ok(());
    }
    let api_key = std::env::var("PAYMENTS_API_KEY").map_err(|_| Error::Config)?;
    let charge = payments::charge(&api_key, invoice.customer, invoice.amount_cents).await?;
    ledger.record(invoice.id, charge.id).await?;
    Ok(())
}
```"#;

fn chat_body(secret: Option<&str>) -> Vec<u8> {
    let mut messages =
        vec![json!({"role": "system", "content": "You are a careful senior backend engineer."})];
    let mut i = 0;
    loop {
        let user = format!(
            "{}\n\n{}\n\n{}",
            PROSE[i % PROSE.len()],
            CODE,
            PROSE[(i + 1) % PROSE.len()]
        );
        messages.push(json!({"role": "user", "content": [{"type": "text", "text": user}]}));
        messages.push(json!({"role": "assistant", "content": PROSE[(i + 2) % PROSE.len()]}));
        i += 1;
        let size = serde_json::to_vec(&messages).map_or(0, |v| v.len());
        if size >= TARGET_BYTES - 800 {
            break;
        }
    }
    let last = match secret {
        Some(s) => format!("One more thing, this is the config that fails: PAYMENTS_API_KEY={s}"),
        None => {
            "One more thing: the config is loaded from the environment at start-up.".to_string()
        }
    };
    messages.push(json!({"role": "user", "content": last}));
    serde_json::to_vec(
        &json!({"model": "gpt-4o", "messages": messages, "max_completion_tokens": 512}),
    )
    .unwrap_or_default()
}

/// Median nanoseconds per call of `f`.
fn measure(mut f: impl FnMut() -> usize) -> f64 {
    let mut batches: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            let mut sink = 0usize;
            for _ in 0..ITERATIONS {
                sink = sink.wrapping_add(f());
            }
            black_box(sink);
            start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    (batches[BATCHES / 2 - 1] + batches[BATCHES / 2]) / 2.0
}

fn main() {
    // A fake key of the OpenAI project-key format, generated here, not anyone's.
    let fake_key = format!(
        "sk-proj-{}T3BlbkFJ{}",
        "aB3dE5fG7hJ9kL1mN2pQ4rS6tU8vW0xY".repeat(2),
        "Zq7Wm2Xk9Lp4Rt6Ys1Vn3Hb8Jc5Gd0Fe".repeat(2)
    );
    let one = regex::Regex::new(r"(?i)\bproject\s+falcon\b").expect("regex");
    let set = match RegexSet::new([r"(?i)\bproject\s+falcon\b"]) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("bad pattern: {e}");
            return;
        }
    };

    println!(
        "{:<34} {:>10} {:>12}",
        "chat body, 10 KB", "ns/body", "ns/10 KB"
    );
    for (label, secret) in [
        ("no secret", None),
        ("secret at the end", Some(fake_key.as_str())),
    ] {
        let body = chat_body(secret);
        let mut texts: Vec<String> = Vec::new();
        let text_bytes = scan::for_each_text(scan::Format::Chat, &body, &mut |t| {
            texts.push(t.to_string())
        });
        let found = texts.iter().find_map(|t| scan::find_secret(t));
        println!(
            "-- {label}: {} body bytes, {} texts, {text_bytes} text bytes, detector says {:?}",
            body.len(),
            texts.len(),
            found.map(|k| k.as_str())
        );
        let per_10k = |ns: f64| ns * TARGET_BYTES as f64 / body.len() as f64;
        let rows: [(&str, f64); 7] = [
            (
                "for_each_text alone",
                measure(|| {
                    scan::for_each_text(scan::Format::Chat, black_box(&body), &mut |t| {
                        black_box(t);
                    })
                }),
            ),
            (
                "find_secret over all texts",
                measure(|| {
                    texts
                        .iter()
                        .filter(|t| scan::find_secret(t).is_some())
                        .count()
                }),
            ),
            (
                "1-pattern RegexSet over all texts",
                measure(|| texts.iter().filter(|t| set.is_match(t)).count()),
            ),
            (
                "1-pattern Regex over all texts",
                measure(|| texts.iter().filter(|t| one.is_match(t)).count()),
            ),
            (
                "total (walk + secrets + set)",
                measure(|| {
                    let mut hits = 0;
                    scan::for_each_text(scan::Format::Chat, black_box(&body), &mut |t| {
                        hits += usize::from(scan::find_secret(t).is_some() || set.is_match(t));
                    });
                    hits
                }),
            ),
            (
                "prompt_tokens_upper_bound",
                measure(|| {
                    scan::prompt_tokens_upper_bound(scan::Format::Chat, black_box(&body)) as usize
                }),
            ),
            (
                "(reference) serde_json::Value parse",
                measure(|| {
                    serde_json::from_slice::<serde_json::Value>(black_box(&body))
                        .map_or(0, |v| v.is_object() as usize)
                }),
            ),
        ];
        for (name, ns) in rows {
            println!("{name:<34} {ns:>10.0} {:>12.0}", per_10k(ns));
        }
    }
}
