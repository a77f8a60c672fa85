#!/usr/bin/env python3
"""Generate reference fixtures for circuit-sweep's model-loading / forward-pass tests.

What it makes (everything under ``tests/fixtures/``):

1. ``tests/fixtures/models/<name>/`` for five tiny random-weight models built from
   configs written in this file (nothing is downloaded):

   ``gpt2``             GPT2LMHeadModel (gelu_new, learned positions, tied lm_head)
   ``llama``            LlamaForCausalLM, grouped-query attention (8 q heads, 2 kv heads),
                        tied embeddings, rope theta 100000
   ``llama3_sharded``   LlamaForCausalLM, untied, hidden 48 with 4 heads x head_dim 16
                        (hidden != heads*head_dim), "llama3" rope scaling, saved sharded
                        (model-0000x-of-0000y.safetensors + model.safetensors.index.json)
   ``neox``             GPTNeoXForCausalLM, parallel residual, rotary on 25% of head_dim
   ``neox_sequential``  GPTNeoXForCausalLM, sequential residual, rotary on 50% of head_dim

   Each folder holds what ``save_pretrained(safe_serialization=True)`` writes (minus
   generation_config.json) plus ``expected.safetensors`` with:

   ``input_ids``    [3, 7] int64   random ids (fixed seed), no BOS, no attention mask
   ``logits_last``  [3, vocab]     logits at the last position
   ``logits_all``   [3, 7, vocab]  logits at every position
   ``resid.{l}``    [3, 7, d_model]            input of block l (hidden_states[l])
   ``z.{l}``        [3, 7, n_heads, head_dim]  input of the attention output projection
                    (GPT-2 attn.c_proj, Llama self_attn.o_proj, NeoX attention.dense),
                    split per query head
   ``mlp.{l}``      [3, 7, d_model]            output of block l's MLP module

   All weights are float32; every parameter is re-initialised with N(0, 0.2) (norm
   weights with 1 + N(0, 0.2)) so that implementation mistakes show up clearly.

2. ``tests/fixtures/smollm2/`` (only if the GGUF file exists): ``reference.json`` and
   ``reference.safetensors`` with tokenisation and last-position logits of
   SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to f32 by transformers' GGUF loader)
   for a few prompts, plus the GGUF tokenizer / llama metadata.

How to run (from the repository root; transformers needs `accelerate` to load GGUF):

    pip install torch transformers gguf safetensors accelerate
    python scripts/make_fixtures.py [--smollm2-gguf PATH]

The default GGUF path is models/SmolLM2-135M-Instruct.Q4_1.gguf (where `circuit-sweep model fetch` puts it);
if it is absent that part is skipped with a message. The output is deterministic
(torch.manual_seed per model). Works with transformers 4.4x (rope_theta/rope_scaling/
rotary_pct config keys) and 5.x (rope_parameters dict).
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DEFAULT_GGUF = "models/SmolLM2-135M-Instruct.Q4_1.gguf"

VOCAB = 96
BATCH, SEQ = 3, 7
INIT_STD = 0.2
MIN_LOGIT_STD = 0.5

# transformers >= 5 keeps all rope settings in a `rope_parameters` dict.
NEW_ROPE_API = hasattr(transformers.LlamaConfig(), "rope_parameters")
# `torch_dtype=` was renamed `dtype=` (4.56); the old name warns on 5.x.
_TV = tuple(int(x) for x in transformers.__version__.split(".")[:2])
DTYPE_KW = "dtype" if _TV >= (4, 56) else "torch_dtype"


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------

def rope_kwargs(theta, scaling=None, partial=None, neox=False):
    """Config kwargs for rope settings in the style this transformers version expects."""
    if NEW_ROPE_API:
        params = {"rope_type": "default", "rope_theta": float(theta)}
        if scaling:
            params.update(scaling)
        if partial is not None:
            params["partial_rotary_factor"] = float(partial)
        return {"rope_parameters": params}
    kw = {}
    if neox:
        kw["rotary_emb_base"] = theta
        if partial is not None:
            kw["rotary_pct"] = partial
    else:
        kw["rope_theta"] = theta
        if scaling:
            kw["rope_scaling"] = dict(scaling)
    return kw


def make_configs():
    common = dict(bos_token_id=0, eos_token_id=1, pad_token_id=None)
    cfgs = {}
    cfgs["gpt2"] = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=3, n_head=4,
        activation_function="gelu_new", tie_word_embeddings=True,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
    )
    cfgs["llama"] = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True,
        rms_norm_eps=1e-5, max_position_embeddings=32, hidden_act="silu",
        **rope_kwargs(100000.0), **common,
    )
    cfgs["llama3_sharded"] = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, tie_word_embeddings=False,
        rms_norm_eps=1e-5, max_position_embeddings=32, hidden_act="silu",
        **rope_kwargs(100000.0, scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8,
        }),
        **common,
    )
    for name, parallel, pct in (("neox", True, 0.25), ("neox_sequential", False, 0.5)):
        cfgs[name] = transformers.GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=128, hidden_act="gelu", use_parallel_residual=parallel,
            tie_word_embeddings=False, max_position_embeddings=32, layer_norm_eps=1e-5,
            hidden_dropout=0.0, attention_dropout=0.0,
            **rope_kwargs(10000.0, partial=pct, neox=True), **common,
        )
    return cfgs


MODEL_CLASSES = {
    "gpt2": transformers.GPT2LMHeadModel,
    "llama": transformers.LlamaForCausalLM,
    "llama3_sharded": transformers.LlamaForCausalLM,
    "neox": transformers.GPTNeoXForCausalLM,
    "neox_sequential": transformers.GPTNeoXForCausalLM,
}
SEEDS = {"gpt2": 1001, "llama": 1002, "llama3_sharded": 1003, "neox": 1004, "neox_sequential": 1005}


def blocks_of(model):
    if isinstance(model, transformers.GPT2LMHeadModel):
        return model.transformer.h
    if isinstance(model, transformers.LlamaForCausalLM):
        return model.model.layers
    if isinstance(model, transformers.GPTNeoXForCausalLM):
        return model.gpt_neox.layers
    raise TypeError(type(model))


def out_proj_of(block):
    if hasattr(block, "attn"):  # GPT-2
        return block.attn.c_proj
    if hasattr(block, "self_attn"):  # Llama
        return block.self_attn.o_proj
    return block.attention.dense  # NeoX


def head_shape(cfg):
    if cfg.model_type == "gpt2":
        return cfg.n_head, cfg.n_embd // cfg.n_head
    n = cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // n
    return n, hd


def is_norm(module):
    name = type(module).__name__
    return isinstance(module, torch.nn.LayerNorm) or "RMSNorm" in name or "LayerNorm" in name


@torch.no_grad()
def reinit(model, std, seed):
    torch.manual_seed(seed)
    norm_weights = set()
    for m in model.modules():
        if is_norm(m) and getattr(m, "weight", None) is not None:
            norm_weights.add(id(m.weight))
    for _, p in model.named_parameters():  # tied parameters appear once
        p.normal_(0.0, std)
        if id(p) in norm_weights:
            p.add_(1.0)


@torch.no_grad()
def run_model(model, input_ids):
    cfg = model.config
    n_heads, head_dim = head_shape(cfg)
    z, mlp = {}, {}
    handles = []
    for l, block in enumerate(blocks_of(model)):
        def pre_hook(mod, args, kwargs, l=l):
            x = args[0] if args else next(iter(kwargs.values()))
            z[l] = x.detach().reshape(x.shape[0], x.shape[1], n_heads, head_dim).clone()
        def mlp_hook(mod, args, output, l=l):
            out = output[0] if isinstance(output, tuple) else output
            mlp[l] = out.detach().clone()
        handles.append(out_proj_of(block).register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(block.mlp.register_forward_hook(mlp_hook))
    try:
        out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    n_layers = len(blocks_of(model))
    tensors = {
        "input_ids": input_ids.to(torch.int64).contiguous(),
        "logits_last": out.logits[:, -1, :].float().contiguous(),
        "logits_all": out.logits.float().contiguous(),
    }
    for l in range(n_layers):
        tensors[f"resid.{l}"] = out.hidden_states[l].float().contiguous()
        tensors[f"z.{l}"] = z[l].float().contiguous()
        tensors[f"mlp.{l}"] = mlp[l].float().contiguous()
    return tensors


def build_model(name, cfg):
    seed = SEEDS[name]
    cls = MODEL_CLASSES[name]
    cfg._attn_implementation = "eager"
    std = INIT_STD
    while True:
        torch.manual_seed(seed)
        model = cls(cfg).to(torch.float32).eval()
        model.config._attn_implementation = "eager"
        reinit(model, std, seed)
        g = torch.Generator().manual_seed(seed + 7)
        input_ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=g, dtype=torch.int64)
        tensors = run_model(model, input_ids)
        logit_std = tensors["logits_all"].std().item()
        if logit_std > MIN_LOGIT_STD:
            return model, tensors, std, logit_std
        print(f"  {name}: logits std {logit_std:.3f} with init std {std}; raising", flush=True)
        std *= 1.5


def make_models():
    out_root = FIXTURES / "models"
    summary = {}
    for name, cfg in make_configs().items():
        model, tensors, std, logit_std = build_model(name, cfg)
        d = out_root / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        kw = {"safe_serialization": True}
        if name == "llama3_sharded":
            kw["max_shard_size"] = "200KB"
        try:
            model.save_pretrained(d, **kw)
        except TypeError:  # newer versions dropped safe_serialization (always safetensors)
            kw.pop("safe_serialization")
            model.save_pretrained(d, **kw)
        gen = d / "generation_config.json"
        if gen.exists():
            gen.unlink()
        shards = sorted(p.name for p in d.glob("*.safetensors"))
        if name == "llama3_sharded":
            assert len(shards) >= 2 and (d / "model.safetensors.index.json").exists(), shards
        save_file(tensors, str(d / "expected.safetensors"))

        # Round-trip check: reload from disk and make sure logits match.
        reloaded = MODEL_CLASSES[name].from_pretrained(d, **{DTYPE_KW: torch.float32},
                                                       attn_implementation="eager").eval()
        with torch.no_grad():
            lg = reloaded(input_ids=tensors["input_ids"], use_cache=False).logits
        diff = (lg - tensors["logits_all"]).abs().max().item()
        assert diff < 1e-3, (name, diff)
        summary[name] = {"init_std": std, "logits_std": round(logit_std, 4), "files": shards,
                         "reload_max_abs_diff": diff}
        print(f"{name}: init std {std}, logits std {logit_std:.3f}, files {shards}, reload diff {diff:.2e}")
    return summary


# --------------------------------------------------------------------------------------
# SmolLM2 reference from GGUF
# --------------------------------------------------------------------------------------

PROMPTS = ["1 2 3 4 ", "1 2 3 4", "January February March April ",
           "She was born in March. He was born in April. They were born in"]
BIG_TOKENIZER_KEYS = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                      "tokenizer.ggml.token_type", "tokenizer.ggml.scores"}


def gguf_field_value(field):
    import gguf
    types = list(field.types)
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        vals = [field.parts[i] for i in field.data]
        if len(types) > 1 and types[1] == gguf.GGUFValueType.STRING:
            return [bytes(v).decode("utf-8", "replace") for v in vals]
        return [v.tolist()[0] if len(v) == 1 else v.tolist() for v in vals]
    v = field.parts[field.data[0]]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(v).decode("utf-8", "replace")
    v = v.tolist()
    return v[0] if len(v) == 1 else v


def gguf_metadata(path):
    import gguf
    reader = gguf.GGUFReader(path)
    meta = {}
    for key, field in reader.fields.items():
        if key in BIG_TOKENIZER_KEYS:
            meta[key] = f"<array of {len(field.data)}>"
        elif key.startswith("tokenizer.ggml.") or key == "general.architecture" or key.startswith("llama."):
            meta[key] = gguf_field_value(field)
    return meta


def make_smollm2(gguf_path):
    if not gguf_path or not os.path.isfile(gguf_path):
        print(f"smollm2: GGUF file {gguf_path!r} not found; skipping the SmolLM2 reference")
        return None
    folder, name = os.path.split(os.path.abspath(gguf_path))
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, attn_implementation="eager", **{DTYPE_KW: torch.float32}).eval()
    cfg = model.config

    def tok_info(text):
        enc = tok(text, add_special_tokens=True)["input_ids"]
        raw = tok(text, add_special_tokens=False)["input_ids"]
        return {"text": text, "ids": enc, "ids_without_special": raw,
                "tokens": tok.convert_ids_to_tokens(enc),
                "pieces": [tok.decode([i]) for i in enc]}

    out_dir = FIXTURES / "smollm2"
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors, prompts = {}, []
    for i, text in enumerate(PROMPTS):
        info = tok_info(text)
        ids = torch.tensor([info["ids"]], dtype=torch.int64)
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0, -1].float()
        probs = torch.softmax(logits, dim=-1)
        top = torch.topk(probs, 10)
        info["added_bos"] = bool(tok.bos_token_id is not None and info["ids"]
                                 and info["ids"][0] == tok.bos_token_id
                                 and info["ids"] != info["ids_without_special"])
        info["top10"] = [{"id": int(j), "token": tok.decode([int(j)]),
                          "prob": float(probs[j]), "logit": float(logits[j])}
                         for j in top.indices.tolist()]
        prompts.append(info)
        tensors[f"logits_last.{i}"] = logits.contiguous()
        tensors[f"input_ids.{i}"] = ids[0].contiguous()
        t1 = info["top10"][0]
        print(f"smollm2 prompt {i} {text!r}: ids {info['ids']} top1 {t1['token']!r} p={t1['prob']:.4f}")

    rope = getattr(cfg, "rope_parameters", None)
    derived = {
        "transformers_version": transformers.__version__,
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", None),
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": (rope or {}).get("rope_theta", getattr(cfg, "rope_theta", None)),
        "rope_parameters": rope,
        "rope_scaling": getattr(cfg, "rope_scaling", None) if rope is None else None,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "lm_head_is_embed": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
    }
    tokenizer_info = {
        "class": type(tok).__name__,
        "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
        "add_bos_token": getattr(tok, "add_bos_token", None),
        "digit_probe": {t: tok_info(t) for t in ["1 2 3 4 ", "12 345", " 5", "2024"]},
    }
    ref = {
        "source": os.path.basename(gguf_path),
        "note": "Generated by scripts/make_fixtures.py with transformers GGUF loading (dequantised to f32).",
        "tokenizer": tokenizer_info,
        "config": derived,
        "gguf_metadata": gguf_metadata(gguf_path),
        "prompts": prompts,
    }
    with open(out_dir / "reference.json", "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
        f.write("\n")
    save_file(tensors, str(out_dir / "reference.safetensors"))
    return ref


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smollm2-gguf", default=DEFAULT_GGUF, help="path of SmolLM2-135M-Instruct GGUF")
    ap.add_argument("--skip-models", action="store_true", help="only make the SmolLM2 reference")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    # One thread: multi-threaded CPU reductions can differ in the last bits between runs.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"rope API: {'rope_parameters' if NEW_ROPE_API else 'rope_theta/rope_scaling'}")
    if not args.skip_models:
        make_models()
    make_smollm2(args.smollm2_gguf)


if __name__ == "__main__":
    sys.exit(main())
