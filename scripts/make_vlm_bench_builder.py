"""The benchmark Qwen2.5-VL of `models/make_vlm.py --bench` with its decoder from the onnxruntime-genai model
builder (com.microsoft GroupQueryAttention, `past_present_share_buffer: true`), for scripts/bench-vlm.sh.

    VENV/bin/python scripts/make_vlm_bench_builder.py MOBIUS_BENCH_DIR OUT_DIR

MOBIUS_BENCH_DIR is what `make_vlm.py --bench` built (its vision and embedding graphs are copied, as
models/tiny-qwen2.5-vl-builder copies the tiny mobius ones). The weights are the same: make_vlm.py draws them
from a seeded generator, so the Hugging Face model is rebuilt bit for bit when its work folder is gone. Uses
make_vlm.py's own functions (write_hf, build_builder), so the package is made exactly as the committed
tiny-qwen2.5-vl-builder is. Needs the venv make_vlm.py needs (torch, transformers, onnxruntime-genai).
"""

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "models"))

import make_vlm  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    mobius_pkg, out_dir = (os.path.abspath(p) for p in sys.argv[1:])
    if not os.path.isfile(os.path.join(mobius_pkg, "genai_config.json")):
        sys.exit(f"make_vlm_bench_builder: {mobius_pkg} is not a package built by make_vlm.py --bench")
    import torch
    torch.set_num_threads(2)
    ids = {s: make_vlm.REGULAR_VOCAB + i for i, s in enumerate(make_vlm.SPECIALS)}
    hf_dir = os.path.join(make_vlm.WORK, "bench-hf")
    if not os.path.isfile(os.path.join(hf_dir, "model.safetensors")):
        t0 = time.time()
        make_vlm.write_hf(hf_dir, ids, bench=True)
        make_vlm.log(f"HF model written in {time.time() - t0:.1f}s")
    from transformers import Qwen2_5_VLConfig
    ctx = Qwen2_5_VLConfig.from_pretrained(hf_dir).text_config.max_position_embeddings
    t = make_vlm.build_builder(hf_dir, os.path.join(make_vlm.WORK, "bench-builder"), out_dir, mobius_pkg, ids, ctx)
    make_vlm.log(f"builder export took {t:.1f}s -> {out_dir}")


if __name__ == "__main__":
    main()
