//! The backbone stage: ONNX Runtime sessions over `backbone.onnx`, checked against the manifest at load time.
//!
//! Loading discovers the graph's inputs and outputs and fails early, naming the file, when they disagree with
//! `rewardrt.json` (an input the manifest does not know, a missing `position_ids`, a missing output, a hidden
//! size other than the head's). Running a batch reads the `[batch, seq, hidden]` output as a view and hands
//! each row's selected position to the caller, so the full hidden-state tensor is never copied.
//!
//! `ort::Session::run` needs `&mut self`, so the backbone holds a small pool of sessions behind mutexes: the
//! type is `Send + Sync` and concurrent callers use different sessions when the pool has more than one.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use ndarray::{ArrayView1, ArrayView3, Axis, Ix3};
use ort::{
    session::{OutputSelector, RunOptions, Session, SessionOutputs},
    value::{TensorElementType, TensorRef, ValueType},
};

use crate::{
    batch::Batch,
    ep::{self, EpReport, ExecutionProvider},
    manifest::ModelDir,
    runtime::Runtime,
    select::{last_position, LastTokenRule},
    Error, Result,
};

/// Name, element type and shape of one graph input or output, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphIo {
    pub name: String,
    pub dtype: String,
    /// `-1` for dynamic dimensions.
    pub shape: Vec<i64>,
}

/// How to build the sessions.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub ep: ExecutionProvider,
    pub intra_threads: Option<usize>,
    pub pool_size: usize,
}

/// The loaded backbone graph.
#[derive(Debug)]
pub struct Backbone {
    path: PathBuf,
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    input_ids: String,
    attention_mask: String,
    position_ids: Option<String>,
    output: String,
    /// Per-layer outputs (`hidden_states.0` .. `hidden_states.L`) when the graph was exported with them.
    layers: Vec<String>,
    hidden_size: usize,
    ep: EpReport,
    inputs: Vec<GraphIo>,
    outputs: Vec<GraphIo>,
}

/// Time spent running one batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunTiming {
    pub backbone: Duration,
    pub select_head: Duration,
}

impl Backbone {
    pub(crate) fn load(model: &ModelDir, rt: &Runtime, config: &SessionConfig) -> Result<Backbone> {
        let spec = &model.manifest.backbone;
        let path = model.path(&spec.file);
        // Resolve the provider once; the rest of the pool uses exactly that one, so the report holds for all.
        let (first, ep, chosen) = open_session(rt, &path, config.ep, config.intra_threads)?;
        let mut sessions = Vec::with_capacity(config.pool_size.max(1));
        sessions.push(first);
        for _ in 1..config.pool_size.max(1) {
            sessions.push(open_session(rt, &path, chosen, config.intra_threads)?.0);
        }
        let first = &sessions[0];
        let inputs: Vec<GraphIo> = first.inputs().iter().map(|o| graph_io(o.name(), o.dtype())).collect();
        let outputs: Vec<GraphIo> = first.outputs().iter().map(|o| graph_io(o.name(), o.dtype())).collect();

        let declared = &spec.inputs;
        let known: Vec<&str> = [
            Some(&declared.input_ids),
            Some(&declared.attention_mask),
            declared.position_ids.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
        for input in &inputs {
            if !known.contains(&input.name.as_str()) {
                return Err(Error::model(
                    &path,
                    format!(
                        "graph input `{}` is not declared in rewardrt.json backbone.inputs (declared: {})",
                        input.name,
                        known.join(", ")
                    ),
                ));
            }
            if input.dtype != "int64" {
                return Err(Error::model(
                    &path,
                    format!("graph input `{}` has type {}, expected int64", input.name, input.dtype),
                ));
            }
        }
        for name in &known {
            if !inputs.iter().any(|i| i.name == *name) {
                return Err(Error::model(
                    &path,
                    format!("rewardrt.json declares input `{name}` but the graph has no such input"),
                ));
            }
        }
        check_hidden_output(&path, &outputs, &spec.output, spec.hidden_size)?;
        let layers = spec.layer_outputs.clone().unwrap_or_default();
        for name in &layers {
            check_hidden_output(&path, &outputs, name, spec.hidden_size)?;
        }
        Ok(Backbone {
            path,
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
            input_ids: declared.input_ids.clone(),
            attention_mask: declared.attention_mask.clone(),
            position_ids: declared.position_ids.clone(),
            output: spec.output.clone(),
            layers,
            hidden_size: spec.hidden_size,
            ep,
            inputs,
            outputs,
        })
    }

    /// Number of per-layer outputs (`L + 1`: the embeddings and each layer), 0 when the graph has none.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// True when the graph takes `position_ids`.
    pub fn takes_positions(&self) -> bool {
        self.position_ids.is_some()
    }

    /// Which execution provider runs the graph, and what was tried before it.
    pub fn ep_report(&self) -> &EpReport {
        &self.ep
    }

    /// The graph's inputs.
    pub fn inputs(&self) -> &[GraphIo] {
        &self.inputs
    }

    /// The graph's outputs.
    pub fn outputs(&self) -> &[GraphIo] {
        &self.outputs
    }

    /// Number of sessions in the pool.
    pub fn pool_size(&self) -> usize {
        self.sessions.len()
    }

    fn acquire(&self) -> MutexGuard<'_, Session> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            if let Ok(guard) = self.sessions[(start + i) % n].try_lock() {
                return guard;
            }
        }
        self.sessions[start].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one batch, selects each row's position under `rule` and calls `f(row, hidden, probe)` with that
    /// row's top-layer hidden state at it, and layer `probe`'s state there when asked for. Rows with no
    /// selectable position get `None`. Only the outputs used are computed and fetched.
    ///
    /// # Panics
    /// If `probe` is not below [`Backbone::layer_count`] (the scorer checks it first).
    pub(crate) fn run<T>(
        &self,
        batch: &Batch,
        rule: LastTokenRule,
        pad_id: i64,
        probe: Option<usize>,
        mut f: impl FnMut(usize, ArrayView1<'_, f32>, Option<ArrayView1<'_, f32>>) -> T,
    ) -> Result<(Vec<Option<T>>, RunTiming)> {
        let tensor = |a| TensorRef::from_array_view(a).map_err(Error::ort("building an input tensor"));
        let mut feeds = vec![
            (self.input_ids.as_str(), tensor(batch.input_ids.view())?),
            (self.attention_mask.as_str(), tensor(batch.attention_mask.view())?),
        ];
        if let Some(name) = &self.position_ids {
            let positions = batch
                .position_ids
                .as_ref()
                .expect("the scorer builds positions when the graph takes them");
            feeds.push((name.as_str(), tensor(positions.view())?));
        }
        let probe_name = probe.map(|n| self.layers[n].as_str());
        // A graph with per-layer outputs would compute and copy all of them; ask only for what is used.
        let options = if self.layers.is_empty() {
            None
        } else {
            let mut selector = OutputSelector::no_default().with(&self.output);
            if let Some(name) = probe_name {
                selector = selector.with(name);
            }
            Some(
                RunOptions::new()
                    .map_err(Error::ort("creating run options"))?
                    .with_outputs(selector),
            )
        };
        let started = Instant::now();
        let mut session = self.acquire();
        let outputs = match &options {
            Some(options) => session.run_with_options(feeds, options),
            None => session.run(feeds),
        }
        .map_err(Error::ort("running the backbone"))?;
        let backbone = started.elapsed();

        let started = Instant::now();
        let hidden = self.hidden_view(&outputs, &self.output, batch)?;
        let probed = match probe_name {
            Some(name) => Some(self.hidden_view(&outputs, name, batch)?),
            None => None,
        };
        let rows = batch.rows();
        let ids = batch.input_ids.view();
        let mask = batch.attention_mask.view();
        let results = (0..rows)
            .map(|row| {
                let ids = ids.row(row);
                let mask = mask.row(row);
                let pos = last_position(
                    rule,
                    ids.as_slice().expect("standard layout"),
                    mask.as_slice().expect("standard layout"),
                    pad_id,
                )?;
                Some(f(
                    row,
                    state_at(&hidden, row, pos),
                    probed.as_ref().map(|p| state_at(p, row, pos)),
                ))
            })
            .collect();
        let select_head = started.elapsed();
        Ok((results, RunTiming { backbone, select_head }))
    }

    /// Output `name` as a `[batch, seq, hidden]` view, checked against the batch.
    fn hidden_view<'a>(
        &self,
        outputs: &'a SessionOutputs<'_>,
        name: &str,
        batch: &Batch,
    ) -> Result<ArrayView3<'a, f32>> {
        let hidden = outputs
            .get(name)
            .ok_or_else(|| Error::model(&self.path, format!("the run returned no `{name}` output")))?
            .try_extract_array::<f32>()
            .map_err(Error::ort("reading the hidden states"))?
            .into_dimensionality::<Ix3>()
            .map_err(|e| Error::model(&self.path, format!("`{name}` is not [batch, seq, hidden]: {e}")))?;
        let (rows, width, dim) = hidden.dim();
        if rows != batch.rows() || width != batch.width() || dim != self.hidden_size {
            return Err(Error::model(
                &self.path,
                format!(
                    "output `{name}` shape [{rows}, {width}, {dim}] does not match the batch [{}, {}] and hidden \
                     size {}",
                    batch.rows(),
                    batch.width(),
                    self.hidden_size
                ),
            ));
        }
        Ok(hidden)
    }
}

/// The hidden state of `row` at position `pos`.
fn state_at<'a>(hidden: &'a ArrayView3<'_, f32>, row: usize, pos: usize) -> ArrayView1<'a, f32> {
    hidden.index_axis(Axis(0), row).index_axis_move(Axis(0), pos)
}

/// Checks that the graph has output `name`, float32 `[batch, seq, hidden]`.
fn check_hidden_output(path: &std::path::Path, outputs: &[GraphIo], name: &str, hidden_size: usize) -> Result<()> {
    let output = outputs.iter().find(|o| o.name == name).ok_or_else(|| {
        let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
        Error::model(
            path,
            format!(
                "graph has no output `{name}` named in rewardrt.json (outputs: {})",
                names.join(", ")
            ),
        )
    })?;
    if output.dtype != "float32" {
        return Err(Error::model(
            path,
            format!("output `{name}` has type {}, expected float32", output.dtype),
        ));
    }
    if output.shape.len() != 3 {
        return Err(Error::model(
            path,
            format!(
                "output `{name}` has rank {}, expected [batch, seq, hidden]",
                output.shape.len()
            ),
        ));
    }
    let last = output.shape[2];
    if last >= 0 && last as usize != hidden_size {
        return Err(Error::model(
            path,
            format!("output `{name}` has hidden size {last} but rewardrt.json says hidden_size {hidden_size}"),
        ));
    }
    Ok(())
}

/// Creates one session, trying each candidate provider on a fresh builder, and returns it with the report and
/// the concrete provider that runs it. A named provider that cannot register or cannot create the session is an
/// error; under `Auto` the attempt is recorded and the next tried.
fn open_session(
    rt: &Runtime,
    path: &std::path::Path,
    requested: ExecutionProvider,
    intra_threads: Option<usize>,
) -> Result<(Session, EpReport, ExecutionProvider)> {
    let build = |ep: ExecutionProvider| -> Result<Session> {
        let mut builder = Session::builder(&rt.env).map_err(Error::ort("creating a session builder"))?;
        if let Some(n) = intra_threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| strip("setting the thread count", e))?;
        }
        ep::register(&mut builder, ep).map_err(|reason| Error::ExecutionProvider { ep: ep.name(), reason })?;
        builder.commit_from_file(path).map_err(|source| match ep {
            ExecutionProvider::Cpu => Error::model(path, format!("onnx runtime cannot load the graph: {source}")),
            _ => Error::ExecutionProvider {
                ep: ep.name(),
                reason: format!("session creation failed for {}: {source}", path.display()),
            },
        })
    };
    let mut fallbacks = Vec::new();
    for ep in ep::candidates(requested) {
        match build(ep) {
            Ok(session) => {
                let report = EpReport {
                    requested,
                    effective: ep.name(),
                    fallbacks,
                };
                return Ok((session, report, ep));
            }
            Err(Error::ExecutionProvider { ep, reason }) if requested == ExecutionProvider::Auto => {
                fallbacks.push((ep, reason));
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last candidate is CPU, which succeeds or fails with a non-provider error")
}

fn strip<R>(context: &str, e: ort::Error<R>) -> Error {
    Error::Ort {
        context: context.to_owned(),
        source: ort::Error::new_with_code(e.code(), e.message()),
    }
}

fn graph_io(name: &str, dtype: &ValueType) -> GraphIo {
    let (dtype, shape) = match dtype {
        ValueType::Tensor { ty, shape, .. } => (element_name(*ty), shape.iter().copied().collect()),
        other => (format!("{other:?}"), Vec::new()),
    };
    GraphIo {
        name: name.to_owned(),
        dtype,
        shape,
    }
}

fn element_name(ty: TensorElementType) -> String {
    match ty {
        TensorElementType::Float32 => "float32".into(),
        TensorElementType::Float16 => "float16".into(),
        TensorElementType::Int64 => "int64".into(),
        TensorElementType::Int32 => "int32".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}
