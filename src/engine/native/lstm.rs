//! A recurrent LSTM step evaluated natively, generated at load from the ONNX graph:
//! a stack of ONNX `LSTM` nodes (forward, default activations, no peepholes), one
//! time step, whose initial states come from the manifest's recurrent state inputs,
//! and a `Gemm` head on the last layer's output, optionally followed by `Softmax`.
//! The weights are read from the graph's initializers — never a second copy of the
//! model — and the result is checked against ONNX Runtime at load before it serves
//! (see `engine::native`).

use super::graph::{check_softmax, Graph};
use super::kernels::{input_bound, sigmoid_in_place, softmax_in_place, tanh_in_place, Packed};
use super::onnx_pb::{GraphProto, NodeProto};
use crate::manifest::{Manifest, Sequence};

/// One layer: `gates = b + [W R]·[x; h]` in ONNX gate order (i, o, f, c).
#[derive(Clone, Debug)]
struct Layer {
    /// `[4H, input + H]`, packed.
    weights: Packed,
    /// `Wb + Rb`, `[4H]`.
    bias: Vec<f32>,
    /// Input width of this layer.
    input: usize,
}

/// The evaluator of one LSTM step graph.
#[derive(Clone, Debug)]
pub struct LstmStep {
    layers: Vec<Layer>,
    hidden: usize,
    /// `[outputs, H]`, packed, and its bias (Gemm's `beta·C`; alpha folded in).
    head: Packed,
    head_bias: Vec<f32>,
    softmax: bool,
    /// Offsets of h and c (layer-major, `layers·H` each) in a symbol's sequence memory.
    h_at: usize,
    c_at: usize,
    /// Scratch: `[x; h]` of the layer being run, and its gates.
    v: Vec<f32>,
    gates: Vec<f32>,
    /// The new state, checked finite before it replaces the symbol's.
    next: Vec<f32>,
    /// Largest |input| (and |state| value) served natively (see [`LstmStep::accepts`]).
    bound: f32,
}

impl LstmStep {
    /// Recognise the graph; `Err` says why it is not an LSTM step this evaluator runs.
    pub fn from_graph(
        g: &GraphProto,
        manifest: &Manifest,
        state_widths: &[usize],
    ) -> Result<LstmStep, String> {
        let Sequence::Recurrent { state, .. } = &manifest.sequence else {
            return Err("not a recurrent step model".into());
        };
        let graph = Graph::new(g);
        let lstms: Vec<&NodeProto> = g.node.iter().filter(|n| n.op_type == "LSTM").collect();
        if lstms.is_empty() {
            return Err("no LSTM node".into());
        }
        if let Some(n) = g.node.iter().find(|n| !n.domain.is_empty() && n.domain != "ai.onnx") {
            return Err(format!("node `{}` is from domain `{}`", n.name, n.domain));
        }
        // The chain: layer 0 reads the feature input, layer l + 1 reads layer l's Y.
        let mut order: Vec<&NodeProto> = Vec::new();
        let mut expect = manifest.input_name.as_str();
        while order.len() < lstms.len() {
            let next = lstms
                .iter()
                .find(|n| n.input.first().is_some_and(|x| graph.source(x) == expect))
                .ok_or_else(|| format!("no LSTM layer reads `{expect}`: the layers are not one chain"))?;
            order.push(next);
            expect = next.output.first().map(String::as_str).unwrap_or("");
        }
        let (mut layers, mut hidden, mut input) = (Vec::new(), 0usize, manifest.features.len());
        let (mut h_name, mut c_name) = (None, None);
        for (l, n) in order.iter().enumerate() {
            let hs = n.attr("hidden_size").map(|a| a.i).ok_or("LSTM without hidden_size")?;
            if !(1..=65_536).contains(&hs) {
                return Err(format!("LSTM hidden_size {hs}"));
            }
            let hs = hs as usize;
            if l > 0 && hs != hidden {
                return Err("LSTM layers of different hidden sizes".into());
            }
            hidden = hs;
            if let Some(a) = n.attr("direction") {
                if a.s != b"forward" {
                    return Err(format!("LSTM direction `{}`", String::from_utf8_lossy(&a.s)));
                }
            }
            if let Some(a) = n.attr("activations") {
                let names: Vec<String> =
                    a.strings.iter().map(|s| String::from_utf8_lossy(s).to_string()).collect();
                if names != ["Sigmoid", "Tanh", "Tanh"] {
                    return Err(format!("LSTM activations {names:?}"));
                }
            }
            for attr in ["clip", "activation_alpha", "activation_beta"] {
                if n.attr(attr).is_some() {
                    return Err(format!("LSTM attribute `{attr}`"));
                }
            }
            for attr in ["input_forget", "layout"] {
                if n.attr(attr).is_some_and(|a| a.i != 0) {
                    return Err(format!("LSTM attribute `{attr}` != 0"));
                }
            }
            let arg = |i: usize| n.input.get(i).map(String::as_str).filter(|s| !s.is_empty());
            if arg(4).is_some() || arg(7).is_some() {
                return Err("LSTM with sequence_lens or peepholes".into());
            }
            let (w, r) = (graph.init(arg(1).unwrap_or(""), "W")?, graph.init(arg(2).unwrap_or(""), "R")?);
            if w.dims != [1, 4 * hs as i64, input as i64] || r.dims != [1, 4 * hs as i64, hs as i64] {
                return Err(format!(
                    "layer {l}: W {:?} / R {:?} for input {input} and hidden {hs}",
                    w.dims, r.dims
                ));
            }
            let (w, r) = (w.floats()?, r.floats()?);
            let mut bias = vec![0f32; 4 * hs];
            if let Some(b) = arg(3) {
                let b = graph.init(b, "B")?.floats()?;
                if b.len() != 8 * hs {
                    return Err(format!("layer {l}: B has {} values, not 8·{hs}", b.len()));
                }
                for (k, out) in bias.iter_mut().enumerate() {
                    *out = b[k] + b[4 * hs + k];
                }
            }
            // [W R] row by row: gate row k reads x then h.
            let cols = input + hs;
            let mut cat = vec![0f32; 4 * hs * cols];
            for k in 0..4 * hs {
                cat[k * cols..k * cols + input].copy_from_slice(&w[k * input..(k + 1) * input]);
                cat[k * cols + input..(k + 1) * cols].copy_from_slice(&r[k * hs..(k + 1) * hs]);
            }
            // Initial states: every layer's h from one state input, c from another.
            let (h0, c0) = (arg(5).map(|s| graph.source(s)), arg(6).map(|s| graph.source(s)));
            let (Some(h0), Some(c0)) = (h0, c0) else {
                return Err(format!("layer {l}: LSTM without initial_h and initial_c"));
            };
            if *h_name.get_or_insert(h0) != h0 || *c_name.get_or_insert(c0) != c0 {
                return Err("the layers' initial states come from different inputs".into());
            }
            layers.push(Layer { weights: Packed::new(&cat, 4 * hs, cols), bias, input });
            input = hs;
        }
        let at = |name: &str| -> Result<(usize, usize), String> {
            let mut off = 0;
            for (p, &w) in state.iter().zip(state_widths) {
                if p.input == name {
                    return Ok((off, w));
                }
                off += w;
            }
            Err(format!("the LSTM's initial state `{name}` is not a [sequence] state input"))
        };
        let ((h_at, hw), (c_at, cw)) = (at(h_name.unwrap_or(""))?, at(c_name.unwrap_or(""))?);
        let want = layers.len() * hidden;
        if hw != want || cw != want || state.len() != 2 {
            return Err(format!(
                "state widths h {hw}, c {cw} for {} layers of {hidden} (want {want} each)",
                layers.len()
            ));
        }
        // The head: [Softmax ∘] Gemm on the last layer's Y.
        let out_name = manifest.output.name();
        let mut top = graph.producer(out_name).ok_or_else(|| format!("no node makes `{out_name}`"))?;
        let softmax = top.op_type == "Softmax";
        if softmax {
            check_softmax(top)?;
            top = top.input.first().and_then(|i| graph.producer(i)).ok_or("Softmax of a graph input")?;
        }
        if top.op_type != "Gemm" {
            return Err(format!("the output is made by `{}`, not Gemm (or Softmax of Gemm)", top.op_type));
        }
        let last = order.last().and_then(|n| n.output.first()).map(String::as_str).unwrap_or("");
        if top.input.first().map(|a| graph.source(a)) != Some(last) {
            return Err("the Gemm head does not read the last LSTM layer's output".into());
        }
        // Nothing on the way to the outputs the engine reads may be left out: the head's
        // output and the state outputs must be made by the LSTMs, the head and layout ops
        // alone, and each state output from its own kind of LSTM output (Y_h, Y_c).
        let pair = |input: &str| state.iter().find(|p| p.input == input).map(|p| p.output.as_str());
        let (h_out, c_out) =
            (pair(h_name.unwrap_or("")).unwrap_or(""), pair(c_name.unwrap_or("")).unwrap_or(""));
        let mut modelled: Vec<&NodeProto> = order.clone();
        modelled.push(top);
        if softmax {
            modelled.push(graph.producer(out_name).expect("found above"));
        }
        if let Some(n) = graph.unmodelled(&[out_name, h_out, c_out], &modelled) {
            return Err(format!(
                "`{}` node `{}` on the way to the outputs (an op this evaluator does not model)",
                n.op_type, n.name
            ));
        }
        for (name, k, what) in [(h_out, 1, "Y_h"), (c_out, 2, "Y_c")] {
            let from = graph.sources(name);
            let ok = !from.is_empty()
                && from.iter().all(|v| order.iter().any(|n| n.output.get(k).map(String::as_str) == Some(*v)));
            if !ok || !order.iter().all(|n| n.output.get(k).is_some_and(|o| from.contains(&o.as_str()))) {
                return Err(format!("state output `{name}` is not every layer's {what}"));
            }
        }
        let (head, head_bias) = graph.linear_layer(top, hidden)?;
        if head.rows() != manifest.output.width() {
            return Err(format!(
                "the head gives {} values; the manifest reads {}",
                head.rows(),
                manifest.output.width()
            ));
        }
        let widest = layers.iter().map(|l| l.input + hidden).max().unwrap_or(0);
        // Gates are W·[x; h] + b with |h| ≤ 1 from the second step on; c grows by at most 1 a
        // step. Bound x and the carried state alike.
        let grow = |a: f32| {
            layers.iter().fold(a, |top, l| {
                top.max(
                    l.weights.row_abs_sum() * a.max(1.0) + l.bias.iter().fold(0f32, |m, b| m.max(b.abs())),
                )
            })
        };
        let bound = input_bound(grow);
        Ok(LstmStep {
            bound,
            hidden,
            head,
            head_bias,
            softmax,
            h_at,
            c_at,
            v: vec![0.0; widest],
            gates: vec![0.0; 4 * hidden],
            next: vec![0.0; 2 * want],
            layers,
        })
    }

    /// "LSTM 2×128 step → Gemm 3 → Softmax".
    pub fn describe(&self) -> String {
        format!(
            "LSTM {}x{} step -> Gemm {}{}",
            self.layers.len(),
            self.hidden,
            self.head.rows(),
            if self.softmax { " -> Softmax" } else { "" }
        )
    }

    /// Whether row `x` with the symbol's `memory` is in the native range: every value
    /// finite and at most the bound that keeps the gates under [`INTERMEDIATE_LIMIT`](super::kernels::INTERMEDIATE_LIMIT);
    /// other rows run on ONNX Runtime.
    #[inline]
    pub fn accepts(&self, x: &[f32], memory: &[f32]) -> bool {
        x.iter().chain(memory).all(|v| v.abs() <= self.bound)
    }

    /// One step for one row: `x` the features, `memory` the symbol's sequence memory
    /// (h and c, updated in place), `out` the model output. Returns false (memory zeroed)
    /// when the new state is not finite. No allocation.
    #[inline]
    pub fn step(&mut self, x: &[f32], memory: &mut [f32], out: &mut [f32]) -> bool {
        let h = self.hidden;
        let n = self.layers.len() * h;
        let (next_h, next_c) = self.next.split_at_mut(n);
        for (l, layer) in self.layers.iter().enumerate() {
            let v = &mut self.v[..layer.input + h];
            if l == 0 {
                v[..layer.input].copy_from_slice(x);
            } else {
                v[..h].copy_from_slice(&next_h[(l - 1) * h..l * h]);
            }
            v[layer.input..].copy_from_slice(&memory[self.h_at + l * h..self.h_at + (l + 1) * h]);
            self.gates.copy_from_slice(&layer.bias);
            layer.weights.gemv_add(v, &mut self.gates);
            // ONNX gate order: i, o, f, c.
            let (ifo, g) = self.gates.split_at_mut(3 * h);
            sigmoid_in_place(ifo);
            tanh_in_place(g);
            let (i, rest) = ifo.split_at(h);
            let (o, f) = rest.split_at(h);
            let c_prev = &memory[self.c_at + l * h..self.c_at + (l + 1) * h];
            let c_new = &mut next_c[l * h..(l + 1) * h];
            for k in 0..h {
                c_new[k] = f[k] * c_prev[k] + i[k] * g[k];
            }
            let h_new = &mut next_h[l * h..(l + 1) * h];
            h_new.copy_from_slice(c_new);
            tanh_in_place(h_new);
            for k in 0..h {
                h_new[k] *= o[k];
            }
        }
        out.copy_from_slice(&self.head_bias);
        self.head.gemv_add(&next_h[(self.layers.len() - 1) * h..], out);
        if self.softmax {
            softmax_in_place(out);
        }
        let finite = self.next.iter().all(|v| v.is_finite());
        let (h_dst, c_dst) = (self.h_at, self.c_at);
        if finite {
            memory[h_dst..h_dst + n].copy_from_slice(&self.next[..n]);
            memory[c_dst..c_dst + n].copy_from_slice(&self.next[n..]);
        } else {
            memory[h_dst..h_dst + n].fill(0.0);
            memory[c_dst..c_dst + n].fill(0.0);
        }
        finite
    }
}
