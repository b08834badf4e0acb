"""Build CLIP BPE tokenizer folders offline.

The OpenAI CLIP byte-level BPE merges list ships inside the open_clip_torch wheel
(open_clip/bpe_simple_vocab_16e6.txt.gz). From it this module writes folders that
transformers' CLIPTokenizer / CLIPTokenizerFast (and therefore diffusers) load:

    vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json

* write_full(dst)       -> the real 49408-token CLIP vocabulary (ids identical to OpenAI CLIP)
* write_truncated(dst)  -> a small vocabulary for tiny random text encoders:
                           256 byte symbols, their "</w>" forms, the first merges, then
                           <|startoftext|> and <|endoftext|> as the last two ids.

SD 1.x tokenizers pad with "<|endoftext|>", SD 2.x tokenizers pad with "!"; pass pad_token.

Usage as a script:
    python models/clip_tokenizer.py full DST [--pad TOKEN]
    python models/clip_tokenizer.py truncated DST [--vocab-size N] [--pad TOKEN]
(no arguments: writes the full tokenizer to tests/data/clip-tokenizer)
"""

import gzip
import json
import os
import sys

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
# Number of merges the real CLIP vocabulary uses: 49408 = 2*256 + n_merges + 2.
FULL_VOCAB_SIZE = 49408
FULL_N_MERGES = FULL_VOCAB_SIZE - 2 * 256 - 2  # 48894


def merges_source_path():
    """Path of bpe_simple_vocab_16e6.txt.gz inside the installed open_clip package."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip (open_clip_torch) is not installed")
    for d in spec.submodule_search_locations:
        p = os.path.join(d, "bpe_simple_vocab_16e6.txt.gz")
        if os.path.exists(p):
            return p
    raise RuntimeError("bpe_simple_vocab_16e6.txt.gz not found in open_clip")


def byte_symbols():
    """The 256 printable unicode stand-ins for bytes, in GPT-2/CLIP order
    (printable latin-1 ranges first, then the remaining bytes mapped to 256+k)."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    kept = set(keep)
    chars = [chr(b) for b in keep]
    extra = 0
    for b in range(256):
        if b not in kept:
            chars.append(chr(256 + extra))
            extra += 1
    return chars  # in vocabulary order


def read_merges(n_merges):
    """The first n_merges merge pairs (tuples of two strings)."""
    with gzip.open(merges_source_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # line 0 is the "#version" header
    body = lines[1 : 1 + n_merges]
    if len(body) < n_merges:
        raise ValueError(f"merges file has only {len(body)} merges, {n_merges} requested")
    pairs = []
    for ln in body:
        a, b = ln.split(" ")
        pairs.append((a, b))
    return pairs


def build_vocab(n_merges):
    syms = byte_symbols()
    tokens = list(syms) + [s + "</w>" for s in syms]
    merges = read_merges(n_merges)
    tokens += [a + b for a, b in merges]
    tokens += [BOS, EOS]
    vocab = {}
    for i, t in enumerate(tokens):
        if t in vocab:
            raise ValueError(f"duplicate token {t!r}")
        vocab[t] = i
    return vocab, merges


def _special(content):
    return {
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
        "__type": "AddedToken",
    }


def _write(dst_dir, vocab, merges, pad_token):
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not in the vocabulary")
    os.makedirs(dst_dir, exist_ok=True)
    with open(os.path.join(dst_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(dst_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    pad = _special(pad_token) if pad_token in (BOS, EOS) else pad_token
    tok_cfg = {
        "add_prefix_space": False,
        "bos_token": _special(BOS),
        "do_lower_case": True,
        "eos_token": _special(EOS),
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": _special(EOS),
    }
    with open(os.path.join(dst_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")

    def st(c):
        return {"content": c, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    stm = {"bos_token": st(BOS), "eos_token": st(EOS), "pad_token": pad_token if pad_token not in (BOS, EOS) else st(pad_token), "unk_token": st(EOS)}
    with open(os.path.join(dst_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(stm, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return dst_dir


def write_full(dst_dir, pad_token=EOS):
    """Write the real 49408-token CLIP tokenizer to dst_dir."""
    vocab, merges = build_vocab(FULL_N_MERGES)
    assert len(vocab) == FULL_VOCAB_SIZE
    return _write(dst_dir, vocab, merges, pad_token)


def write_truncated(dst_dir, vocab_size=1000, pad_token=EOS):
    """Write a truncated CLIP tokenizer with exactly vocab_size tokens:
    512 byte tokens, the first (vocab_size - 514) merges, then BOS, EOS."""
    n_merges = vocab_size - 2 * 256 - 2
    if n_merges < 0 or n_merges > FULL_N_MERGES:
        raise ValueError(f"vocab_size must be in [514, {FULL_VOCAB_SIZE}]")
    vocab, merges = build_vocab(n_merges)
    assert len(vocab) == vocab_size
    return _write(dst_dir, vocab, merges, pad_token)


def _main(argv):
    import argparse

    here = os.path.dirname(os.path.abspath(__file__))
    default_dst = os.path.join(os.path.dirname(here), "tests", "data", "clip-tokenizer")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", nargs="?", default="full", choices=["full", "truncated"])
    ap.add_argument("dst", nargs="?", default=None)
    ap.add_argument("--pad", default=EOS)
    ap.add_argument("--vocab-size", type=int, default=1000)
    a = ap.parse_args(argv)
    if a.kind == "full":
        d = write_full(a.dst or default_dst, pad_token=a.pad)
    else:
        if a.dst is None:
            ap.error("truncated needs DST")
        d = write_truncated(a.dst, vocab_size=a.vocab_size, pad_token=a.pad)
    print("wrote", d)


if __name__ == "__main__":
    _main(sys.argv[1:])
