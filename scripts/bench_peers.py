"""The peers' side of scripts/bench-peers.sh: models made for both tools, and the naive loops.

`prepare-smollm2 GGUF DIR`: the default model's GGUF dequantized into a Hugging Face folder (f32),
so both tools read the same weights.
`prepare-gpt2 DIR`: a GPT-2-small-shaped model with random weights (seeded), with the GPT-2
tokenizer the repository ships.
`naive DIR DATA CHECK RESULT`: one forward pass of all prompts per component with the
`transformers` model, a hook replacing the component's output by its per-position mean over the
corrupt prompts (heads: the head's slice of the attention output before the output projection).
`lens DIR DATA CHECK RESULT`: the same loop with TransformerLens (`hook_z` and `hook_mlp_out`).
Each prints one JSON line: seconds, components, and how far its scores are from circuit-sweep's.
`naive` runs on DEVICE (default cpu) in DTYPE (default float32); with LIMIT=N it times only the
first N components and gives the whole loop's time extrapolated from them.
"""

import json
import shutil
import sys
import time
from pathlib import Path

import torch

import os

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
DEVICE = torch.device(os.environ.get("DEVICE", "cpu"))
DTYPE = getattr(torch, os.environ.get("DTYPE", "float32"))
LIMIT = int(os.environ.get("LIMIT", "0"))


def prepare_smollm2(gguf, out):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF's tokenizer prepends no BOS; the converted one would.
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, add_bos_token=False)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def prepare_gpt2(out, tokenizer_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, Path(out) / f.name)


def load_data(data, check, tok):
    """Clean and corrupt ids ([n, t]), answer and wrong ids, as circuit-sweep tokenizes them."""
    pairs = [json.loads(line) for line in open(data) if line.strip()]
    checked = json.load(open(check))["prompts"]
    clean = [tok(p["clean"]).input_ids for p in pairs]
    corrupt = [tok(p["corrupt"]).input_ids for p in pairs]
    for c, k, row in zip(clean, corrupt, checked):
        assert len(c) == row["clean_tokens"] and len(k) == row["corrupt_tokens"], row
    answer = torch.tensor([row["answer_ids"][0] for row in checked])
    wrong = torch.tensor([row["wrong_ids"][0] for row in checked])
    return torch.tensor(clean), torch.tensor(corrupt), answer, wrong


def logit_diff(logits, answer, wrong):
    last = logits[:, -1, :]
    rows = torch.arange(len(answer))
    return (last[rows, answer] - last[rows, wrong]).mean().item()


def ours(result):
    r = json.load(open(result))
    return [v for row in r["nodes"]["heads"] for v in row] + r["nodes"]["mlps"]


def report(name, seconds, scores, result, full, total=None):
    """`result` is circuit-sweep's result.json on the same data, or "-" for none."""
    ref = ours(result) if result != "-" else None
    r = json.load(open(result)) if result != "-" else {"full": None}
    total = total or len(scores)
    print(
        json.dumps(
            {
                "tool": name,
                "device": str(DEVICE),
                "dtype": str(DTYPE).removeprefix("torch."),
                "seconds": seconds * total / len(scores),
                "timed_components": len(scores),
                "components": total,
                "full": full,
                "full_ours": r["full"],
                "max_abs_diff_pp": None
                if ref is None
                else max(abs(a - b) for a, b in zip(scores, ref)),
            }
        )
    )


@torch.inference_mode()
def naive(model_dir, data, check, result):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    # Straight onto the device: a 7B model staged on the CPU first takes twice as long.
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=DTYPE, device_map=None if DEVICE.type == "cpu" else str(DEVICE)
    ).eval()
    clean, corrupt, answer, wrong = (t.to(DEVICE) for t in load_data(data, check, tok))
    cfg = model.config
    n_heads = cfg.num_attention_heads
    d_head = cfg.hidden_size // n_heads
    gpt2 = cfg.model_type == "gpt2"
    blocks = model.transformer.h if gpt2 else model.model.layers

    def o_proj(b):
        return b.attn.c_proj if gpt2 else b.self_attn.o_proj

    start = time.perf_counter()
    # Per-position means over the corrupt prompts: the input of each output projection, and
    # each MLP's output.
    z_mean, mlp_mean, hooks = {}, {}, []
    for i, b in enumerate(blocks):
        hooks.append(
            o_proj(b).register_forward_pre_hook(
                lambda m, a, i=i: z_mean.__setitem__(i, a[0].mean(0))
            )
        )
        hooks.append(
            b.mlp.register_forward_hook(lambda m, a, o, i=i: mlp_mean.__setitem__(i, o.mean(0)))
        )
    model(corrupt)
    for h in hooks:
        h.remove()
    full = logit_diff(model(clean).logits, answer, wrong)

    scores = []
    total = len(blocks) * (n_heads + 1)
    limit = LIMIT or total
    for layer, b in enumerate(blocks):
        for head in range(n_heads):
            if len(scores) >= limit:
                break
            cols = slice(head * d_head, (head + 1) * d_head)

            def replace(m, a, layer=layer, cols=cols):
                x = a[0].clone()
                x[..., cols] = z_mean[layer][..., cols]
                return (x,)

            h = o_proj(b).register_forward_pre_hook(replace)
            scores.append(100 * logit_diff(model(clean).logits, answer, wrong) / full)
            h.remove()
    for layer, b in enumerate(blocks):
        if len(scores) >= limit:
            break
        h = b.mlp.register_forward_hook(
            lambda m, a, o, layer=layer: mlp_mean[layer].expand_as(o).clone()
        )
        scores.append(100 * logit_diff(model(clean).logits, answer, wrong) / full)
        h.remove()
    report("transformers", time.perf_counter() - start, scores, result, full, total)


@torch.inference_mode()
def lens(model_dir, data, check, result):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    c = hf.config
    assert c.model_type == "gpt2", "the TransformerLens loop runs the GPT-2 shape"
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        n_heads=c.n_head,
        d_model=c.n_embd,
        d_head=c.n_embd // c.n_head,
        d_mlp=4 * c.n_embd,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        act_fn="gelu_new",
        normalization_type="LN",
        device="cpu",
    )
    model = HookedTransformer(cfg)
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    model.eval()
    clean, corrupt, answer, wrong = load_data(data, check, tok)

    start = time.perf_counter()
    _, cache = model.run_with_cache(
        corrupt, names_filter=lambda n: n.endswith("hook_z") or n.endswith("hook_mlp_out")
    )
    full = logit_diff(model(clean), answer, wrong)
    scores = []
    for layer in range(cfg.n_layers):
        mean = cache[f"blocks.{layer}.attn.hook_z"].mean(0)
        for head in range(cfg.n_heads):

            def hook(z, hook, head=head, mean=mean):
                z[:, :, head, :] = mean[:, head, :]
                return z

            logits = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
            scores.append(100 * logit_diff(logits, answer, wrong) / full)
    for layer in range(cfg.n_layers):
        mean = cache[f"blocks.{layer}.hook_mlp_out"].mean(0)

        def hook(x, hook, mean=mean):
            return mean.expand_as(x).clone()

        logits = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", hook)])
        scores.append(100 * logit_diff(logits, answer, wrong) / full)
    report("transformer_lens", time.perf_counter() - start, scores, result, full)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {
        "prepare-smollm2": prepare_smollm2,
        "prepare-gpt2": prepare_gpt2,
        "naive": naive,
        "lens": lens,
    }[cmd](*args)
