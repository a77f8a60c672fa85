//! Mechanism analyses on models whose answers are known by construction: a tiny Llama whose
//! layer-1 heads copy (h1.0) and map each token to its successor (h1.1), with zero query and key
//! weights (uniform attention) and blocks that write nothing else; and the random-weight
//! fixtures, against by-hand computations.

mod common;

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use circuit_sweep_common::Component;
use circuit_sweep_common::analysis::lens;
use circuit_sweep_common::analysis::token_sets::OvProbe;
use circuit_sweep_worker::analysis::{attention, generate, lens as wlens, ov};
use circuit_sweep_worker::{
    Activations, Capture, HookedModel, LoadOptions, RunRequest, Start, load_model,
};
use common::*;

const V: usize = 8;
const D: usize = 16;
const DH: usize = 8;

fn succ(t: usize) -> usize {
    (t + 1) % V
}

/// Writes the tiny Llama into `dir`: one-hot embeddings and unembeddings of 8 tokens in a
/// 16-wide stream, block 0 writing nothing, and in block 1 a copy head (h1.0, weight 0.5) and a
/// successor head (h1.1, weight 1) over uniform attention.
fn tiny_llama(dir: &Path) -> HookedModel {
    let dev = Device::Cpu;
    let zeros = |r: usize, c: usize| vec![0f32; r * c];
    let t = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &dev).unwrap();
    let mut w = std::collections::HashMap::new();
    let mut embed = zeros(V, D);
    for i in 0..V {
        embed[i * D + i] = 1.0;
    }
    w.insert(
        "model.embed_tokens.weight".to_string(),
        t(embed.clone(), &[V, D]),
    );
    w.insert("lm_head.weight".to_string(), t(embed, &[V, D]));
    w.insert("model.norm.weight".to_string(), t(vec![1.0; D], &[D]));
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        let mut v = zeros(2 * DH, D);
        let mut o = zeros(D, 2 * DH);
        if l == 1 {
            for i in 0..V {
                v[i * D + i] = 1.0; // head 0: u_i <- e_i
                v[(DH + i) * D + i] = 1.0; // head 1
                o[i * 2 * DH + i] = 0.5; // head 0 copies
                o[succ(i) * 2 * DH + DH + i] = 1.0; // head 1 writes the successor
            }
        }
        for (name, tensor) in [
            ("input_layernorm.weight", t(vec![1.0; D], &[D])),
            ("post_attention_layernorm.weight", t(vec![1.0; D], &[D])),
            ("self_attn.q_proj.weight", t(zeros(2 * DH, D), &[2 * DH, D])),
            ("self_attn.k_proj.weight", t(zeros(2 * DH, D), &[2 * DH, D])),
            ("self_attn.v_proj.weight", t(v, &[2 * DH, D])),
            ("self_attn.o_proj.weight", t(o, &[D, 2 * DH])),
            ("mlp.gate_proj.weight", t(zeros(8, D), &[8, D])),
            ("mlp.up_proj.weight", t(zeros(8, D), &[8, D])),
            ("mlp.down_proj.weight", t(zeros(D, 8), &[D, 8])),
        ] {
            w.insert(format!("{p}.{name}"), tensor);
        }
    }
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": V, "hidden_size": D, "intermediate_size": 8,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
        "head_dim": DH, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "max_position_embeddings": 64
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    load_model(dir, &LoadOptions::default()).unwrap().model
}

fn tiny() -> (tempfile::TempDir, HookedModel) {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_llama(dir.path());
    (dir, m)
}

#[test]
fn a_successor_head_scores_100_and_a_copy_head_copies() {
    let (_d, model) = tiny();
    let members: Vec<u32> = (0..V as u32).collect();
    // Window prompts of four members, the paper's way; token 7's successor wraps to 0, so
    // make the set cyclic by listing 0 again at the end.
    let mut cyc = members.clone();
    cyc.push(0);
    let prompts: Vec<Vec<u32>> = (0..5).map(|s| (s..s + 4).collect()).collect();
    let probe = OvProbe::from_ids(prompts, &cyc);
    let s = ov::ov_scores(&model, &probe, 1, 1).unwrap();
    assert_eq!(s.occurrences, 20);
    assert_eq!(
        s.successor[1],
        vec![0.0, 100.0],
        "successor scores of layer 1"
    );
    assert_eq!(s.copy[1], vec![100.0, 0.0], "copy scores of layer 1");
    // Block 0 writes nothing through its OV circuits: whatever its top token, never 100 %.
    assert!(s.successor[0].iter().all(|&x| x < 100.0));
    // With k = V every token is in the top-k.
    let all = ov::ov_scores(&model, &probe, V, 1).unwrap();
    assert!(all.successor.iter().flatten().all(|&x| x == 100.0));
}

/// A word-level tokenizer of `<s>`, the letters `A` .. `Z` (ids 1 ..) and `[UNK]` in `dir`, whose post-processor
/// prepends `<s>` when `bos` (as Llama-2's does) and adds nothing otherwise.
fn letters_tokenizer(dir: &Path, bos: bool) -> circuit_sweep_worker::PromptTokenizer {
    let vocab: serde_json::Map<String, serde_json::Value> = std::iter::once("<s>".to_string())
        .chain(('A'..='Z').map(String::from))
        .chain(std::iter::once("[UNK]".to_string()))
        .enumerate()
        .map(|(i, t)| (t, serde_json::json!(i)))
        .collect();
    let seq = serde_json::json!({"Sequence": {"id": "A", "type_id": 0}});
    let special = serde_json::json!({"SpecialToken": {"id": "<s>", "type_id": 0}});
    let post = if bos {
        serde_json::json!({"type": "TemplateProcessing", "single": [special, seq],
            "pair": [special, seq, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}})
    } else {
        serde_json::Value::Null
    };
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": post,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"bos_token": "<s>"}"#).unwrap();
    circuit_sweep_worker::PromptTokenizer::from_folder(dir).unwrap()
}

#[test]
fn ov_probes_start_with_bos_exactly_when_the_tokenizer_adds_one() {
    use circuit_sweep_common::analysis::token_sets::TokenSet;
    let dir = tempfile::tempdir().unwrap();
    let with = letters_tokenizer(dir.path(), true);
    assert!(with.adds_bos());
    let probe = OvProbe::new(TokenSet::Letters, 4, &with).unwrap();
    assert_eq!(probe.prompts.len(), 23);
    assert!(probe.skipped.is_empty());
    // Window s is `<s>` then letters s .. s+3 (ids s+1 ..); member s+j is read at j + 1.
    for (s, ids) in probe.prompts.iter().enumerate() {
        let s = s as u32;
        assert_eq!(ids, &[0, s + 1, s + 2, s + 3, s + 4]);
    }
    assert_eq!(probe.occurrences.len(), 23 * 4);
    for o in &probe.occurrences {
        assert_eq!(o.position, o.member - o.prompt + 1);
        assert_eq!(probe.prompts[o.prompt][o.position], o.member as u32 + 1);
    }
    // Without a BOS the prompts are the plain ids, members from position 0.
    let without = letters_tokenizer(dir.path(), false);
    assert!(!without.adds_bos());
    let plain = OvProbe::new(TokenSet::Letters, 4, &without).unwrap();
    for (p, b) in plain.prompts.iter().zip(&probe.prompts) {
        assert_eq!(p.as_slice(), &b[1..]);
    }
    for o in &plain.occurrences {
        assert_eq!(o.position, o.member - o.prompt);
    }
}

#[test]
fn zero_query_and_key_weights_attend_uniformly() {
    let (_d, model) = tiny();
    let ids = [1u32, 5, 2, 7, 3];
    let ps = attention::patterns(&model, &ids, &[(0, 1), (1, 0)]).unwrap();
    for p in &ps {
        for (i, row) in p.weights.iter().enumerate() {
            for (j, &w) in row.iter().enumerate() {
                let want = if j <= i { 1.0 / (i + 1) as f32 } else { 0.0 };
                assert!(
                    (w - want).abs() < 1e-6,
                    "h{}.{} [{i}][{j}] = {w}",
                    p.layer,
                    p.head
                );
            }
        }
    }
    let off = attention::last_position_offsets(&[&ps[0]]);
    assert_eq!(off.len(), 5);
    assert!(off.iter().all(|&w| (w - 0.2).abs() < 1e-6));
    assert!(attention::patterns(&model, &ids, &[(2, 0)]).is_err());
}

/// LayerNorm over the last dim, by hand.
fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let mean = x.mean_keepdim(1).unwrap();
    let c = x.broadcast_sub(&mean).unwrap();
    let var = c.sqr().unwrap().mean_keepdim(1).unwrap();
    c.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(w)
        .unwrap()
        .broadcast_add(b)
        .unwrap()
}

#[test]
#[allow(clippy::needless_range_loop)]
fn gpt2_patterns_equal_a_by_hand_softmax_of_its_queries_and_keys() {
    let m = load_fixture("gpt2");
    let model = &m.model;
    let w = candle_core::safetensors::load(
        fixtures().join("models/gpt2/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ids = id_rows(&expected("gpt2")["input_ids"])[0].clone();
    let t = ids.len();
    let out = model
        .run(&RunRequest {
            capture: Capture {
                resid: true,
                pattern: true,
                ..Default::default()
            },
            ..RunRequest::new(Start::Tokens(
                model.tokens(std::slice::from_ref(&ids)).unwrap(),
            ))
        })
        .unwrap();
    let (d, h) = (64, 4);
    let dh = d / h;
    for layer in 0..3 {
        let x = out.captured.resid[layer].as_ref().unwrap().i(0).unwrap();
        let g = |n: &str| w[&format!("transformer.h.{layer}.{n}")].clone();
        let hx = layer_norm(&x, &g("ln_1.weight"), &g("ln_1.bias"));
        let qkv = hx
            .matmul(&g("attn.c_attn.weight"))
            .unwrap()
            .broadcast_add(&g("attn.c_attn.bias"))
            .unwrap();
        let got = out.captured.pattern[layer].as_ref().unwrap();
        for head in 0..h {
            let q = qkv.narrow(1, head * dh, dh).unwrap();
            let k = qkv.narrow(1, d + head * dh, dh).unwrap();
            let s = (q.matmul(&k.t().unwrap()).unwrap() / (dh as f64).sqrt())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for i in 0..t {
                let row: Vec<f32> = (0..=i).map(|j| s[i][j]).collect();
                let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let z: f32 = row.iter().map(|v| (v - mx).exp()).sum();
                let want: Vec<f32> = (0..t)
                    .map(|j| {
                        if j <= i {
                            (s[i][j] - mx).exp() / z
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let have = got.i((0, head, i)).unwrap().to_vec1::<f32>().unwrap();
                for j in 0..t {
                    assert!(
                        (have[j] - want[j]).abs() < 1e-5,
                        "layer {layer} head {head} [{i}][{j}]: {} vs {}",
                        have[j],
                        want[j]
                    );
                }
            }
        }
    }
}

#[test]
fn the_logit_lens_sees_the_successor_appear_in_layer_1() {
    let (_d, model) = tiny();
    let prompts = vec![vec![3u32; 4], vec![6u32; 5]];
    let rows = wlens::logit_lens(&model, &prompts, &[4, 7]).unwrap();
    // After block 0 the stream is the embedding; block 1 writes the successor (weight 1 * 4)
    // over the copy (0.5 * 4) and the embedding (1).
    assert_eq!(rows[0].top, vec![3, 4]);
    assert_eq!(rows[1].top, vec![6, 7]);
    assert_eq!(rows[0].rank, vec![1, 0]);
    let hits: Vec<Vec<bool>> = rows
        .iter()
        .map(|r| r.rank.iter().map(|&k| k == 0).collect())
        .collect();
    let c = lens::counts(&hits, 2);
    assert_eq!(c.first, vec![0, 2]);
    assert_eq!(c.stays, vec![0, 2]);
}

#[test]
fn the_last_layer_of_the_lens_is_the_models_own_prediction() {
    for name in ["gpt2", "llama", "neox"] {
        let m = load_fixture(name);
        let rows = id_rows(&expected(name)["input_ids"]);
        let answers = vec![0u32; rows.len()];
        let lensed = wlens::logit_lens(&m.model, &rows, &answers).unwrap();
        let last = m.model.last_logits(&rows, 8).unwrap();
        for (l, r) in lensed.iter().zip(&last) {
            let top = circuit_sweep_worker::analysis::top_k(r, 1)[0];
            assert_eq!(*l.top.last().unwrap(), top, "{name}");
        }
    }
}

/// Mean-like position-independent values: the mean over prompts and positions of a run.
fn flat_means(model: &HookedModel, rows: &[Vec<u32>]) -> Activations {
    let out = model
        .run(&RunRequest {
            capture: Capture::all(),
            ..RunRequest::new(Start::Tokens(model.tokens(rows).unwrap()))
        })
        .unwrap();
    let a = Activations::from_captured(&out.captured).unwrap();
    let m = |t: &Tensor| t.mean_keepdim(0).unwrap().mean_keepdim(1).unwrap();
    Activations {
        z: a.z.iter().map(m).collect(),
        mlp: a.mlp.iter().map(m).collect(),
        embed: m(&a.embed),
    }
}

#[test]
fn generation_with_a_kv_cache_equals_rerunning_the_whole_sequence() {
    for name in ["gpt2", "llama", "neox", "neox_sequential"] {
        let m = load_fixture(name);
        let model = &m.model;
        let rows: Vec<Vec<u32>> = id_rows(&expected(name)["input_ids"])
            .into_iter()
            .map(|r| r[..5].to_vec())
            .collect();
        let values = flat_means(model, &rows);
        let variants = vec![
            vec![],
            vec![
                Component::Head { layer: 1, head: 2 },
                Component::Mlp { layer: 0 },
            ],
            vec![Component::Head { layer: 2, head: 0 }],
        ];
        let cached = generate::generate(model, &rows, &values, &variants, 6).unwrap();
        let plain = generate::generate_uncached(model, &rows, &values, &variants, 6).unwrap();
        assert_eq!(cached, plain, "{name}");
        assert_eq!(cached[0].len(), rows.len());
        assert!(cached.iter().flatten().all(|r| r.len() == 6));
        // Variant 0 ablates nothing: the model's own greedy continuation.
        let zeros = Activations::zeros(model.info(), 1, DType::F32, model.device()).unwrap();
        let own = generate::generate(model, &rows, &zeros, &[vec![]], 6).unwrap();
        assert_eq!(own[0], cached[0], "{name}");
    }
}

#[test]
fn ablating_the_successor_head_turns_generation_into_copying() {
    let (_d, model) = tiny();
    let zeros = Activations::zeros(model.info(), 1, DType::F32, model.device()).unwrap();
    let variants = vec![
        vec![],
        vec![Component::Head { layer: 1, head: 1 }],
        vec![Component::Head { layer: 1, head: 0 }],
    ];
    let out = generate::generate(&model, &[vec![3u32; 4]], &zeros, &variants, 1).unwrap();
    assert_eq!(out, vec![vec![vec![4]], vec![vec![3]], vec![vec![4]]]);
    // Per-position values are refused: generated positions have none.
    let per_pos = Activations::zeros(model.info(), 4, DType::F32, model.device()).unwrap();
    assert!(generate::generate(&model, &[vec![3u32; 4]], &per_pos, &variants, 1).is_err());
}

#[test]
fn a_circuit_of_every_component_scores_100_and_others_match_the_evaluator() {
    use circuit_sweep_common::spec::AblationSpec;
    use circuit_sweep_worker::Evaluator;
    use circuit_sweep_worker::analysis::cross_task::score_circuits;
    for name in ["gpt2", "llama", "neox"] {
        let m = load_fixture(name);
        let info = m.model.info();
        let prompts = fixture_prompts(name);
        let all = Component::all(info.n_layers, info.n_heads);
        let small = vec![all[0], all[all.len() - 1]];
        let s = score_circuits(
            &m.model,
            &prompts,
            AblationSpec::default(),
            &[all.clone(), small.clone()],
            4096,
        )
        .unwrap();
        // Nothing ablated (up to the last bits of the mean over prompts).
        assert!((s[0] - 100.0).abs() < 1e-9, "{name}: {}", s[0]);
        // The circuit's score is the evaluator's score of ablating everything else.
        let ev = Evaluator::new(&m.model, &prompts, AblationSpec::default(), 4096).unwrap();
        let rest: Vec<Component> = all.iter().filter(|c| !small.contains(c)).copied().collect();
        assert_eq!(s[1], ev.scores(&[rest]).unwrap()[0], "{name}");
        assert_ne!(s[1], 100.0, "{name}");
    }
}
