//! `rewardrt`: the command-line shell over the library. Parses arguments, calls `rewardrt`, prints results.
//!
//! Exit status: 0 success; 1 fatal error (bad model, no ONNX Runtime, unavailable execution provider, failed
//! verification); 2 some input records failed while the others were scored and written.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rewardrt::{
    batch::Truncation,
    bench::{self, BenchCase},
    ep, eval, record, runtime, verify, ExecutionProvider, Input, LastTokenRule, PaddingSide, Scored, Scorer,
    ScorerOptions,
};
use serde_json::{json, Value};

mod loadgen;
mod plot;

/// Run LLM reward models exported to ONNX: r = h_last · W_r, exactly, on any execution provider.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score JSONL records {"id"?, "prompt", "response"} or {"id"?, "text"}; writes {"id", "reward"} per line
    /// ("rewards": [...] for multi-output heads, "error" for a record that failed), in input order.
    Score(ScoreArgs),
    /// Show the model's manifest, graph inputs/outputs, ONNX Runtime library and execution providers.
    Info(InfoArgs),
    /// Re-score the model's reference.jsonl and compare with the rewards PyTorch computed.
    Verify(VerifyArgs),
    /// Measure sequences/s and tokens/s for several batch sizes and lengths.
    Bench(BenchArgs),
    /// Preference accuracy on chosen/rejected pairs (RewardBench format), per subset, with margin statistics.
    Eval(EvalArgs),
    /// Serve the model over HTTP (/score, /get_reward, /health, /info, /metrics) with dynamic batching.
    Serve(ServeArgs),
    /// Load generator for a running server: requests/s, records/s and latency percentiles per concurrency.
    Load(loadgen::LoadArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// Model directory (contains rewardrt.json).
    #[arg(long, short)]
    model: PathBuf,
    /// Execution provider: auto, cpu, cuda, tensorrt, directml (optionally :DEVICE, e.g. cuda:1).
    #[arg(long, default_value = "auto", value_parser = ExecutionProvider::parse)]
    ep: ExecutionProvider,
    /// ONNX Runtime intra-op threads (default: ONNX Runtime's choice).
    #[arg(long)]
    threads: Option<usize>,
    /// Sequences per backbone call.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Padding side (default: the manifest's).
    #[arg(long, value_enum)]
    padding_side: Option<PaddingSide>,
    /// Last-token rule: mask (last position with attention mask 1) or hf (rightmost id != pad id, as
    /// transformers does). Default: the manifest's.
    #[arg(long, value_enum)]
    last_token: Option<LastTokenRule>,
    /// Token limit per record, at most the model's (default: the manifest's max_length).
    #[arg(long)]
    max_length: Option<usize>,
    /// Over-length records: error (reported, the others scored) or left (drop prompt tokens from the start;
    /// the response and the scored last token are kept).
    #[arg(long, value_enum, default_value = "error")]
    truncation: Truncation,
    /// ONNX Runtime library to load (default: ORT_DYLIB_PATH, next to the executable, the build's copy, system).
    #[arg(long, env = "REWARDRT_ORT_LIBRARY")]
    ort_library: Option<PathBuf>,
}

impl ModelArgs {
    fn load(&self) -> Result<Scorer> {
        self.load_with(ScorerOptions::default())
    }

    fn load_with(&self, options: ScorerOptions) -> Result<Scorer> {
        let options = self.options(options);
        let scorer = Scorer::load(&self.model, options)
            .with_context(|| format!("cannot load model {}", self.model.display()))?;
        announce(&scorer, self.batch_size);
        Ok(scorer)
    }

    /// `options` with this command line's settings.
    fn options(&self, options: ScorerOptions) -> ScorerOptions {
        let mut options = options.with_ep(self.ep).with_batch_size(self.batch_size);
        if let Some(n) = self.threads {
            options = options.with_threads(n);
        }
        if let Some(side) = self.padding_side {
            options = options.with_padding_side(side);
        }
        if let Some(rule) = self.last_token {
            options = options.with_last_token(rule);
        }
        if let Some(n) = self.max_length {
            options = options.with_max_length(n);
        }
        if let Some(path) = &self.ort_library {
            options = options.with_ort_library(path);
        }
        options.with_truncation(self.truncation)
    }
}

/// Says on stderr which execution provider runs (a warning when `auto` fell back to CPU) and any batch
/// dependence a quantised graph has.
fn announce(scorer: &Scorer, batch_size: usize) {
    let batch_dependence = scorer
        .model()
        .manifest
        .precision
        .as_ref()
        .and_then(|p| p.measured.get("batch_dependence_max_abs"))
        .and_then(Value::as_f64)
        .filter(|d| *d > 1e-5);
    if let (Some(d), true) = (batch_dependence, batch_size > 1) {
        eprintln!(
            "rewardrt: note: this int8 graph quantises activations per batch, so a reward moves by up to {d:.1e} \
             with its batch neighbours (measured at export); --batch-size 1 makes rewards batch-independent"
        );
    }
    let report = scorer.ep_report();
    if report.fell_back_to_cpu() {
        eprintln!("rewardrt: warning: {}", report.summary());
    } else {
        eprintln!("rewardrt: {}", report.summary());
    }
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input JSONL file, or - for stdin.
    #[arg(long, short, default_value = "-")]
    input: PathBuf,
    /// Output JSONL file, or - for stdout.
    #[arg(long, short, default_value = "-")]
    output: PathBuf,
    /// Also output layer N's hidden state at the scored token as "hidden" (0 = embeddings; needs a model
    /// exported with --all-layers).
    #[arg(long)]
    layer: Option<usize>,
    /// Normalise rewards with the model's mean/std (from the source config); raw rewards otherwise.
    #[arg(long)]
    normalize: bool,
    /// Write run statistics (records, load and scoring seconds, records/s, provider) as JSON to this file.
    #[arg(long)]
    stats: Option<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL rows {"id"?, "prompt", "chosen", "rejected", "subset"?}, or with `messages` / full conversations.
    #[arg(long)]
    pairs: PathBuf,
    /// Write the full report (accuracy, margin quantiles per subset, failed rows, settings) as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Draw the margin distribution per subset (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Which output of a multi-objective head to compare (default: the first).
    #[arg(long)]
    label: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Padded cost budget per batch (longest sequence x records).
    #[arg(long, default_value_t = 16_384)]
    max_batch_tokens: usize,
    /// Records per batch (1 turns dynamic batching off).
    #[arg(long, default_value_t = 64)]
    max_batch_size: usize,
    /// Longest a record waits for batch-mates while a worker is free, in milliseconds. 0 (the default) sends
    /// work to a free worker at once; batches still grow under load, because records wait while every worker
    /// is busy and the next batch takes all of them, up to the budget.
    #[arg(long, default_value_t = 0)]
    max_wait_ms: u64,
    /// Requests admitted at once; more get 429.
    #[arg(long, default_value_t = 512)]
    max_concurrent_requests: usize,
    /// Records queued or running at once; a request that would exceed it gets 429.
    #[arg(long, default_value_t = 8192)]
    max_queued_records: usize,
    /// Records per request; more get 413.
    #[arg(long, default_value_t = 1024)]
    max_records_per_request: usize,
    /// Request body size in bytes; larger gets 413.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Worker threads, one ONNX Runtime session each (on a GPU 1-2; on CPU, cores / --threads).
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

#[derive(Args)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Largest accepted absolute difference from PyTorch's rewards (default 1e-4; for a float16 or int8 graph,
    /// the tolerance its exporter recorded).
    #[arg(long)]
    tolerance: Option<f32>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Batch sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 32])]
    batch_sizes: Vec<usize>,
    /// Sequence lengths in tokens, comma-separated (capped at the model's max_length).
    #[arg(long, value_delimiter = ',', default_values_t = [16, 32, 64])]
    lengths: Vec<usize>,
    /// Sequences per measurement.
    #[arg(long, default_value_t = 256)]
    sequences: usize,
    /// Repetitions per configuration; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Score(args) => score(args),
        Command::Info(args) => info(args).map(|()| ExitCode::SUCCESS),
        Command::Verify(args) => verify_cmd(args),
        Command::Eval(args) => eval_cmd(args),
        Command::Serve(args) => serve_cmd(args),
        Command::Load(args) => loadgen::run(&args),
        Command::Bench(args) => bench_cmd(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rewardrt: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|io| io.kind() == io::ErrorKind::BrokenPipe)
}

fn open_input(path: &Path) -> Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(io::stdin())));
    }
    let file = File::open(path).with_context(|| format!("cannot open input {}", path.display()))?;
    Ok(Box::new(BufReader::new(file)))
}

fn open_output(path: &Path) -> Result<Box<dyn Write>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufWriter::new(io::stdout().lock())));
    }
    let file = File::create(path).with_context(|| format!("cannot create output {}", path.display()))?;
    Ok(Box::new(BufWriter::new(file)))
}

/// Records read, scored and written at a time by `score`.
const CHUNK: usize = 1024;

fn score(args: ScoreArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let scorer = args
        .model
        .load_with(ScorerOptions::default().with_normalize(args.normalize))?;
    let load_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let source = if args.input == Path::new("-") {
        "<stdin>".to_owned()
    } else {
        args.input.display().to_string()
    };
    let mut lines = record::records(open_input(&args.input)?);
    let mut out = open_output(&args.output)?;
    let multi = scorer.num_labels() > 1;
    let (mut total, mut failed) = (0usize, 0usize);
    let progress = progress_bar(|| count_records(&args.input), "records");
    let mut notices = Notices::default();

    // Stream in chunks: output appears as it is scored and memory stays bounded on large files.
    loop {
        let chunk = lines
            .by_ref()
            .take(CHUNK)
            .collect::<io::Result<Vec<_>>>()
            .with_context(|| format!("cannot read {source}"))?;
        if chunk.is_empty() {
            break;
        }
        let lines_read = chunk.len();
        total += lines_read;
        // The inputs move out to be scored; each record's line and id stay for its output line.
        let (mut inputs, mut records) = (Vec::with_capacity(lines_read), Vec::with_capacity(lines_read));
        let bad: Vec<Option<record::LineError>> = chunk
            .into_iter()
            .map(|line| match line {
                Ok(r) => {
                    inputs.push(r.input);
                    records.push((r.line, r.id));
                    None
                }
                Err(e) => Some(e),
            })
            .collect();
        let (scored, stats) = scorer.score_full(&inputs, args.layer)?;
        notices.observe(&scorer, &stats, &inputs, &scored, &progress, |i| {
            format!("{source}:line {} (id {})", records[i].0, records[i].1)
        });
        let mut scored = records.into_iter().zip(scored);
        for bad in bad {
            let value = match bad {
                Some(e) => {
                    failed += 1;
                    progress.suspend(|| eprintln!("rewardrt: {source}:{e}"));
                    json!({"id": e.id, "error": e.to_string()})
                }
                None => match scored.next().expect("one result per record") {
                    ((_, id), Ok(Scored { rewards, hidden })) => {
                        let mut value = if multi {
                            json!({"id": id, "rewards": rewards})
                        } else {
                            json!({"id": id, "reward": rewards[0]})
                        };
                        if let Some(hidden) = hidden {
                            value["hidden"] = json!(hidden);
                        }
                        value
                    }
                    ((line, id), Err(e)) => {
                        failed += 1;
                        let message = record_error(e);
                        progress.suspend(|| eprintln!("rewardrt: {source}:line {line}: {message}"));
                        json!({"id": id, "error": format!("line {line}: {message}")})
                    }
                },
            };
            serde_json::to_writer(&mut out, &value)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        progress.inc(lines_read as u64);
    }
    progress.finish_and_clear();
    out.flush()?;
    notices.summary(&scorer, total);
    if let Some(path) = &args.stats {
        let score_seconds = started.elapsed().as_secs_f64();
        let stats = json!({
            "records": total,
            "failed": failed,
            "truncated": notices.truncated,
            "double_bos_removed": notices.double_bos,
            "load_seconds": load_seconds,
            "score_seconds": score_seconds,
            "format_tokenize_seconds": notices.tokenize.as_secs_f64(),
            "model_seconds": notices.model.as_secs_f64(),
            "records_per_second": total as f64 / score_seconds.max(1e-9),
            "execution_provider": scorer.ep_report().effective,
            "threads": args.model.threads,
            "batch_size": args.model.batch_size,
            "normalized": scorer.normalizes(),
        });
        std::fs::write(path, format!("{stats:#}\n")).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if failed > 0 {
        eprintln!("rewardrt: {failed} of {total} records failed; the others were scored");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// A record's error as one line: the field it concerns, then the message.
fn record_error(e: rewardrt::Error) -> String {
    match e {
        rewardrt::Error::Record { field, message, .. } => match field {
            Some(f) => format!("field `{f}`: {message}"),
            None => message,
        },
        other => other.to_string(),
    }
}

/// Non-blank lines of a file, for the progress bar's length; `None` for stdin or an unreadable file.
fn count_records(path: &Path) -> Option<u64> {
    if path == Path::new("-") {
        return None;
    }
    let reader = BufReader::new(File::open(path).ok()?);
    record::rows(reader, |_, _| Ok(())).try_fold(0, |n, line| line.ok().map(|_| n + 1))
}

/// A progress bar with rate and ETA on stderr, only when stderr is a terminal (`len` is asked for only then:
/// counting a file's records reads it once more).
fn progress_bar(len: impl FnOnce() -> Option<u64>, unit: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match len() {
        Some(n) => (
            ProgressBar::new(n),
            format!("{{bar:40}} {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}}"),
        ),
        None => (
            ProgressBar::no_length(),
            format!("{{spinner}} {{pos}} {unit} {{per_sec}}"),
        ),
    };
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    bar
}

/// What scoring did that a user should hear about once: truncation, doubled BOS, pad == eos endings.
#[derive(Default)]
struct Notices {
    truncated: usize,
    double_bos: usize,
    pad_eos_warned: bool,
    /// Time spent formatting and tokenizing, and in the backbone plus selection and head, over the run.
    tokenize: std::time::Duration,
    model: std::time::Duration,
}

impl Notices {
    fn observe(
        &mut self,
        scorer: &Scorer,
        stats: &rewardrt::ScoreStats,
        inputs: &[Input],
        scored: &[rewardrt::Result<Scored>],
        progress: &ProgressBar,
        name: impl Fn(usize) -> String,
    ) {
        self.truncated += stats.truncated;
        self.double_bos += stats.double_bos;
        self.tokenize += stats.format_tokenize;
        self.model += stats.backbone + stats.select_head;
        let Some(i) = stats.first_ends_in_pad_eos.filter(|_| !self.pad_eos_warned) else {
            return;
        };
        self.pad_eos_warned = true;
        let in_force = scorer.last_token();
        let other = match in_force {
            LastTokenRule::Mask => LastTokenRule::NonPad,
            LastTokenRule::NonPad => LastTokenRule::Mask,
        };
        let fmt = |r: Option<&[f32]>| r.map_or("n/a".to_owned(), |r| format!("{r:?}"));
        let here = scored[i].as_ref().ok().map(|s| s.rewards.as_slice());
        let there = scorer.score_one_under(&inputs[i], other).ok();
        let what = |rule| match rule {
            LastTokenRule::Mask => "`mask` scores the trailing eos itself",
            LastTokenRule::NonPad => "`hf` (transformers) scores the last token that is not pad/eos",
        };
        progress.suspend(|| {
            eprintln!(
                "rewardrt: warning: this model's pad id equals its eos id and {} ends in eos. In force: {} \
                 (reward {}); {} would give {}. Choose with --last-token mask|hf (reported once)",
                name(i),
                what(in_force),
                fmt(here),
                what(other),
                fmt(there.as_deref())
            )
        });
    }

    fn summary(&self, scorer: &Scorer, total: usize) {
        if self.truncated > 0 {
            eprintln!(
                "rewardrt: {} of {total} records were longer than {} tokens and lost prompt tokens from the start \
                 (--truncation left; responses kept whole)",
                self.truncated,
                scorer.max_length()
            );
        }
        if self.double_bos > 0 {
            eprintln!(
                "rewardrt: warning: {} of {total} records began with BOS and the tokenizer added another; the extra \
                 BOS was removed (send chat-formatted text as `messages`, or text without BOS)",
                self.double_bos
            );
        }
    }
}

fn eval_cmd(args: EvalArgs) -> Result<ExitCode> {
    let scorer = args.model.load()?;
    let label = match &args.label {
        None => 0,
        Some(name) => scorer
            .labels()
            .iter()
            .position(|l| l == name)
            .with_context(|| format!("no label `{name}`; the model's labels are {:?}", scorer.labels()))?,
    };
    let source = args.pairs.display().to_string();
    let rows = eval::read_pairs(open_input(&args.pairs)?).with_context(|| format!("cannot read {source}"))?;
    let progress = progress_bar(|| Some(rows.len() as u64), "pairs");
    let mut notices = Notices::default();
    let mut margins = Vec::new();
    let mut failed = Vec::new();
    for chunk in rows.chunks(CHUNK / 2) {
        let pairs: Vec<&eval::Pair> = chunk.iter().filter_map(|r| r.as_ref().ok()).collect();
        let inputs: Vec<Input> = pairs
            .iter()
            .flat_map(|p| [p.chosen.clone(), p.rejected.clone()])
            .collect();
        let (scored, stats) = scorer.score_full(&inputs, None)?;
        notices.observe(&scorer, &stats, &inputs, &scored, &progress, |i| {
            let p = pairs[i / 2];
            let side = if i % 2 == 0 { "chosen" } else { "rejected" };
            format!("{source}:line {} (id {}, {side})", p.line, p.id)
        });
        for row in chunk.iter().filter_map(|r| r.as_ref().err()) {
            progress.suspend(|| eprintln!("rewardrt: {source}:{row}"));
            failed.push(json!({"line": row.line, "id": row.id, "error": row.to_string()}));
        }
        let mut scored = scored.into_iter();
        for pair in pairs {
            let (side, e) = match (scored.next().expect("chosen"), scored.next().expect("rejected")) {
                (Ok(c), Ok(r)) => {
                    margins.push((pair.subset.clone(), f64::from(c.rewards[label] - r.rewards[label])));
                    continue;
                }
                (Err(e), _) => ("chosen", e),
                (_, Err(e)) => ("rejected", e),
            };
            let message = format!("line {}, {side}: {}", pair.line, record_error(e));
            progress.suspend(|| eprintln!("rewardrt: {source}:{message}"));
            failed.push(json!({"line": pair.line, "id": pair.id, "error": message}));
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    notices.summary(&scorer, rows.len() * 2);
    if margins.is_empty() {
        anyhow::bail!("{source}: no pair could be evaluated ({} failed)", failed.len());
    }
    let report = eval::report(&margins);
    print_eval(&report, &scorer.labels()[label]);
    if let Some(path) = &args.report {
        let value = json!({
            "model": scorer.model().dir,
            "name": scorer.model().manifest.name,
            "pairs_file": args.pairs,
            "label": scorer.labels()[label],
            "overall": report.overall,
            "subsets": report.subsets,
            "failed": failed,
            "settings": {
                "execution_provider": scorer.ep_report().effective,
                "last_token": scorer.last_token(),
                "padding_side": scorer.padding_side(),
                "max_length": scorer.max_length(),
                "truncation": scorer.truncation(),
                "chat_template": scorer.uses_chat_template(),
                "truncated_records": notices.truncated,
                "double_bos_removed": notices.double_bos,
            },
        });
        std::fs::write(path, format!("{value:#}\n")).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("rewardrt: report written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot::margins(path, &report, &scorer.model().manifest.name)?;
        eprintln!("rewardrt: plot written to {}", path.display());
    }
    if !failed.is_empty() {
        eprintln!("rewardrt: {} rows failed; the others were evaluated", failed.len());
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn serve_cmd(args: ServeArgs) -> Result<ExitCode> {
    let mut config = rewardrt::serve::ServeConfig::new(&args.model.model);
    config.options = args.model.options(ScorerOptions::default());
    config.workers = args.workers.max(1);
    config.max_batch_tokens = args.max_batch_tokens.max(1);
    config.max_batch_size = args.max_batch_size.max(1);
    config.max_wait = std::time::Duration::from_millis(args.max_wait_ms);
    config.max_concurrent_requests = args.max_concurrent_requests.max(1);
    config.max_queued_records = args.max_queued_records.max(1);
    config.max_records_per_request = args.max_records_per_request.max(1);
    config.max_body_bytes = args.max_body_bytes;
    let batch = config.max_batch_size;
    config.on_ready = Some(rewardrt::serve::ReadyHook(std::sync::Arc::new(
        move |scorer: &Scorer| {
            announce(scorer, batch);
            eprintln!("rewardrt: ready ({} worker(s))", scorer.backbone().pool_size());
        },
    )));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "rewardrt: listening on http://{addr} (loading {})",
            args.model.model.display()
        );
        rewardrt::serve::serve(config, listener, shutdown_signal())
            .await
            .with_context(|| format!("cannot serve {}", args.model.model.display()))?;
        eprintln!("rewardrt: stopped after draining in-flight requests");
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    eprintln!("rewardrt: shutting down; finishing in-flight requests");
}

fn print_eval(report: &eval::EvalReport, label: &str) {
    println!("label `{label}`; a tie counts as wrong; margin = r(chosen) - r(rejected)");
    println!(
        "| {:<16} | {:>6} | {:>8} | {:>9} | {:>9} | {:>9} | {:>9} |",
        "subset", "pairs", "accuracy", "mean", "p5", "median", "p95"
    );
    println!(
        "|{:-<18}|{:->8}|{:->10}|{:->11}|{:->11}|{:->11}|{:->11}|",
        "", "", "", "", "", "", ""
    );
    let row = |name: &str, g: &eval::GroupReport| {
        println!(
            "| {:<16} | {:>6} | {:>8.4} | {:>9.4} | {:>9.4} | {:>9.4} | {:>9.4} |",
            name, g.pairs, g.accuracy, g.margin.mean, g.margin.p05, g.margin.p50, g.margin.p95
        );
    };
    for (name, g) in &report.subsets {
        row(name, g);
    }
    row("overall", &report.overall);
}

/// `float32`, or the reduced precision with the drift and flip rate the exporter measured.
fn precision_summary(m: &rewardrt::manifest::Manifest) -> String {
    let b = &m.backbone;
    let name = b.quantization.as_deref().unwrap_or(&b.dtype).to_owned();
    let Some(p) = &m.precision else { return name };
    let drift = p.measured.get("drift_vs_pytorch").and_then(|d| d["max_abs"].as_f64());
    let flips = (p.measured.get("flips"), p.measured.get("pairs"));
    match (drift, flips) {
        (Some(d), (Some(f), Some(n))) => format!("{name} (max |Δ| vs PyTorch {d:.2e}, preference flips {f}/{n})"),
        _ => name,
    }
}

fn info(args: InfoArgs) -> Result<()> {
    let scorer = args.model.load()?;
    let model = scorer.model();
    let m = &model.manifest;
    let rt = scorer.runtime();
    let report = scorer.ep_report();
    let io_json = |ios: &[rewardrt::backbone::GraphIo]| -> Vec<Value> {
        ios.iter()
            .map(|io| json!({"name": io.name, "dtype": io.dtype, "shape": io.shape}))
            .collect()
    };
    let value = json!({
        "model": {
            "dir": model.dir,
            "name": m.name,
            "architecture": m.architecture,
            "format_version": m.format_version,
            "hidden_size": m.backbone.hidden_size,
            "labels": scorer.labels(),
            "max_length": scorer.max_length(),
            "padding_side": scorer.padding_side(),
            "last_token": scorer.last_token(),
            "template": m.format.template,
            "pad_id": m.tokenizer.pad_id,
            "bos_id": m.tokenizer.bos_id,
            "eos_id": m.tokenizer.eos_id,
            "exporter": m.exporter,
            "parity": m.parity,
            "precision": m.precision,
            "optimization": m.optimization,
            "layer_outputs": m.backbone.layer_outputs,
            "normalization": m.head.normalization,
        },
        "graph": {
            "inputs": io_json(scorer.backbone().inputs()),
            "outputs": io_json(scorer.backbone().outputs()),
        },
        "onnxruntime": {
            "version": rt.version,
            "library": rt.library,
            "source": rt.source.to_string(),
            "resolution_order": runtime::RESOLUTION_ORDER,
        },
        "execution_providers": {
            "compiled_in": ep::compiled_in(),
            "in_library": ep::available_in_library(),
            "requested": report.requested.name(),
            "effective": report.effective,
            "fallbacks": report.fallbacks.iter().map(|(e, why)| json!({"ep": e, "reason": why})).collect::<Vec<_>>(),
        },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mut out = io::stdout().lock();
    writeln!(out, "model          {} ({})", m.name, model.dir.display())?;
    writeln!(out, "architecture   {}", m.architecture.as_deref().unwrap_or("?"))?;
    writeln!(out, "hidden size    {}", m.backbone.hidden_size)?;
    writeln!(
        out,
        "head           [{}, {}] labels {:?}",
        m.head.shape[0],
        m.head.shape[1],
        scorer.labels()
    )?;
    if let Some(n) = &m.head.normalization {
        writeln!(
            out,
            "normalization  mean {:?} std {:?} (applied with --normalize)",
            n.mean, n.std
        )?;
    }
    writeln!(out, "precision      {}", precision_summary(m))?;
    if let Some(layers) = &m.backbone.layer_outputs {
        writeln!(
            out,
            "layers         {} outputs (score --layer 0..={})",
            layers.len(),
            layers.len() - 1
        )?;
    }
    writeln!(out, "max length     {}", scorer.max_length())?;
    writeln!(out, "padding side   {:?}", scorer.padding_side())?;
    writeln!(out, "last token     {:?}", scorer.last_token())?;
    writeln!(out, "template       {:?}", m.format.template)?;
    writeln!(
        out,
        "special ids    pad {} bos {:?} eos {:?}",
        m.tokenizer.pad_id, m.tokenizer.bos_id, m.tokenizer.eos_id
    )?;
    for io in scorer.backbone().inputs() {
        writeln!(out, "graph input    {} {} {:?}", io.name, io.dtype, io.shape)?;
    }
    for io in scorer.backbone().outputs() {
        writeln!(out, "graph output   {} {} {:?}", io.name, io.dtype, io.shape)?;
    }
    writeln!(
        out,
        "onnxruntime    {} from {} ({})",
        rt.version,
        rt.library.display(),
        rt.source
    )?;
    writeln!(out, "EPs compiled   {}", ep::compiled_in().join(", "))?;
    writeln!(out, "EPs in library {}", ep::available_in_library().join(", "))?;
    writeln!(out, "{}", report.summary())?;
    Ok(())
}

fn verify_cmd(args: VerifyArgs) -> Result<ExitCode> {
    let scorer = args.model.load()?;
    let checked = scorer.model().verify_checksums(None)?;
    let tolerance = args
        .tolerance
        .unwrap_or_else(|| verify::default_tolerance(scorer.model()));
    let report = verify::verify(&scorer, tolerance)?;
    println!("checksums      {checked} files match rewardrt.json");
    println!("reference      {} ({} records)", report.file.display(), report.records);
    let m = &scorer.model().manifest.backbone;
    if m.dtype != "float32" || m.quantization.is_some() {
        let precision = m.quantization.as_deref().unwrap_or(&m.dtype);
        println!("precision      {precision} graph against the float32 PyTorch reference");
    }
    println!("max |Δ|        {:.3e}", report.max_abs_diff);
    println!("mean |Δ|       {:.3e}", report.mean_abs_diff);
    if report.layers_checked > 0 {
        println!(
            "layers         {} hidden states, max |Δ| {:.3e}",
            report.layers_checked, report.max_abs_diff_layers
        );
    }
    if let Some(worst) = &report.worst {
        println!("worst record   {worst}");
    }
    if !report.token_mismatches.is_empty() {
        println!(
            "token ids differ from the reference for: {}",
            report
                .token_mismatches
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if report.passed() {
        println!("PASS (tolerance {:.0e})", report.tolerance);
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAIL (tolerance {:.0e})", report.tolerance);
        Ok(ExitCode::FAILURE)
    }
}

fn bench_cmd(mut args: BenchArgs) -> Result<()> {
    args.model.batch_size = args.batch_sizes.iter().copied().max().unwrap_or(1);
    let scorer = args.model.load()?;
    let (_, rows) = verify::read_reference(&scorer)?;
    let base = rows
        .iter()
        .find_map(|r| r.text.clone().or_else(|| r.prompt.clone()))
        .unwrap_or_else(|| "The quick brown fox jumps over the lazy dog.".to_owned());
    let mut cases = Vec::new();
    let mut lengths: Vec<usize> = args.lengths.iter().map(|&l| l.min(scorer.max_length())).collect();
    lengths.dedup();
    for &length in &lengths {
        for &batch_size in &args.batch_sizes {
            cases.push(BenchCase {
                batch_size,
                length,
                sequences: args.sequences,
            });
        }
    }
    let rows = bench::run(&scorer, &base, &cases, args.repeats)?;
    println!(
        "model {} | EP {} | threads {} | {} sequences per cell, best of {}",
        scorer.model().manifest.name,
        scorer.ep_report().effective,
        args.model.threads.map_or("ORT default".to_owned(), |n| n.to_string()),
        args.sequences,
        args.repeats
    );
    println!("| batch | tokens/seq | seq/s | tokens/s | tokenize % | backbone % | select+head % |");
    println!("|------:|-----------:|------:|---------:|-----------:|-----------:|--------------:|");
    for row in rows {
        let total = (row.format_tokenize + row.backbone + row.select_head).as_secs_f64();
        let pct = |d: std::time::Duration| 100.0 * d.as_secs_f64() / total;
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.2} |",
            row.case.batch_size,
            row.mean_tokens,
            row.sequences_per_s(),
            row.tokens_per_s(),
            pct(row.format_tokenize),
            pct(row.backbone),
            pct(row.select_head)
        );
    }
    Ok(())
}
