//! `rewardrt serve`: an HTTP reward-model server with token-budget dynamic batching.
//!
//! ```text
//! clients ─▶ axum handlers ─(parse, format, tokenize; admission)─▶ queue ─▶ dispatcher ─▶ batches ─▶ workers
//!                 ▲                                                           (length-sorted,       (one ORT
//!                 └──────────────── rewards (oneshot per record) ◀──────────── padded-cost budget)   session each)
//! ```
//!
//! - **Batching.** Records from all requests wait in one queue. When a worker is free, the dispatcher sends it a
//!   batch as soon as one is full (`max_batch_size` records, or a padded cost `longest × count` of
//!   `max_batch_tokens`) or the oldest record has waited `max_wait`; while every worker is busy, records pile
//!   up, and the next batch takes all it can. What waits is sorted by length and cut under the budget, so
//!   similar lengths share a batch and padding stays small. `workers` threads each own an ONNX Runtime session
//!   (`Session::run` needs `&mut`).
//! - **Backpressure.** Admission is all-or-nothing per request: it needs one of `max_concurrent_requests`
//!   request slots and one queue slot per record (`max_queued_records`); otherwise 429 at once. Memory is
//!   bounded by these limits and the body limit. Queue slots travel with the records, so a client that
//!   disconnects frees them only when its records leave the queue (dropped unscored, as nobody waits).
//! - **Errors.** A malformed body is 400, a wrong shape 422, a bad record 422 naming its index (no record of
//!   that request is scored; other requests are untouched), over-limit 413, queue full 429, still loading 503,
//!   a model failure 500 with its message. Handlers return errors; nothing panics on input.
//! - **Readiness.** The socket is bound before the model loads; `/health` is 503 until the model has loaded and
//!   every session has run a warm-up batch, then 200.
//! - **Shutdown.** On the shutdown signal the server stops accepting, finishes in-flight requests, then the
//!   dispatcher and workers drain and stop.

use std::{
    collections::VecDeque,
    future::Future,
    path::PathBuf,
    sync::{mpsc, Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::{batch::Truncation, record, Error, Input, Scorer, ScorerOptions};

/// Server settings; [`ServeConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeConfig {
    pub model: PathBuf,
    /// Scorer options (provider, threads, padding, …); `batch_size` and `workers` are set from this config.
    pub options: ScorerOptions,
    /// Worker threads, one ONNX Runtime session each.
    pub workers: usize,
    /// Padded cost budget per batch: `longest sequence × records`.
    pub max_batch_tokens: usize,
    /// Records per batch.
    pub max_batch_size: usize,
    /// Longest a record waits for others to join its batch while a worker is free (while all workers are busy
    /// records wait for one anyway, and the next batch takes everything waiting, up to the budget).
    pub max_wait: Duration,
    /// Requests admitted at once (queued or running); more get 429.
    pub max_concurrent_requests: usize,
    /// Records admitted at once (queued or running); a request that would exceed it gets 429.
    pub max_queued_records: usize,
    /// Records in one request; more get 413.
    pub max_records_per_request: usize,
    /// Request body size; larger gets 413.
    pub max_body_bytes: usize,
    /// Called once the model has loaded and warmed up, before `/health` turns ready (e.g. to log the provider).
    pub on_ready: Option<ReadyHook>,
}

/// A callback given the loaded scorer; see [`ServeConfig::on_ready`].
#[derive(Clone)]
pub struct ReadyHook(pub Arc<dyn Fn(&Scorer) + Send + Sync>);

impl std::fmt::Debug for ReadyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadyHook")
    }
}

impl ServeConfig {
    /// Defaults for `model`.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        ServeConfig {
            model: model.into(),
            options: ScorerOptions::default(),
            workers: 1,
            max_batch_tokens: 16_384,
            max_batch_size: 64,
            max_wait: Duration::ZERO,
            max_concurrent_requests: 512,
            max_queued_records: 8192,
            max_records_per_request: 1024,
            max_body_bytes: 16 << 20,
            on_ready: None,
        }
    }
}

/// Serves `config.model` on `listener` until `shutdown` resolves, then drains in-flight requests.
///
/// # Errors
/// The model fails to load (the server then stops), or the listener fails.
pub async fn serve(
    config: ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let state = Arc::new(AppState::new(config));
    let (failed_tx, failed_rx) = oneshot::channel::<Error>();
    let loader = Arc::clone(&state);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = loader.load() {
            let _ = failed_tx.send(e);
        }
    });
    let stop = async move {
        tokio::select! {
            () = shutdown => None,
            Ok(e) = failed_rx => Some(e),
        }
    };
    let (stop_tx, stop_rx) = oneshot::channel::<Option<Error>>();
    let app = router(Arc::clone(&state));
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let reason = stop.await;
        let _ = stop_tx.send(reason);
    });
    server.await.map_err(|e| Error::io("the server socket", e))?;
    // In-flight requests are done; dropping the state stops the dispatcher and the workers.
    drop(state);
    match stop_rx.await {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/score", post(score))
        .route("/get_reward", post(get_reward))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

struct AppState {
    config: ServeConfig,
    loaded: OnceLock<Loaded>,
    requests: Arc<Semaphore>,
    queue: Arc<Semaphore>,
    metrics: Metrics,
}

struct Loaded {
    scorer: Arc<Scorer>,
    jobs: Mutex<mpsc::Sender<Event>>,
}

impl Drop for Loaded {
    /// The server is done (in-flight requests answered): let the dispatcher flush and stop, then the workers.
    fn drop(&mut self) {
        let jobs = self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = jobs.send(Event::Shutdown);
    }
}

impl AppState {
    fn new(config: ServeConfig) -> Self {
        AppState {
            requests: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            queue: Arc::new(Semaphore::new(config.max_queued_records)),
            loaded: OnceLock::new(),
            metrics: Metrics::new(),
            config,
        }
    }

    /// Loads the model, starts the dispatcher and workers, and warms every session up.
    fn load(&self) -> Result<(), Error> {
        let c = &self.config;
        let options = c
            .options
            .clone()
            .with_workers(c.workers)
            .with_batch_size(c.max_batch_size);
        let scorer = Arc::new(Scorer::load(&c.model, options)?);
        // Warm-up: one short batch per session, before the server reports ready.
        let warm = scorer.encode(&[Input::text("warm up")]).pop().expect("one record")?;
        for _ in 0..c.workers.max(1) {
            scorer.score_encoded(vec![Ok(warm.clone())])?;
        }
        let (jobs, rx) = mpsc::channel::<Event>();
        let (batches, batch_rx) = mpsc::channel::<Vec<Job>>();
        let batch_rx = Arc::new(Mutex::new(batch_rx));
        for _ in 0..c.workers.max(1) {
            let (scorer, rx, events, metrics) = (
                Arc::clone(&scorer),
                Arc::clone(&batch_rx),
                jobs.clone(),
                self.metrics.clone(),
            );
            std::thread::spawn(move || worker(&scorer, &rx, &events, &metrics));
        }
        let policy = BatchPolicy {
            max_tokens: c.max_batch_tokens,
            max_size: c.max_batch_size,
            max_wait: c.max_wait,
        };
        let metrics = self.metrics.clone();
        std::thread::spawn(move || dispatcher(&rx, &batches, policy, &metrics));
        if let Some(hook) = &c.on_ready {
            (hook.0)(&scorer);
        }
        let _ = self.loaded.set(Loaded {
            scorer,
            jobs: Mutex::new(jobs),
        });
        Ok(())
    }
}

// ---- batching -------------------------------------------------------------------------------------------------

struct Job {
    ids: Vec<i64>,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
    enqueued: Instant,
    /// The request's queue slots, shared by its records: they come free when its last record has been answered
    /// or dropped, not when the handler returns, so a client that disconnects cannot make room for more records
    /// than `max_queued_records`.
    claim: Arc<Claim>,
}

/// A request's hold on the queue: its record slots and its share of the queue-depth gauge.
struct Claim {
    _slots: OwnedSemaphorePermit,
    depth: Gauge,
    records: i64,
}

impl Claim {
    fn new(slots: OwnedSemaphorePermit, depth: &Gauge, records: usize) -> Self {
        let records = i64::try_from(records).unwrap_or(i64::MAX);
        depth.inc_by(records);
        Claim {
            _slots: slots,
            depth: depth.clone(),
            records,
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.depth.dec_by(self.records);
    }
}

#[derive(Debug, Clone, Copy)]
struct BatchPolicy {
    max_tokens: usize,
    max_size: usize,
    max_wait: Duration,
}

impl BatchPolicy {
    /// True when `pending` already fills one batch.
    fn full(&self, pending: &VecDeque<Job>) -> bool {
        let longest = pending.iter().map(|j| j.ids.len()).max().unwrap_or(0);
        pending.len() >= self.max_size || longest * pending.len() >= self.max_tokens
    }

    /// True when `pending` should go to a free worker now: a batch is full, the oldest record has `waited`
    /// `max_wait`, or the server is stopping.
    fn due(&self, pending: &VecDeque<Job>, waited: Duration, open: bool) -> bool {
        !open || self.full(pending) || waited >= self.max_wait
    }

    /// Sorts by length (longest first) and cuts into batches of at most `max_size` records and a padded cost
    /// (`longest × count`) of at most `max_tokens` (a single longer record still gets a batch of its own).
    fn cut(&self, mut jobs: Vec<Job>) -> Vec<Vec<Job>> {
        jobs.sort_by_key(|j| std::cmp::Reverse(j.ids.len()));
        let mut batches: Vec<Vec<Job>> = Vec::new();
        let mut current: Vec<Job> = Vec::new();
        for job in jobs {
            // Sorted longest first: the first record of a batch is its longest.
            let longest = current.first().map_or(job.ids.len(), |j| j.ids.len());
            if !current.is_empty()
                && (current.len() >= self.max_size || longest * (current.len() + 1) > self.max_tokens)
            {
                batches.push(std::mem::take(&mut current));
            }
            current.push(job);
        }
        if !current.is_empty() {
            batches.push(current);
        }
        batches
    }
}

/// What the dispatcher hears: a record to batch, a worker ready for a batch, or the server going away.
enum Event {
    Job(Job),
    Idle,
    Shutdown,
}

/// How long the oldest pending record has waited (zero when none is pending).
fn oldest_wait(pending: &VecDeque<Job>) -> Duration {
    pending
        .iter()
        .map(|j| j.enqueued.elapsed())
        .max()
        .unwrap_or(Duration::ZERO)
}

/// Forms batches while workers are busy and hands one to each idle worker: a batch goes out when a worker is
/// free and either the batch is full or its oldest record has waited `max_wait` (or the server is stopping).
/// Under light load records go out at once (no added latency); under heavy load records pile up while the
/// workers run, and each next batch is as large as the budget allows. Records whose client has gone away are
/// dropped unscored.
fn dispatcher(rx: &mpsc::Receiver<Event>, batches: &mpsc::Sender<Vec<Job>>, policy: BatchPolicy, metrics: &Metrics) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut idle = 0usize;
    let mut open = true;
    loop {
        let ready = idle > 0 && !pending.is_empty();
        let waited = oldest_wait(&pending);
        let event = if !ready {
            if !open && pending.is_empty() {
                return;
            }
            match rx.recv() {
                Ok(e) => Some(e),
                Err(_) => return,
            }
        } else if policy.due(&pending, waited, open) {
            None
        } else {
            match rx.recv_timeout(policy.max_wait - waited) {
                Ok(e) => Some(e),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        let mut handle = |e: Event| match e {
            Event::Job(job) => pending.push_back(job),
            Event::Idle => idle += 1,
            Event::Shutdown => open = false,
        };
        if let Some(e) = event {
            handle(e);
        }
        while let Ok(e) = rx.try_recv() {
            handle(e);
        }
        pending.retain(|j| !j.reply.is_closed());
        if idle == 0 || pending.is_empty() || !policy.due(&pending, oldest_wait(&pending), open) {
            continue;
        }
        let mut cut = policy.cut(pending.drain(..).collect()).into_iter();
        for batch in cut.by_ref().take(idle) {
            idle -= 1;
            let longest = batch.iter().map(|j| j.ids.len()).max().unwrap_or(0);
            metrics.batch_size.observe(batch.len() as f64);
            metrics.batch_tokens.observe((longest * batch.len()) as f64);
            if let Err(mpsc::SendError(batch)) = batches.send(batch) {
                for job in batch {
                    let _ = job.reply.send(Err("the server is shutting down".into()));
                }
            }
        }
        // Batches no worker is free for yet go back; they are re-cut with later arrivals.
        pending.extend(cut.flatten());
    }
}

/// Runs batches on the scorer and answers each record; tells the dispatcher when it is free.
fn worker(scorer: &Scorer, rx: &Mutex<mpsc::Receiver<Vec<Job>>>, events: &mpsc::Sender<Event>, metrics: &Metrics) {
    loop {
        if events.send(Event::Idle).is_err() {
            return;
        }
        let batch = {
            let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match rx.recv() {
                Ok(batch) => batch,
                Err(_) => return,
            }
        };
        let started = Instant::now();
        let (ids, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|j| (Ok(j.ids), (j.reply, j.enqueued, j.claim)))
            .unzip();
        match scorer.score_encoded(ids) {
            Ok((rewards, _)) => {
                for ((reply, enqueued, _claim), r) in replies.into_iter().zip(rewards) {
                    metrics.queue_wait.observe(enqueued.elapsed().as_secs_f64());
                    let _ = reply.send(r.map_err(|e| e.to_string()));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (reply, _, _claim) in replies {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
        metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
    }
}

// ---- handlers -------------------------------------------------------------------------------------------------

/// An error response: status and `{"error", "index"?}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    index: Option<usize>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            index: None,
        }
    }

    fn record(index: usize, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            index: Some(index),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(i) = self.index {
            body["index"] = json!(i);
        }
        (self.status, Json(body)).into_response()
    }
}

#[derive(Deserialize)]
struct ScoreRequest {
    inputs: Vec<Value>,
    #[serde(default)]
    truncation: Option<Truncation>,
}

#[derive(Deserialize)]
struct RewardRequest {
    query: Vec<String>,
}

async fn score(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let result = async {
        let request: ScoreRequest = parse_body(body)?;
        let inputs = request
            .inputs
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(obj) => record::parse_input(obj).map_err(|(field, message)| {
                    let at = field.map_or(String::new(), |f| format!(", field `{f}`"));
                    ApiError::record(i, format!("inputs[{i}]{at}: {message}"))
                }),
                _ => Err(ApiError::record(i, format!("inputs[{i}]: expected an object"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rewards = run(&state, inputs, request.truncation, "inputs").await?;
        let multi = state.loaded.get().is_some_and(|l| l.scorer.num_labels() > 1);
        let rewards: Vec<Value> = rewards
            .into_iter()
            .map(|r| if multi { json!(r) } else { json!(r[0]) })
            .collect();
        Ok::<_, ApiError>(Json(json!({ "rewards": rewards })).into_response())
    }
    .await;
    state.metrics.finish("/score", started, result)
}

/// OpenRLHF's remote reward model protocol: `{"query": [full texts]}` → `{"rewards", "scores"}`.
async fn get_reward(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let result = async {
        let request: RewardRequest = parse_body(body)?;
        let inputs = request.query.into_iter().map(Input::Text).collect();
        let rewards: Vec<f32> = run(&state, inputs, None, "query")
            .await?
            .into_iter()
            .map(|r| r[0])
            .collect();
        Ok::<_, ApiError>(Json(json!({ "rewards": rewards, "scores": rewards })).into_response())
    }
    .await;
    state.metrics.finish("/get_reward", started, result)
}

fn parse_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        _ => ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    })
}

/// Admission, tokenization, queueing and waiting for one request's records; rewards in request order.
async fn run(
    state: &Arc<AppState>,
    inputs: Vec<Input>,
    truncation: Option<Truncation>,
    field: &str,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let loaded = state
        .loaded
        .get()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model is still loading"))?;
    let c = &state.config;
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    if inputs.len() > c.max_records_per_request {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} records in one request exceed the limit of {} (--max-records-per-request)",
                inputs.len(),
                c.max_records_per_request
            ),
        ));
    }
    if inputs.len() > c.max_queued_records {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} records in one request exceed the queue capacity of {} (--max-queued-records)",
                inputs.len(),
                c.max_queued_records
            ),
        ));
    }
    let _request: OwnedSemaphorePermit = Arc::clone(&state.requests).try_acquire_owned().map_err(|_| {
        busy(format!(
            "{} requests in flight (--max-concurrent-requests)",
            c.max_concurrent_requests
        ))
    })?;
    let n = inputs.len();
    let permits = u32::try_from(n).unwrap_or(u32::MAX);
    let slots = Arc::clone(&state.queue).try_acquire_many_owned(permits).map_err(|_| {
        busy(format!(
            "the queue is full ({} records, --max-queued-records)",
            c.max_queued_records
        ))
    })?;
    let claim = Arc::new(Claim::new(slots, &state.metrics.queue_depth, n));

    // Formatting and tokenizing are CPU work: off the async threads.
    let scorer = Arc::clone(&loaded.scorer);
    let truncation = truncation.unwrap_or_else(|| scorer.truncation());
    let encoded = tokio::task::spawn_blocking(move || scorer.encode_detailed_with(&inputs, truncation))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("tokenizer task failed: {e}")))?;
    let mut receivers = Vec::with_capacity(n);
    {
        let mut jobs = Vec::with_capacity(n);
        for (i, e) in encoded.into_iter().enumerate() {
            let e = e.map_err(|e| {
                let message = match e {
                    Error::Record { message, .. } => message,
                    other => other.to_string(),
                };
                ApiError::record(i, format!("{field}[{i}]: {message}"))
            })?;
            let (reply, rx) = oneshot::channel();
            jobs.push(Job {
                ids: e.ids,
                reply,
                enqueued: Instant::now(),
                claim: Arc::clone(&claim),
            });
            receivers.push(rx);
        }
        let sender = loaded.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for job in jobs {
            sender
                .send(Event::Job(job))
                .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"))?;
        }
    }
    state.metrics.records.inc_by(n as u64);
    let mut rewards = Vec::with_capacity(n);
    for rx in receivers {
        let r = rx
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "a worker stopped"))?
            .map_err(|m| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m))?;
        rewards.push(r);
    }
    Ok(rewards)
}

fn busy(message: String) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.loaded.get().is_some() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"}))).into_response()
    }
}

async fn info(State(state): State<Arc<AppState>>) -> Response {
    let c = &state.config;
    let limits = json!({
        "workers": c.workers,
        "max_batch_tokens": c.max_batch_tokens,
        "max_batch_size": c.max_batch_size,
        "max_wait_ms": c.max_wait.as_secs_f64() * 1e3,
        "max_concurrent_requests": c.max_concurrent_requests,
        "max_queued_records": c.max_queued_records,
        "max_records_per_request": c.max_records_per_request,
        "max_body_bytes": c.max_body_bytes,
    });
    let Some(loaded) = state.loaded.get() else {
        return Json(json!({"status": "loading", "model_dir": c.model, "limits": limits})).into_response();
    };
    let s = &loaded.scorer;
    let m = &s.model().manifest;
    let ep = s.ep_report();
    Json(json!({
        "status": "ready",
        "version": env!("CARGO_PKG_VERSION"),
        "model": {
            "name": m.name,
            "dir": s.model().dir,
            "architecture": m.architecture,
            "labels": s.labels(),
            "max_length": s.max_length(),
            "truncation": s.truncation(),
            "last_token": s.last_token(),
            "padding_side": s.padding_side(),
            "chat_template": s.uses_chat_template(),
            "precision": m.backbone.quantization.as_deref().unwrap_or(&m.backbone.dtype),
        },
        "execution_provider": {
            "requested": ep.requested.name(),
            "effective": ep.effective,
            "fell_back_to_cpu": ep.fell_back_to_cpu(),
            "fallbacks": ep.fallbacks.iter().map(|(e, why)| json!({"ep": e, "reason": why})).collect::<Vec<_>>(),
        },
        "limits": limits,
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

// ---- metrics --------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone)]
struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram>,
    records: Counter,
    batch_size: Histogram,
    batch_tokens: Histogram,
    batch_seconds: Histogram,
    queue_wait: Histogram,
    queue_depth: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            records: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            batch_tokens: Histogram::new(exponential_buckets(16.0, 2.0, 14)),
            batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            queue_wait: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            queue_depth: Gauge::default(),
        };
        let mut r = Registry::with_prefix("rewardrt");
        r.register("requests", "HTTP requests by endpoint and status", m.requests.clone());
        r.register(
            "request_duration_seconds",
            "Request latency by endpoint",
            m.latency.clone(),
        );
        r.register("records", "Records scored", m.records.clone());
        r.register("batch_size", "Records per backbone batch", m.batch_size.clone());
        r.register(
            "batch_padded_tokens",
            "Padded tokens (longest x records) per batch",
            m.batch_tokens.clone(),
        );
        r.register(
            "batch_duration_seconds",
            "Backbone time per batch",
            m.batch_seconds.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time from enqueue to reward per record",
            m.queue_wait.clone(),
        );
        r.register(
            "queue_depth",
            "Records admitted and not yet answered",
            m.queue_depth.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// Records a finished request and turns the result into the response.
    fn finish(&self, endpoint: &str, started: Instant, result: Result<Response, ApiError>) -> Response {
        let response = result.unwrap_or_else(IntoResponse::into_response);
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                status: response.status().as_u16().to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job of `len` tokens holding `claim`, and the receiver its client waits on.
    fn job_for(len: usize, claim: &Arc<Claim>) -> (Job, oneshot::Receiver<Result<Vec<f32>, String>>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            ids: vec![1; len],
            reply,
            enqueued: Instant::now(),
            claim: Arc::clone(claim),
        };
        (job, rx)
    }

    fn claim(queue: &Arc<Semaphore>, depth: &Gauge, records: u32) -> Arc<Claim> {
        let slots = Arc::clone(queue).try_acquire_many_owned(records).expect("free slots");
        Arc::new(Claim::new(slots, depth, records as usize))
    }

    fn job(len: usize) -> Job {
        let queue = Arc::new(Semaphore::new(1));
        job_for(len, &claim(&queue, &Gauge::default(), 1)).0
    }

    #[test]
    fn cut_respects_count_and_padded_cost_longest_first() {
        let policy = BatchPolicy {
            max_tokens: 40,
            max_size: 3,
            max_wait: Duration::ZERO,
        };
        let batches = policy.cut([3, 20, 5, 10, 9, 4, 2].into_iter().map(job).collect());
        let lens: Vec<Vec<usize>> = batches
            .iter()
            .map(|b| b.iter().map(|j| j.ids.len()).collect())
            .collect();
        // 20*2 = 40 fits, a third would cost 60; then 9,5,4 (27) and 3,2.
        assert_eq!(lens, vec![vec![20, 10], vec![9, 5, 4], vec![3, 2]]);
        for b in &lens {
            assert!(b.len() <= 3 && b[0] * b.len() <= 40);
        }
    }

    #[test]
    fn a_record_longer_than_the_budget_gets_its_own_batch() {
        let policy = BatchPolicy {
            max_tokens: 8,
            max_size: 4,
            max_wait: Duration::ZERO,
        };
        let batches = policy.cut(vec![job(12), job(2), job(2)]);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].len(), 1);
    }

    #[test]
    fn full_counts_records_and_padded_cost() {
        let policy = BatchPolicy {
            max_tokens: 30,
            max_size: 4,
            max_wait: Duration::ZERO,
        };
        let pending: VecDeque<Job> = [5, 5].into_iter().map(job).collect();
        assert!(!policy.full(&pending));
        let pending: VecDeque<Job> = [15, 5].into_iter().map(job).collect();
        assert!(policy.full(&pending));
        let pending: VecDeque<Job> = [1, 1, 1, 1].into_iter().map(job).collect();
        assert!(policy.full(&pending));
    }

    #[test]
    fn records_of_a_client_that_left_are_dropped_unscored_and_free_their_queue_slots() {
        let queue = Arc::new(Semaphore::new(4));
        let depth = Gauge::default();
        let (events, rx) = mpsc::channel();
        // A request of two records whose client disconnected, and one of a client still waiting.
        let gone = claim(&queue, &depth, 2);
        for len in [7, 9] {
            let (job, client) = job_for(len, &gone);
            drop(client);
            events.send(Event::Job(job)).unwrap();
        }
        drop(gone);
        let (job, mut waiting) = job_for(5, &claim(&queue, &depth, 1));
        events.send(Event::Job(job)).unwrap();
        assert_eq!((queue.available_permits(), depth.get()), (1, 3));

        let (batches, batch_rx) = mpsc::channel();
        let policy = BatchPolicy {
            max_tokens: 1000,
            max_size: 8,
            max_wait: Duration::ZERO,
        };
        let dispatcher = std::thread::spawn(move || dispatcher(&rx, &batches, policy, &Metrics::new()));
        events.send(Event::Idle).unwrap();
        let batch = batch_rx.recv_timeout(Duration::from_secs(10)).expect("a batch");
        assert_eq!(batch.iter().map(|j| j.ids.len()).collect::<Vec<_>>(), vec![5]);
        // The departed request's slots are free; the waiting one's are held until its record is answered.
        assert_eq!((queue.available_permits(), depth.get()), (3, 1));
        for j in batch {
            j.reply.send(Ok(vec![1.0])).unwrap();
        }
        assert_eq!(waiting.try_recv().unwrap(), Ok(vec![1.0]));
        assert_eq!((queue.available_permits(), depth.get()), (4, 0));
        events.send(Event::Shutdown).unwrap();
        dispatcher.join().unwrap();
    }
}
