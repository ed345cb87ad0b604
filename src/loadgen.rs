//! `rewardrt load`: a bounded load generator for a running `rewardrt serve`.
//!
//! For each concurrency level, that many client threads send a fixed total of requests (each with
//! `--records-per-request` records taken in turn from the input file) as fast as answers come back, and the
//! table reports requests/s, records/s, p50/p99 latency and errors. Compare two servers (e.g. dynamic batching
//! against `--max-batch-size 1`) by running it against each: `scripts/bench-serve.sh` does exactly that.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

#[derive(Args)]
pub struct LoadArgs {
    /// Server address, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// JSONL records to send ({"prompt", "response"}, {"messages"} or {"text"}), cycled.
    #[arg(long)]
    input: PathBuf,
    /// Concurrent clients per level, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 16, 64])]
    concurrency: Vec<usize>,
    /// Requests per level.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Records per request.
    #[arg(long, default_value_t = 1)]
    records_per_request: usize,
    /// Endpoint: score ({"inputs"}) or get_reward (OpenRLHF's {"query"}, records must be {"text"}).
    #[arg(long, default_value = "score")]
    endpoint: String,
    /// Label for this run in the table (e.g. "dynamic" or "batch-1").
    #[arg(long, default_value = "")]
    label: String,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Level {
    concurrency: usize,
    seconds: f64,
    latencies: Vec<f64>,
    errors: usize,
    records: usize,
}

pub fn run(args: &LoadArgs) -> Result<std::process::ExitCode> {
    let text = std::fs::read_to_string(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    let records: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let mut v: Value =
                serde_json::from_str(l).with_context(|| format!("{}:{}: invalid JSON", args.input.display(), i + 1))?;
            if let Some(obj) = v.as_object_mut() {
                obj.remove("id");
            }
            Ok(v)
        })
        .collect::<Result<_>>()?;
    if records.is_empty() {
        bail!("{}: no records", args.input.display());
    }
    let url = format!("{}/{}", args.url.trim_end_matches('/'), args.endpoint);
    let body = |i: usize| -> Result<Value> {
        let chunk: Vec<&Value> = (0..args.records_per_request)
            .map(|k| &records[(i * args.records_per_request + k) % records.len()])
            .collect();
        Ok(match args.endpoint.as_str() {
            "score" => json!({ "inputs": chunk }),
            "get_reward" => {
                json!({ "query": chunk.iter().map(|r| r["text"].as_str().context("get_reward needs {\"text\"} records")).collect::<Result<Vec<_>>>()? })
            }
            other => bail!("unknown endpoint `{other}` (score or get_reward)"),
        })
    };
    let bodies: Vec<Value> = (0..args.requests).map(body).collect::<Result<_>>()?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into();
    // One warm-up request, so connection setup and first-batch costs are not measured.
    agent
        .post(&url)
        .send_json(&bodies[0])
        .with_context(|| format!("cannot reach {url}"))?;

    let mut levels = Vec::new();
    for &concurrency in &args.concurrency {
        let next = AtomicUsize::new(0);
        let started = Instant::now();
        let results: Vec<(Vec<f64>, usize)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..concurrency.max(1))
                .map(|_| {
                    let (agent, next, bodies, url) = (agent.clone(), &next, &bodies, &url);
                    scope.spawn(move || {
                        let (mut latencies, mut errors) = (Vec::new(), 0);
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= bodies.len() {
                                return (latencies, errors);
                            }
                            let t = Instant::now();
                            match agent.post(url.as_str()).send_json(&bodies[i]) {
                                Ok(mut r) if r.status().is_success() => {
                                    let _ = r.body_mut().read_to_string();
                                    latencies.push(t.elapsed().as_secs_f64());
                                }
                                _ => errors += 1,
                            }
                        }
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("client thread")).collect()
        });
        let seconds = started.elapsed().as_secs_f64();
        let mut latencies: Vec<f64> = results.iter().flat_map(|(l, _)| l.iter().copied()).collect();
        latencies.sort_by(f64::total_cmp);
        let errors = results.iter().map(|(_, e)| e).sum();
        levels.push(Level {
            concurrency,
            seconds,
            records: latencies.len() * args.records_per_request,
            latencies,
            errors,
        });
    }

    println!(
        "{} {} records/request, {} requests per level",
        if args.label.is_empty() {
            url.clone()
        } else {
            format!("{} ({url})", args.label)
        },
        args.records_per_request,
        args.requests
    );
    println!("| clients | requests/s | records/s | p50 ms | p99 ms | errors |");
    println!("|--------:|-----------:|----------:|-------:|-------:|-------:|");
    let mut rows = Vec::new();
    for l in &levels {
        let q = |p: f64| {
            if l.latencies.is_empty() {
                f64::NAN
            } else {
                l.latencies[((l.latencies.len() - 1) as f64 * p).round() as usize] * 1e3
            }
        };
        let rps = l.latencies.len() as f64 / l.seconds;
        let recs = l.records as f64 / l.seconds;
        println!(
            "| {:>7} | {:>10.1} | {:>9.1} | {:>6.2} | {:>6.2} | {:>6} |",
            l.concurrency,
            rps,
            recs,
            q(0.5),
            q(0.99),
            l.errors
        );
        rows.push(json!({
            "concurrency": l.concurrency, "requests_per_second": rps, "records_per_second": recs,
            "p50_ms": q(0.5), "p99_ms": q(0.99), "errors": l.errors, "seconds": l.seconds,
        }));
    }
    if let Some(path) = &args.json {
        let value = json!({"label": args.label, "url": url, "records_per_request": args.records_per_request,
                           "requests": args.requests, "levels": rows});
        std::fs::write(path, format!("{value:#}\n")).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let errors: usize = levels.iter().map(|l| l.errors).sum();
    Ok(if errors > 0 {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::SUCCESS
    })
}
