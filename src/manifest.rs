//! Model manifest: the TOML file beside a `.onnx` that says which features fill
//! the input tensor and how the output becomes a signal. Validated against the
//! model's real inputs and outputs at load; every mismatch is named.
//!
//! ```toml
//! [model]
//! name = "lobster_direction"
//! version = 1
//! onnx = "lobster_direction.onnx"      # relative to this file
//! price_scale = 10000                   # fixed point of every price on the wire
//! size_scale = 1                        # fixed point of sizes (power of ten; default 1)
//! backend = "auto"                      # optional: "ort" | "native" | "auto" (docs/models-and-backends.md)
//! verify_every = 1000                   # optional: re-run 1 in N native answers on ONNX Runtime (0: off)
//! on_disagreement = "fallback"          # optional: "fallback" (switch to ONNX Runtime) | "log"
//!
//! [label]                               # optional: how the training labels were made
//! horizon_events = 10                   # (docs/signal-quality.md): the mid k same-symbol events later,
//! # horizon_ms = 500                    # and/or the mid in force h ms later (request timestamps);
//! flat_bps = 0.0                        # |move| <= this is flat (0: only an unchanged mid)
//! reference_macro_f1 = 0.368            # optional: the test-set macro-F1 of the training script
//!
//! [input]
//! name = "input"                        # the model's input tensor, float32 [batch, n]
//! features = ["spread_bps", "size_imbalance", "extra:0"]
//! mean = [1.2, 0.0, 0.0]                # optional, with std: (x - mean) / std
//! std = [0.8, 0.5, 1.0]
//! min = [0.0, -1.0, -5.0]               # optional, with max: each feature's range in training
//! max = [40.0, 1.0, 5.0]                # (raw units), the scale the load-time gate tests at
//!
//! [output]                              # classifier: float32 [batch, classes]
//! kind = "classes"
//! name = "probabilities"
//! classes = ["sell", "flat", "buy"]     # column order of the probabilities
//! # or a regressor: float32 [batch, 1] or [batch]
//! # kind = "regression"; name = "variable"; target = "mid_return_bps" | "mid_change"
//! # flat_threshold = 0.5  (|y| at or below → direction 0); full_confidence = 3.0 (|y| → confidence 100)
//!
//! [sequence]                            # optional: a sequence model (docs/models-and-backends.md)
//! kind = "window"                       # input float32 [batch, window, features]: the symbol's
//! window = 16                           # last 16 feature rows, oldest first
//! # or one recurrent step, state carried per symbol between requests:
//! # kind = "recurrent"
//! # state = [{ input = "h_in", output = "h_out" }, { input = "c_in", output = "c_out" }]
//! # warmup_events = 32                  # events before the carried state counts as warm
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::features::FeatureMap;
use crate::wire::MlRequest;

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("manifest {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("model {onnx} does not match its manifest {path}:\n  - {}", .mismatches.join("\n  - "))]
    Mismatch { path: PathBuf, onnx: PathBuf, mismatches: Vec<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    model: ModelSection,
    input: InputSection,
    output: OutputSection,
    sequence: Option<SequenceSection>,
    label: Option<LabelSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelSection {
    horizon_events: Option<u32>,
    horizon_ms: Option<f64>,
    flat_bps: Option<f64>,
    reference_macro_f1: Option<f64>,
}

/// How the model's training labels were made (`[label]`): what live signal quality and
/// replay's report score its answers against.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub rule: crate::quality::LabelRule,
    /// The training script's test-set macro-F1 (the live alert's bar).
    pub reference_macro_f1: Option<f64>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum SequenceSection {
    Window { window: usize },
    Recurrent { state: Vec<StatePair>, warmup_events: Option<usize> },
}

/// One recurrent state tensor: fed as `input`, read back from `output` after each step.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatePair {
    pub input: String,
    pub output: String,
}

/// Largest window a window model may ask for.
pub const MAX_WINDOW: usize = 4096;

/// How a model sees a symbol's history beyond its features.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Sequence {
    /// One feature row per request: input `[batch, features]`.
    #[default]
    None,
    /// The symbol's last `window` feature rows, oldest first: input `[batch, window, features]`.
    Window { window: usize },
    /// One recurrent step per request; each state tensor `[batch, width]` is fed from, and
    /// written back to, the symbol's memory. Warm after `warmup_events` further events.
    Recurrent { state: Vec<StatePair>, warmup_events: usize },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelSection {
    name: String,
    version: u32,
    onnx: PathBuf,
    price_scale: i64,
    /// Fixed point of sizes on the wire (a power of ten; default 1: whole units).
    #[serde(default = "unit_size_scale")]
    size_scale: i64,
    #[serde(default)]
    description: String,
    /// Label horizon in events (older manifests; `[label]` says it with the flat threshold).
    horizon_events: Option<usize>,
    #[serde(default)]
    backend: Backend,
    /// Re-run one native answer in this many on ONNX Runtime while serving (0: never).
    #[serde(default = "default_verify_every")]
    verify_every: u32,
    #[serde(default)]
    on_disagreement: OnDisagreement,
}

/// `verify_every` when the manifest says nothing: measured invisible on the hot path
/// (docs/models-and-backends.md, "Backends": the live verifier's cost).
pub const DEFAULT_VERIFY_EVERY: u32 = 1000;

fn default_verify_every() -> u32 {
    DEFAULT_VERIFY_EVERY
}

/// What the live verifier does when a native answer differs from ONNX Runtime's
/// (`[model] on_disagreement`, `serve --on-disagreement`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnDisagreement {
    /// Count, log, and switch the model to ONNX Runtime between two requests.
    #[default]
    Fallback,
    /// Count and log only.
    Log,
}

/// The scale of the model's real inputs, in model-input units (after normalisation), for
/// the load-time gate's rows.
#[derive(Clone, Debug, PartialEq)]
pub enum InputScale {
    /// `[input] min`/`max`: each feature's range, normalised when `mean`/`std` are given.
    Ranges(Vec<(f64, f64)>),
    /// `mean`/`std` without ranges: the model sees values around 0 of unit spread.
    Normalized,
    /// Neither: the model reads raw values of unknown scale.
    Unknown,
}

fn unit_size_scale() -> i64 {
    1
}

/// Which runtime evaluates the model (`[model] backend`, `serve --backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// ONNX Runtime only.
    Ort,
    /// The evaluator generated from the ONNX graph at load; the load fails, naming why,
    /// when the graph is not one it runs or it disagrees with ONNX Runtime.
    Native,
    /// Native where it runs the graph, agrees with ONNX Runtime and is faster at
    /// warm-up; ONNX Runtime otherwise.
    #[default]
    Auto,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSection {
    name: String,
    features: Vec<String>,
    mean: Option<Vec<f64>>,
    std: Option<Vec<f64>>,
    min: Option<Vec<f64>>,
    max: Option<Vec<f64>>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum OutputSection {
    Classes { name: String, classes: Vec<String> },
    Regression { name: String, target: Target, flat_threshold: f64, full_confidence: f64 },
}

/// What a regression output predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Expected mid return in basis points: target = mid × (1 + y/10⁴).
    MidReturnBps,
    /// Expected mid change in price units: target = mid + y.
    MidChange,
}

/// How the output row becomes direction, confidence and target price.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputSpec {
    /// Class probabilities; `directions[j]` is the direction of column j.
    /// direction = argmax (first on ties), confidence = round(100·p), target = mid.
    Classes { name: String, directions: Vec<i8> },
    /// One value per row; direction = sign(y) when |y| > flat_threshold,
    /// confidence = round(100·|y|/full_confidence) capped at 100.
    Regression { name: String, target: Target, flat_threshold: f64, full_confidence: f64 },
}

impl OutputSpec {
    /// Output tensor name.
    pub fn name(&self) -> &str {
        match self {
            OutputSpec::Classes { name, .. } | OutputSpec::Regression { name, .. } => name,
        }
    }

    /// Values per row the output must have.
    pub fn width(&self) -> usize {
        match self {
            OutputSpec::Classes { directions, .. } => directions.len(),
            OutputSpec::Regression { .. } => 1,
        }
    }
}

/// A decoded signal for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prediction {
    pub direction: i8,
    pub confidence: u8,
    pub target_price: i64,
    /// The request's symbol had fewer earlier events than the stateful features need.
    pub warming: bool,
}

/// A model's input or output as the runtime reports it (independent of `ort`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoDesc {
    pub name: String,
    /// `"float32"`, `"int64"`, … or `"sequence"`/`"map"` for non-tensors.
    pub dtype: String,
    /// Dimensions; -1 where dynamic. Empty for non-tensors.
    pub shape: Vec<i64>,
}

impl std::fmt::Display for IoDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> =
            self.shape.iter().map(|&d| if d < 0 { "?".into() } else { d.to_string() }).collect();
        write!(f, "{}: {}[{}]", self.name, self.dtype, dims.join(", "))
    }
}

/// Batch capability found while checking the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchDim {
    /// First dimension dynamic: up to N rows in one run.
    Dynamic,
    /// First dimension fixed at 1: one run per request.
    One,
}

/// A parsed, self-consistent manifest (not yet checked against its model).
#[derive(Clone, Debug)]
pub struct Manifest {
    pub path: PathBuf,
    pub name: String,
    pub version: u32,
    pub description: String,
    /// Label horizon in events (`[label]`, or an older manifest's `[model] horizon_events`), if given.
    pub horizon_events: Option<usize>,
    /// The training labels' rule (`[label]`); `None`: live answers are not scored.
    pub label: Option<Label>,
    /// The `.onnx`, resolved relative to the manifest.
    pub onnx: PathBuf,
    pub price_scale: i64,
    /// Sizes on the wire are fixed point at this scale (`[model] size_scale`, default 1).
    pub size_scale: i64,
    pub input_name: String,
    pub feature_names: Vec<String>,
    pub features: FeatureMap,
    pub output: OutputSpec,
    /// Window or recurrent model, or neither.
    pub sequence: Sequence,
    /// The manifest's backend choice (`serve --backend` overrides it).
    pub backend: Backend,
    /// The scale of the model's inputs (`[input] min`/`max`, `mean`/`std`).
    pub input_scale: InputScale,
    /// Re-run one native answer in this many on ONNX Runtime (0: never; `serve --verify-every`).
    pub verify_every: u32,
    /// What a disagreement found while serving does (`serve --on-disagreement`).
    pub on_disagreement: OnDisagreement,
}

/// `[input] min`/`max` (both or neither, one finite pair per feature, min <= max), in
/// model-input units; else what `mean`/`std` say.
fn input_scale(input: &InputSection) -> Result<InputScale, String> {
    let n = input.features.len();
    match (&input.min, &input.max) {
        (None, None) if input.mean.is_some() => Ok(InputScale::Normalized),
        (None, None) => Ok(InputScale::Unknown),
        (Some(lo), Some(hi)) => {
            if lo.len() != n || hi.len() != n {
                return Err(format!("[input] min and max need one value per feature ({n})"));
            }
            let mut ranges = Vec::with_capacity(n);
            for (f, (&a, &b)) in lo.iter().zip(hi).enumerate() {
                if !(a.is_finite() && b.is_finite() && a <= b) {
                    return Err(format!(
                        "[input] feature {f}: min {a} and max {b} must be finite, min <= max"
                    ));
                }
                let (m, s) = match (&input.mean, &input.std) {
                    (Some(m), Some(s)) if m.len() == n && s.len() == n && s[f] != 0.0 => (m[f], s[f]),
                    _ => (0.0, 1.0),
                };
                let (a, b) = ((a - m) / s, (b - m) / s);
                ranges.push((a.min(b), a.max(b)));
            }
            Ok(InputScale::Ranges(ranges))
        }
        _ => Err("[input] min and max go together".into()),
    }
}

/// Widest recurrent state tensor accepted, in floats (an LSTM 2 × 128 carries 256 per
/// tensor): the state is allocated for every symbol slot at load, so a model file must not
/// be able to ask for gigabytes.
pub const MAX_STATE_WIDTH: i64 = 1 << 16;

/// Largest manifest file read (a real one is under a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Read a manifest file: a regular file of at most [`MAX_MANIFEST_BYTES`]. Opened
/// non-blocking and checked on the open descriptor, so a FIFO cannot hang the
/// caller (a reload holds the one-reload-at-a-time lock) and a device such as
/// `/dev/zero` cannot eat memory, even if the path changes between check and read.
fn read_manifest(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(invalid(format!("{} bytes, more than a manifest's {MAX_MANIFEST_BYTES}", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(invalid(format!("grew past a manifest's {MAX_MANIFEST_BYTES} bytes while read")));
    }
    // The error names no byte of the file: a manifest path can come from a control client.
    String::from_utf8(bytes)
        .map_err(|e| invalid(format!("not UTF-8 text (at byte {})", e.utf8_error().valid_up_to())))
}

/// A TOML error as `line L column C: message`, without the source excerpt that
/// `toml`'s own `Display` quotes (never echo a file's content back to a caller).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line} column {column}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

impl Manifest {
    /// Read and check a manifest file (regular, at most [`MAX_MANIFEST_BYTES`]).
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text =
            read_manifest(path).map_err(|source| ManifestError::Read { path: path.to_path_buf(), source })?;
        Manifest::parse(&text, path)
    }

    /// Parse manifest text; `path` locates the `.onnx` and names errors.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let invalid = |message: String| ManifestError::Invalid { path: path.to_path_buf(), message };
        let file: File = toml::from_str(text).map_err(|e| invalid(toml_error(text, &e)))?;
        let features = FeatureMap::new(
            &file.input.features,
            file.input.mean.as_deref(),
            file.input.std.as_deref(),
            file.model.price_scale,
        )
        .and_then(|f| f.with_size_scale(file.model.size_scale))
        .map_err(invalid)?;
        let output = match file.output {
            OutputSection::Classes { name, classes } => {
                let mut directions = Vec::with_capacity(classes.len());
                for c in &classes {
                    directions.push(match c.as_str() {
                        "sell" => -1,
                        "flat" => 0,
                        "buy" => 1,
                        other => {
                            return Err(invalid(format!(
                                "output class `{other}`: classes are \"sell\", \"flat\", \"buy\""
                            )))
                        }
                    });
                }
                let mut sorted = directions.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() != directions.len() || directions.len() < 2 {
                    return Err(invalid(format!(
                        "output classes {classes:?}: need 2 or 3 distinct of sell/flat/buy"
                    )));
                }
                OutputSpec::Classes { name, directions }
            }
            OutputSection::Regression { name, target, flat_threshold, full_confidence } => {
                if !(flat_threshold.is_finite() && flat_threshold >= 0.0) {
                    return Err(invalid(format!("flat_threshold {flat_threshold} must be finite and >= 0")));
                }
                if !(full_confidence.is_finite() && full_confidence > 0.0) {
                    return Err(invalid(format!("full_confidence {full_confidence} must be finite and > 0")));
                }
                OutputSpec::Regression { name, target, flat_threshold, full_confidence }
            }
        };
        let sequence = match file.sequence {
            None => Sequence::None,
            Some(SequenceSection::Window { window }) => {
                if !(1..=MAX_WINDOW).contains(&window) {
                    return Err(invalid(format!("sequence window {window} must be in 1..={MAX_WINDOW}")));
                }
                Sequence::Window { window }
            }
            Some(SequenceSection::Recurrent { state, warmup_events }) => {
                if state.is_empty() {
                    return Err(invalid(
                        "a recurrent sequence needs at least one state = {input, output}".into(),
                    ));
                }
                let mut names: Vec<&str> =
                    state.iter().flat_map(|p| [p.input.as_str(), p.output.as_str()]).collect();
                names.push(&file.input.name);
                names.push(output.name());
                let n = names.len();
                names.sort_unstable();
                names.dedup();
                if names.len() != n {
                    return Err(invalid(
                        "recurrent state names must be distinct from each other and from the input and output"
                            .into(),
                    ));
                }
                Sequence::Recurrent { state, warmup_events: warmup_events.unwrap_or(0) }
            }
        };
        let input_scale = input_scale(&file.input).map_err(invalid)?;
        let onnx = if file.model.onnx.is_absolute() {
            file.model.onnx
        } else {
            path.parent().unwrap_or(Path::new(".")).join(file.model.onnx)
        };
        let label = match file.label {
            None => None,
            Some(l) => {
                let flat_bps = l.flat_bps.ok_or_else(|| {
                    invalid(
                        "[label] needs flat_bps: the flat threshold of the training labels in bps (0: only an \
                         unchanged mid is flat)"
                            .into(),
                    )
                })?;
                let rule = crate::quality::LabelRule {
                    horizon_events: l.horizon_events,
                    horizon_ms: l.horizon_ms,
                    flat_bps,
                }
                .checked()
                .map_err(invalid)?;
                if let Some(r) = l.reference_macro_f1.filter(|r| !(0.0..=1.0).contains(r)) {
                    return Err(invalid(format!("[label] reference_macro_f1 {r} must be in 0..=1")));
                }
                if let (Some(old), Some(new)) = (file.model.horizon_events, l.horizon_events) {
                    if old != new as usize {
                        return Err(invalid(format!(
                            "[model] horizon_events {old} and [label] horizon_events {new} disagree (keep [label]'s)"
                        )));
                    }
                }
                Some(Label { rule, reference_macro_f1: l.reference_macro_f1 })
            }
        };
        Ok(Manifest {
            path: path.to_path_buf(),
            name: file.model.name,
            version: file.model.version,
            description: file.model.description,
            horizon_events: label
                .as_ref()
                .and_then(|l| l.rule.horizon_events.map(|k| k as usize))
                .or(file.model.horizon_events),
            label,
            onnx,
            price_scale: file.model.price_scale,
            size_scale: file.model.size_scale,
            input_name: file.input.name,
            feature_names: file.input.features,
            features,
            output,
            sequence,
            backend: file.model.backend,
            input_scale,
            verify_every: file.model.verify_every,
            on_disagreement: file.model.on_disagreement,
        })
    }

    /// Check the manifest against the model's real inputs and outputs. Every
    /// mismatch found is listed in the error.
    pub fn check_model(&self, inputs: &[IoDesc], outputs: &[IoDesc]) -> Result<BatchDim, ManifestError> {
        let mut bad = Vec::new();
        let mut batch = BatchDim::Dynamic;
        let list = |xs: &[IoDesc]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("; ");
        let states: &[StatePair] = match &self.sequence {
            Sequence::Recurrent { state, .. } => state,
            _ => &[],
        };
        if inputs.len() != 1 + states.len() {
            bad.push(format!(
                "the model has {} inputs ({}); the manifest feeds {}",
                inputs.len(),
                list(inputs),
                if states.is_empty() {
                    "exactly one float32 [batch, features] input".to_string()
                } else {
                    format!("the features and {} recurrent state input(s)", states.len())
                }
            ));
        }
        let window = match self.sequence {
            Sequence::Window { window } => Some(window),
            _ => None,
        };
        let mut check_batch = |name: &str, b: i64, bad: &mut Vec<String>| match b {
            d if d < 0 => {}
            1 => batch = BatchDim::One,
            d => bad.push(format!("input `{name}` has a fixed batch dimension {d}; expected dynamic or 1")),
        };
        match inputs.iter().find(|i| i.name == self.input_name) {
            None => bad.push(format!(
                "input `{}` named in the manifest is not a model input (model inputs: {})",
                self.input_name,
                list(inputs)
            )),
            Some(input) => {
                if input.dtype != "float32" {
                    bad.push(format!("input `{}` is {}, expected float32", input.name, input.dtype));
                }
                let n = match (input.shape.as_slice(), window) {
                    ([b, n], None) => {
                        check_batch(&input.name, *b, &mut bad);
                        Some(*n)
                    }
                    ([b, k, n], Some(window)) => {
                        check_batch(&input.name, *b, &mut bad);
                        if *k >= 0 && *k as usize != window {
                            bad.push(format!(
                                "input `{}` holds {k} steps; the manifest's window is {window}",
                                input.name
                            ));
                        }
                        Some(*n)
                    }
                    (other, None) => {
                        bad.push(format!(
                            "input `{}` has shape {other:?}; expected rank 2 [batch, features]{}",
                            input.name,
                            if other.len() == 3 {
                                " (a window model needs [sequence] kind = \"window\")"
                            } else {
                                ""
                            }
                        ));
                        None
                    }
                    (other, Some(window)) => {
                        bad.push(format!(
                            "input `{}` has shape {other:?}; a window model needs rank 3 [batch, {window}, features]",
                            input.name
                        ));
                        None
                    }
                };
                if let Some(n) = n.filter(|&n| n >= 0 && n as usize != self.features.len()) {
                    bad.push(format!(
                        "input `{}` takes {n} features; the manifest lists {} ({})",
                        input.name,
                        self.features.len(),
                        self.feature_names.join(", ")
                    ));
                }
            }
        }
        for pair in states {
            let fed = inputs.iter().find(|i| i.name == pair.input);
            let back = outputs.iter().find(|o| o.name == pair.output);
            let width = |d: &IoDesc, bad: &mut Vec<String>| match d.shape.as_slice() {
                [_, w] if *w > MAX_STATE_WIDTH => {
                    bad.push(format!(
                        "recurrent state `{}` is {w} floats wide, more than {MAX_STATE_WIDTH} (kept per symbol, \
                         allocated for every symbol at load)",
                        d.name
                    ));
                    None
                }
                [_, w] if *w > 0 && d.dtype == "float32" => Some(*w),
                other => {
                    bad.push(format!(
                        "recurrent state `{}` is {}{other:?}; expected float32 [batch, width] with a fixed width \
                         (export [layers, batch, hidden] state as [batch, layers*hidden]: scripts/export_lstm.py)",
                        d.name, d.dtype
                    ));
                    None
                }
            };
            match (fed, back) {
                (Some(i), Some(o)) => {
                    if let Some(b) = i.shape.first() {
                        check_batch(&i.name, *b, &mut bad);
                    }
                    if let (Some(wi), Some(wo)) = (width(i, &mut bad), width(o, &mut bad)) {
                        if wi != wo {
                            bad.push(format!(
                                "recurrent state `{}` is {wi} wide but `{}` is {wo}",
                                pair.input, pair.output
                            ));
                        }
                    }
                }
                (i, o) => {
                    if i.is_none() {
                        bad.push(format!(
                            "recurrent state input `{}` is not a model input (model inputs: {})",
                            pair.input,
                            list(inputs)
                        ));
                    }
                    if o.is_none() {
                        bad.push(format!(
                            "recurrent state output `{}` is not a model output (model outputs: {})",
                            pair.output,
                            list(outputs)
                        ));
                    }
                }
            }
        }
        let out_name = self.output.name();
        match outputs.iter().find(|o| o.name == out_name) {
            None => bad.push(format!(
                "output `{out_name}` named in the manifest is not a model output (model outputs: {})",
                list(outputs)
            )),
            Some(out) if out.dtype == "sequence" || out.dtype == "map" => bad.push(format!(
                "output `{out_name}` is a {} (a ZipMap?), not a tensor: export classifiers with zipmap=False",
                out.dtype
            )),
            Some(out) => {
                if out.dtype != "float32" {
                    bad.push(format!("output `{out_name}` is {}, expected float32", out.dtype));
                }
                let width = self.output.width() as i64;
                let ok = match out.shape.as_slice() {
                    [_, k] => *k < 0 || *k == width,
                    [_] => width == 1,
                    _ => false,
                };
                if !ok {
                    bad.push(format!(
                        "output `{out_name}` has shape {:?}; the manifest's {} needs [batch, {width}]{}",
                        out.shape,
                        match self.output {
                            OutputSpec::Classes { .. } => "classes",
                            OutputSpec::Regression { .. } => "regression",
                        },
                        if width == 1 { " or [batch]" } else { "" }
                    ));
                }
            }
        }
        if bad.is_empty() {
            Ok(batch)
        } else {
            Err(ManifestError::Mismatch { path: self.path.clone(), onnx: self.onnx.clone(), mismatches: bad })
        }
    }

    /// The width of each recurrent state tensor (in the manifest's order), as the model
    /// declares it; call after [`check_model`](Self::check_model) succeeded.
    pub fn state_widths(&self, inputs: &[IoDesc]) -> Vec<usize> {
        match &self.sequence {
            Sequence::Recurrent { state, .. } => state
                .iter()
                .map(|p| {
                    inputs
                        .iter()
                        .find(|i| i.name == p.input)
                        .and_then(|i| i.shape.get(1))
                        .map_or(0, |&w| w.max(0) as usize)
                })
                .collect(),
            _ => vec![],
        }
    }

    /// Turn one output row into a signal for `req`. No allocation. `None` when the
    /// row holds a NaN or an infinity, or a regression target outside `i64`: the model
    /// failed on this request and it must not be answered as if it had a signal.
    #[inline]
    pub fn decode(&self, row: &[f32], req: &MlRequest) -> Option<Prediction> {
        if !row.iter().all(|v| v.is_finite()) {
            return None;
        }
        // i128: two positive i64 prices can overflow i64 when added (a hostile client may send them).
        let mid2 = req.bid_price as i128 + req.ask_price as i128;
        match &self.output {
            OutputSpec::Classes { directions, .. } => {
                let mut best = 0;
                for (j, &p) in row.iter().enumerate() {
                    if p > row[best] {
                        best = j;
                    }
                }
                let confidence = (100.0 * row[best] as f64 + 0.5).floor().clamp(0.0, 100.0) as u8;
                Some(Prediction {
                    direction: directions[best],
                    confidence,
                    target_price: (mid2 / 2) as i64,
                    warming: false,
                })
            }
            OutputSpec::Regression { target, flat_threshold, full_confidence, .. } => {
                let y = row[0] as f64;
                let mid = mid2 as f64 / 2.0;
                let direction = if y.abs() <= *flat_threshold {
                    0
                } else if y > 0.0 {
                    1
                } else {
                    -1
                };
                let confidence = (100.0 * y.abs() / full_confidence + 0.5).floor().clamp(0.0, 100.0) as u8;
                let target = match target {
                    Target::MidReturnBps => mid * (1.0 + y / 1e4),
                    Target::MidChange => mid + y * self.price_scale as f64,
                };
                let target = (target + 0.5).floor();
                // i64::MAX as f64 rounds up to 2^63, itself out of range: compare with <.
                if !(target >= i64::MIN as f64 && target < i64::MAX as f64) {
                    return None;
                }
                Some(Prediction { direction, confidence, target_price: target as i64, warming: false })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[model]
name = "m"
version = 4
onnx = "m.onnx"
price_scale = 10000
[input]
name = "x"
features = ["spread_bps", "extra:1"]
[output]
kind = "classes"
name = "probabilities"
classes = ["sell", "flat", "buy"]
"#;

    fn io(name: &str, dtype: &str, shape: &[i64]) -> IoDesc {
        IoDesc { name: name.into(), dtype: dtype.into(), shape: shape.to_vec() }
    }

    #[test]
    fn parses_and_resolves_onnx_beside_manifest() {
        let m = Manifest::parse(TEXT, Path::new("/models/m.toml")).unwrap();
        assert_eq!(m.onnx, Path::new("/models/m.onnx"));
        assert_eq!(m.features.extras(), 2);
        assert_eq!(m.output.width(), 3);
        let ok = m.check_model(&[io("x", "float32", &[-1, 2])], &[io("probabilities", "float32", &[-1, 3])]);
        assert_eq!(ok.unwrap(), BatchDim::Dynamic);
        let one = m.check_model(&[io("x", "float32", &[1, 2])], &[io("probabilities", "float32", &[1, 3])]);
        assert_eq!(one.unwrap(), BatchDim::One);
    }

    #[test]
    fn every_mismatch_is_named() {
        let m = Manifest::parse(TEXT, Path::new("m.toml")).unwrap();
        let err = m
            .check_model(
                &[io("input", "float64", &[-1, 5])],
                &[io("label", "int64", &[-1]), io("probabilities", "sequence", &[])],
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("input `x` named in the manifest is not a model input"), "{err}");
        assert!(err.contains("input: float64[?, 5]"), "{err}");
        assert!(err.contains("ZipMap"), "{err}");
        let err = m
            .check_model(&[io("x", "float64", &[-1, 5])], &[io("probabilities", "float32", &[-1, 2])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("input `x` is float64, expected float32"), "{err}");
        assert!(err.contains("takes 5 features; the manifest lists 2 (spread_bps, extra:1)"), "{err}");
        assert!(err.contains("output `probabilities` has shape [-1, 2]"), "{err}");
    }

    #[test]
    fn bad_manifests_say_why() {
        let e = |t: &str| Manifest::parse(t, Path::new("m.toml")).unwrap_err().to_string();
        assert!(e(&TEXT.replace("\"buy\"]", "\"up\"]")).contains("output class `up`"));
        assert!(e(&TEXT.replace("spread_bps", "sprad")).contains("unknown feature `sprad`"));
        assert!(e(&TEXT.replace("price_scale = 10000", "price_scale = 0")).contains("price_scale"));
        assert!(e(&TEXT.replace("version = 4", "version = 4\nbogus = 1")).contains("bogus"));
        assert!(e(&TEXT.replace("\"flat\", ", "\"sell\", ")).contains("distinct"));
    }

    #[test]
    fn label_section_gives_the_rule_or_says_why_not() {
        use crate::quality::LabelRule;
        let with =
            |text: &str, label: &str| Manifest::parse(&format!("{text}\n{label}"), Path::new("m.toml"));
        let m = with(TEXT, "[label]\nhorizon_events = 10\nflat_bps = 0\nreference_macro_f1 = 0.47").unwrap();
        let rule = LabelRule { horizon_events: Some(10), horizon_ms: None, flat_bps: 0.0 };
        assert_eq!(m.label, Some(Label { rule, reference_macro_f1: Some(0.47) }));
        assert_eq!(m.horizon_events, Some(10), "replay's default horizon");
        let m = with(TEXT, "[label]\nhorizon_ms = 250\nflat_bps = 0.5").unwrap();
        assert_eq!(m.label.unwrap().rule.horizon_ns(), Some(250_000_000));
        assert!(
            Manifest::parse(TEXT, Path::new("m.toml")).unwrap().label.is_none(),
            "no [label]: not scored"
        );

        let e = |label: &str| with(TEXT, label).unwrap_err().to_string();
        assert!(e("[label]\nhorizon_events = 10").contains("[label] needs flat_bps"));
        assert!(e("[label]\nflat_bps = 0").contains("needs horizon_events and/or horizon_ms"));
        assert!(
            e("[label]\nhorizon_events = 0\nflat_bps = 0").contains("horizon_events 0 must be in 1..=4096")
        );
        assert!(e("[label]\nhorizon_ms = -1\nflat_bps = 0").contains("horizon_ms -1 must be > 0"));
        assert!(e("[label]\nhorizon_ms = 5\nflat_bps = nan").contains("flat_bps NaN must be finite"));
        assert!(e("[label]\nhorizon_events = 5\nflat_bps = 0\nreference_macro_f1 = 1.5")
            .contains("reference_macro_f1 1.5 must be in 0..=1"));
        assert!(e("[label]\nhorizon_event = 5\nflat_bps = 0").contains("horizon_event"));
        // An older manifest's [model] horizon_events: replay's horizon, not a label rule; a
        // [label] beside it must agree.
        let older = TEXT.replace("version = 4", "version = 4\nhorizon_events = 7");
        let m = Manifest::parse(&older, Path::new("m.toml")).unwrap();
        assert_eq!((m.label, m.horizon_events), (None, Some(7)));
        let e = with(&older, "[label]\nhorizon_events = 5\nflat_bps = 0").unwrap_err().to_string();
        assert!(e.contains("[model] horizon_events 7 and [label] horizon_events 5 disagree"), "{e}");
    }

    #[test]
    fn decodes_classes_and_regression() {
        let m = Manifest::parse(TEXT, Path::new("m.toml")).unwrap();
        let req = MlRequest { bid_price: 1_000_000, ask_price: 1_000_101, ..MlRequest::new() };
        let p = m.decode(&[0.2, 0.3, 0.5], &req);
        assert_eq!(
            p,
            Some(Prediction { direction: 1, confidence: 50, target_price: 1_000_050, warming: false })
        );
        assert_eq!(m.decode(&[0.4, 0.4, 0.2], &req).unwrap().direction, -1, "first maximum wins ties");
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(m.decode(&[0.2, bad, 0.5], &req), None, "{bad} in a class row is a model failure");
        }

        let reg = TEXT.replace(
            "kind = \"classes\"\nname = \"probabilities\"\nclasses = [\"sell\", \"flat\", \"buy\"]",
            "kind = \"regression\"\nname = \"variable\"\ntarget = \"mid_return_bps\"\nflat_threshold = 0.5\nfull_confidence = 2.0",
        );
        let m = Manifest::parse(&reg, Path::new("m.toml")).unwrap();
        let p = m.decode(&[-1.0], &req).unwrap();
        assert_eq!(p.direction, -1);
        assert_eq!(p.confidence, 50);
        assert_eq!(p.target_price, (1_000_050.5f64 * (1.0 - 1e-4) + 0.5).floor() as i64);
        assert_eq!(m.decode(&[0.5], &req).unwrap().direction, 0, "at the threshold is flat");
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(m.decode(&[bad], &req), None, "{bad} is a model failure, not a flat signal");
        }
        assert_eq!(m.decode(&[9.0], &req).unwrap().confidence, 100);
        // A finite output whose target price leaves i64 is a failure too, never a saturated price.
        let huge = MlRequest { bid_price: i64::MAX / 2, ask_price: i64::MAX / 2, ..MlRequest::new() };
        assert_eq!(m.decode(&[3.0e38], &huge), None);
    }

    #[test]
    fn prices_whose_sum_overflows_i64_decode() {
        let huge = MlRequest {
            bid_price: 5_000_000_000_000_000_000,
            ask_price: 6_000_000_000_000_000_000,
            ..MlRequest::new()
        };
        let m = Manifest::parse(TEXT, Path::new("m.toml")).unwrap();
        assert_eq!(m.decode(&[0.1, 0.2, 0.7], &huge).unwrap().target_price, 5_500_000_000_000_000_000);
    }
}
