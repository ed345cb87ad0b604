//! Execution providers: what the user asked for, what was registered, and an honest report of the difference.
//!
//! A named provider is strict: if it cannot be registered on the session (not compiled into this rewardrt, not
//! in the loaded ONNX Runtime build, or its driver libraries missing) or the session cannot be created with it,
//! that is an [`crate::Error::ExecutionProvider`] naming it and the reason. `Auto` tries TensorRT → CUDA →
//! DirectML → CPU, each on a fresh session builder (a half-registered provider never lingers), and the
//! [`EpReport`] records every attempt so callers can say which provider really runs. rewardrt never claims a
//! provider whose registration did not succeed.

use ort::session::builder::SessionBuilder;

/// The execution provider to run the backbone on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExecutionProvider {
    /// Try TensorRT, CUDA, DirectML, then fall back to CPU, reporting which one registered.
    #[default]
    Auto,
    /// ONNX Runtime's default CPU provider.
    Cpu,
    /// NVIDIA CUDA on the given device.
    Cuda { device: i32 },
    /// NVIDIA TensorRT on the given device (CUDA handles nodes TensorRT does not take).
    TensorRt { device: i32 },
    /// DirectML (Windows, any DirectX 12 GPU) on the given adapter.
    DirectMl { device: i32 },
}

impl ExecutionProvider {
    /// Human name, as used in messages and reports.
    pub fn name(&self) -> &'static str {
        match self {
            ExecutionProvider::Auto => "auto",
            ExecutionProvider::Cpu => "CPU",
            ExecutionProvider::Cuda { .. } => "CUDA",
            ExecutionProvider::TensorRt { .. } => "TensorRT",
            ExecutionProvider::DirectMl { .. } => "DirectML",
        }
    }

    /// Parses `auto`, `cpu`, `cuda`, `tensorrt`/`trt`, `directml`/`dml`, each optionally `:DEVICE`.
    ///
    /// # Errors
    /// A message naming the unknown provider or bad device id.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let (name, device) = match s.split_once(':') {
            Some((name, dev)) => (
                name,
                dev.parse::<i32>()
                    .map_err(|_| format!("invalid device id `{dev}` in `{s}`"))?,
            ),
            None => (s, 0),
        };
        Ok(match name.to_ascii_lowercase().as_str() {
            "auto" => ExecutionProvider::Auto,
            "cpu" => ExecutionProvider::Cpu,
            "cuda" => ExecutionProvider::Cuda { device },
            "tensorrt" | "trt" => ExecutionProvider::TensorRt { device },
            "directml" | "dml" => ExecutionProvider::DirectMl { device },
            other => {
                return Err(format!(
                    "unknown execution provider `{other}` (expected auto, cpu, cuda, tensorrt or directml)"
                ))
            }
        })
    }
}

impl std::str::FromStr for ExecutionProvider {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        ExecutionProvider::parse(s)
    }
}

/// Which providers were tried for a session and which one was registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpReport {
    /// What the caller asked for.
    pub requested: ExecutionProvider,
    /// The provider that registered and runs the graph (CPU when nothing else did).
    pub effective: &'static str,
    /// Each provider tried before `effective`, with the reason it was not used.
    pub fallbacks: Vec<(&'static str, String)>,
}

impl EpReport {
    /// True when `auto` wanted an accelerator but ended on CPU.
    pub fn fell_back_to_cpu(&self) -> bool {
        self.effective == "CPU" && !self.fallbacks.is_empty()
    }

    /// One line for stderr / `info`, e.g. `execution provider: CPU (auto; TensorRT unavailable: ...)`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "execution provider: {} (requested {})",
            self.effective,
            self.requested.name()
        );
        if self.fell_back_to_cpu() {
            s.push_str(", fell back to CPU");
        }
        for (ep, why) in &self.fallbacks {
            s.push_str(&format!("; {ep}: {why}"));
        }
        s
    }
}

/// The providers compiled into this build (Cargo features), CPU always.
pub fn compiled_in() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "tensorrt") {
        v.push("TensorRT");
    }
    if cfg!(feature = "cuda") {
        v.push("CUDA");
    }
    if cfg!(feature = "directml") {
        v.push("DirectML");
    }
    v.push("CPU");
    v
}

/// Accelerators the loaded ONNX Runtime library was built with (checked only for compiled-in providers),
/// CPU always. "Built with" is not "usable": only a session registration proves that.
pub fn available_in_library() -> Vec<&'static str> {
    let mut v = Vec::new();
    if in_library::tensorrt() {
        v.push("TensorRT");
    }
    if in_library::cuda() {
        v.push("CUDA");
    }
    if in_library::directml() {
        v.push("DirectML");
    }
    v.push("CPU");
    v
}

mod in_library {
    #[allow(unused_imports)]
    use ort::ep::ExecutionProvider as _;

    pub fn cuda() -> bool {
        #[cfg(feature = "cuda")]
        return ort::ep::CUDA::is_available().unwrap_or(false);
        #[cfg(not(feature = "cuda"))]
        false
    }

    pub fn tensorrt() -> bool {
        #[cfg(feature = "tensorrt")]
        return ort::ep::TensorRT::is_available().unwrap_or(false);
        #[cfg(not(feature = "tensorrt"))]
        false
    }

    pub fn directml() -> bool {
        #[cfg(feature = "directml")]
        return ort::ep::DirectML::is_available().unwrap_or(false);
        #[cfg(not(feature = "directml"))]
        false
    }
}

/// The providers to try, in order, for a request: `Auto` tries each accelerator and ends on CPU.
pub(crate) fn candidates(requested: ExecutionProvider) -> Vec<ExecutionProvider> {
    match requested {
        ExecutionProvider::Auto => vec![
            ExecutionProvider::TensorRt { device: 0 },
            ExecutionProvider::Cuda { device: 0 },
            ExecutionProvider::DirectMl { device: 0 },
            ExecutionProvider::Cpu,
        ],
        named => vec![named],
    }
}

/// Registers one concrete provider on `builder`; the error string says why it cannot run.
pub(crate) fn register(builder: &mut SessionBuilder, ep: ExecutionProvider) -> std::result::Result<(), String> {
    match ep {
        ExecutionProvider::Auto | ExecutionProvider::Cpu => Ok(()),
        ExecutionProvider::Cuda { device } => accelerators::cuda(builder, device),
        ExecutionProvider::TensorRt { device } => accelerators::tensorrt(builder, device),
        ExecutionProvider::DirectMl { device } => accelerators::directml(builder, device),
    }
}

/// One function per accelerator, each compiled only with its Cargo feature.
mod accelerators {
    #[allow(unused_imports)]
    use ort::ep::ExecutionProvider as _;
    use ort::session::builder::SessionBuilder;

    use super::in_library;

    type Outcome = std::result::Result<(), String>;

    #[allow(dead_code)]
    fn not_built(feature: &str) -> String {
        format!("this rewardrt was built without the `{feature}` feature (rebuild with --features {feature})")
    }

    #[allow(dead_code)]
    fn not_in_library(wheel: &str) -> String {
        format!("not in the loaded ONNX Runtime build (use the library from the `{wheel}` wheel)")
    }

    #[allow(dead_code)]
    fn failed(e: ort::Error) -> String {
        format!("registration failed: {e}")
    }

    #[cfg(feature = "cuda")]
    pub fn cuda(builder: &mut SessionBuilder, device: i32) -> Outcome {
        if !in_library::cuda() {
            return Err(not_in_library("onnxruntime-gpu"));
        }
        ort::ep::CUDA::default()
            .with_device_id(device)
            .register(builder)
            .map_err(failed)
    }

    #[cfg(not(feature = "cuda"))]
    pub fn cuda(_: &mut SessionBuilder, _: i32) -> Outcome {
        Err(not_built("cuda"))
    }

    #[cfg(all(feature = "tensorrt", feature = "cuda"))]
    pub fn tensorrt(builder: &mut SessionBuilder, device: i32) -> Outcome {
        if !in_library::tensorrt() {
            return Err(not_in_library("onnxruntime-gpu"));
        }
        ort::ep::TensorRT::default()
            .with_device_id(device)
            .register(builder)
            .map_err(failed)?;
        // Nodes TensorRT does not take run on CUDA rather than silently on CPU.
        cuda(builder, device).map_err(|e| format!("TensorRT registered but its CUDA companion did not: {e}"))
    }

    #[cfg(not(all(feature = "tensorrt", feature = "cuda")))]
    pub fn tensorrt(_: &mut SessionBuilder, _: i32) -> Outcome {
        Err(not_built("tensorrt"))
    }

    #[cfg(feature = "directml")]
    pub fn directml(builder: &mut SessionBuilder, device: i32) -> Outcome {
        if !in_library::directml() {
            return Err(not_in_library("onnxruntime-directml"));
        }
        ort::ep::DirectML::default()
            .with_device_id(device)
            .register(builder)
            .map_err(failed)
    }

    #[cfg(not(feature = "directml"))]
    pub fn directml(_: &mut SessionBuilder, _: i32) -> Outcome {
        Err(not_built("directml"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_devices() {
        assert_eq!(ExecutionProvider::parse("auto"), Ok(ExecutionProvider::Auto));
        assert_eq!(
            ExecutionProvider::parse("CUDA:1"),
            Ok(ExecutionProvider::Cuda { device: 1 })
        );
        assert_eq!(
            ExecutionProvider::parse("trt"),
            Ok(ExecutionProvider::TensorRt { device: 0 })
        );
        assert_eq!(
            ExecutionProvider::parse("dml:2"),
            Ok(ExecutionProvider::DirectMl { device: 2 })
        );
        assert!(ExecutionProvider::parse("rocm").unwrap_err().contains("rocm"));
        assert!(ExecutionProvider::parse("cuda:x").unwrap_err().contains("device id"));
    }

    #[test]
    fn report_says_fallback() {
        let report = EpReport {
            requested: ExecutionProvider::Auto,
            effective: "CPU",
            fallbacks: vec![("CUDA", "not in library".into())],
        };
        assert!(report.fell_back_to_cpu());
        assert!(report.summary().contains("fell back to CPU"));
        assert!(report.summary().contains("CUDA: not in library"));
    }
}
