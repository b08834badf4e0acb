#!/usr/bin/env python
"""Write tests/data/variants/: graph I/O variants of models/tiny-sd2-v for tests/variants.rs.

Run from the repository root:   /work/venv/bin/python models/make_variants.py
Needs onnx, onnxruntime and numpy only. Deterministic: the same input package gives the same bytes.

optimum exports `input_ids` as int64 and the UNet `timestep` as a 0-d float32, which is all the
bundled packages exercise. Other exporters declare other types; these files wrap the tiny-sd2-v
graphs so that the pipeline meets them:

  text_encoder_ids_int32.onnx     input_ids int32 [batch, seq] -> Cast(int64) -> original graph
  unet_timestep_int64_batch.onnx  timestep int64 [batch] -> Cast(float) -> Gather(0) -> 0-d float
  unet_timestep_float_batch.onnx  timestep float32 [batch] -> Gather(0) -> 0-d float
  unet_extra_input.onnx           the UNet signature plus SDXL's required `text_embeds` float32
                                  [batch, 32] and `time_ids` [batch, 6]; diffgentor must refuse
                                  it (Unsupported). To keep tests/data/variants under 4 MB this
                                  one is a small stand-in with the same inputs and output as
                                  the tiny UNet (out_sample = sample + 0 * (timestep + mean of
                                  the other inputs)), not a third copy of its weights:
                                  loading only looks at the signature.

A 0-d int64 timestep (also supported) would need another 1.3 MB UNet copy, over the budget, so
it is covered by two toy denoisers (a few hundred bytes each) with the UNet's I/O:

  toy_unet_timestep_float_scalar.onnx  timestep float32 []
  toy_unet_timestep_int64_scalar.onnx  timestep int64 [] -> Cast(float)
  toy_unet_timestep_float_single.onnx  timestep float32 [1] (a fixed one-element shape)
      out_sample = sample * (timestep / 1000) + mean(encoder_hidden_states[b]) (per batch item)
The two must give identical pipeline outputs for whole-number timesteps.

Each wrapped graph is checked with onnxruntime against the original on the same inputs
(bit-exact: the wrappers only change dtype/rank of whole-number timesteps and token ids).
Weights stay inside each file (no external data).
"""

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "models", "tiny-sd2-v")
OUT = os.path.join(ROOT, "tests", "data", "variants")
MAX_TOTAL = 4 * 1024 * 1024


def load(component):
    return onnx.load(os.path.join(SRC, component, "model.onnx"))


def rename_input(model, old, new):
    """Makes every node that read graph input `old` read `new` instead; drops the input."""
    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH or attr.type == onnx.AttributeProto.GRAPHS:
                raise SystemExit(f"subgraph attribute in {node.name}; rename_input does not recurse")
    index = [i.name for i in graph.input].index(old)
    del graph.input[index]
    return index


def wrap_input(model, name, new_input, prologue, inner_name):
    """Replaces graph input `name` with `new_input` (same name) and prepends `prologue` nodes,
    whose last output `inner_name` is what the original graph now reads."""
    index = rename_input(model, name, inner_name)
    model.graph.input.insert(index, new_input)
    nodes = list(prologue) + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    return model


def text_encoder_ids_int32():
    model = load("text_encoder")
    ids = helper.make_tensor_value_info(
        "input_ids", TensorProto.INT32, ["batch_size", "sequence_length"]
    )
    cast = helper.make_node(
        "Cast", ["input_ids"], ["input_ids_int64"], to=TensorProto.INT64, name="/variant/CastIds"
    )
    return wrap_input(model, "input_ids", ids, [cast], "input_ids_int64")


def unet_timestep(elem_type):
    model = load("unet")
    timestep = helper.make_tensor_value_info("timestep", elem_type, ["batch_size"])
    model.graph.initializer.append(
        numpy_helper.from_array(np.array(0, dtype=np.int64), "/variant/zero")
    )
    nodes = []
    source = "timestep"
    if elem_type != TensorProto.FLOAT:
        nodes.append(
            helper.make_node(
                "Cast", [source], ["/variant/timestep_f32"], to=TensorProto.FLOAT,
                name="/variant/CastTimestep",
            )
        )
        source = "/variant/timestep_f32"
    # A 0-d index gives a 0-d result: the float scalar the exported graph consumes.
    nodes.append(
        helper.make_node(
            "Gather", [source, "/variant/zero"], ["/variant/timestep_0d"], axis=0,
            name="/variant/GatherTimestep",
        )
    )
    return wrap_input(model, "timestep", timestep, nodes, "/variant/timestep_0d")


def unet_extra_input():
    """A small graph with the tiny UNet's exact signature plus SDXL's `text_embeds`, `time_ids`."""
    unet = load("unet")
    inputs = [onnx.ValueInfoProto() for _ in unet.graph.input]
    for dst, src in zip(inputs, unet.graph.input):
        dst.CopyFrom(src)
    inputs.append(helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch_size", 32]))
    inputs.append(helper.make_tensor_value_info("time_ids", TensorProto.FLOAT, ["batch_size", 6]))
    output = onnx.ValueInfoProto()
    output.CopyFrom(unet.graph.output[0])
    assert [i.name for i in inputs] == [
        "sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"
    ]
    assert output.name == "out_sample"
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    nodes = [
        helper.make_node("ReduceMean", ["encoder_hidden_states"], ["ehs_mean"], keepdims=0),
        helper.make_node("ReduceMean", ["text_embeds"], ["embeds_mean"], keepdims=0),
        helper.make_node("ReduceMean", ["time_ids"], ["ids_mean"], keepdims=0),
        helper.make_node("Add", ["ehs_mean", "embeds_mean"], ["some_means"]),
        helper.make_node("Add", ["some_means", "ids_mean"], ["means"]),
        helper.make_node("Add", ["means", "timestep"], ["all"]),
        helper.make_node("Mul", ["all", "zero"], ["nothing"]),
        helper.make_node("Add", ["sample", "nothing"], ["out_sample"]),
    ]
    graph = helper.make_graph(nodes, "unet_extra_input", inputs, [output], [zero])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="make_variants.py"
    )
    model.ir_version = unet.ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def toy_unet(elem_type, shape=()):
    """A toy denoiser with the tiny UNet's I/O and a timestep of `elem_type` and `shape`."""
    unet = load("unet")
    inputs = [onnx.ValueInfoProto() for _ in unet.graph.input]
    for dst, src in zip(inputs, unet.graph.input):
        dst.CopyFrom(src)
    assert [i.name for i in inputs] == ["sample", "timestep", "encoder_hidden_states"]
    inputs[1] = helper.make_tensor_value_info("timestep", elem_type, list(shape))
    output = onnx.ValueInfoProto()
    output.CopyFrom(unet.graph.output[0])
    init = [
        numpy_helper.from_array(np.array(1000.0, dtype=np.float32), "thousand"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "seq_hidden_axes"),
        numpy_helper.from_array(np.array([3], dtype=np.int64), "last_axis"),
    ]
    nodes = []
    t = "timestep"
    if elem_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["timestep"], ["t_f32"], to=TensorProto.FLOAT))
        t = "t_f32"
    nodes += [
        helper.make_node("Div", [t, "thousand"], ["t_scale"]),
        helper.make_node("Mul", ["sample", "t_scale"], ["scaled"]),
        helper.make_node(
            "ReduceMean", ["encoder_hidden_states", "seq_hidden_axes"], ["ehs_mean"], keepdims=1
        ),
        helper.make_node("Unsqueeze", ["ehs_mean", "last_axis"], ["ehs_mean4"]),
        helper.make_node("Add", ["scaled", "ehs_mean4"], ["out_sample"]),
    ]
    graph = helper.make_graph(nodes, "toy_unet", inputs, [output], init)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="make_variants.py"
    )
    model.ir_version = unet.ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def session(model_or_path):
    data = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def describe(sess):
    return [(i.name, i.type, i.shape) for i in sess.get_inputs()]


def check_equal(name, want, got):
    for w, g in zip(want, got):
        if w.shape != g.shape or not np.array_equal(w, g):
            raise SystemExit(f"{name}: output differs from the original (max abs diff "
                             f"{np.max(np.abs(w.astype(np.float64) - g)) if w.shape == g.shape else 'shape'})")
    print(f"  {name}: outputs equal to the original ({', '.join(str(w.shape) for w in want)})")


def verify(paths):
    rng = np.random.default_rng(0)
    original_te = session(os.path.join(SRC, "text_encoder", "model.onnx"))
    te = session(paths["text_encoder_ids_int32.onnx"])
    print("text_encoder_ids_int32:", describe(te))
    assert [(i.name, i.type) for i in te.get_inputs()] == [("input_ids", "tensor(int32)")]
    ids = rng.integers(0, 998, size=(2, 77), dtype=np.int64)  # tiny vocab: 1000 ids
    ids[:, 0] = 998  # <|startoftext|>
    ids[:, 10:] = 999  # <|endoftext|>
    check_equal(
        "text_encoder_ids_int32",
        original_te.run(None, {"input_ids": ids}),
        te.run(None, {"input_ids": ids.astype(np.int32)}),
    )

    original = session(os.path.join(SRC, "unet", "model.onnx"))
    sample = rng.standard_normal((2, 4, 8, 12), dtype=np.float32)
    ehs = rng.standard_normal((2, 77, 48), dtype=np.float32)
    for t in [501, 1, 999]:
        want = original.run(None, {
            "sample": sample, "timestep": np.array(float(t), dtype=np.float32),
            "encoder_hidden_states": ehs,
        })
        for fname, dtype in [
            ("unet_timestep_int64_batch.onnx", np.int64),
            ("unet_timestep_float_batch.onnx", np.float32),
        ]:
            sess = session(paths[fname])
            ts = sess.get_inputs()[1]
            assert ts.name == "timestep" and ts.shape == ["batch_size"], describe(sess)
            got = sess.run(None, {
                "sample": sample, "timestep": np.array([t, t], dtype=dtype),
                "encoder_hidden_states": ehs,
            })
            check_equal(f"{fname} t={t}", want, got)

    extra = session(paths["unet_extra_input.onnx"])
    print("unet_extra_input:", describe(extra))
    names = [i.name for i in extra.get_inputs()]
    assert names == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"], names
    got = extra.run(None, {
        "sample": sample, "timestep": np.array(501.0, dtype=np.float32),
        "encoder_hidden_states": ehs, "text_embeds": np.ones((2, 32), dtype=np.float32),
        "time_ids": np.ones((2, 6), dtype=np.float32),
    })
    assert np.array_equal(got[0], sample)

    toys = {}
    for fname, dtype in [
        ("toy_unet_timestep_float_scalar.onnx", np.float32),
        ("toy_unet_timestep_int64_scalar.onnx", np.int64),
        ("toy_unet_timestep_float_single.onnx", np.float32),
    ]:
        sess = session(paths[fname])
        print(f"{fname[:-5]}:", describe(sess))
        toys[fname] = sess.run(None, {
            "sample": sample,
            "timestep": np.array(501, dtype=dtype).reshape((1,) if "single" in fname else ()),
            "encoder_hidden_states": ehs,
        })
    want = sample * np.float32(501 / 1000) + ehs.mean(axis=(1, 2))[:, None, None, None]
    assert np.allclose(toys["toy_unet_timestep_float_scalar.onnx"][0], want, atol=1e-6)
    check_equal("toy_unet_timestep_int64_scalar vs float_scalar",
                toys["toy_unet_timestep_float_scalar.onnx"],
                toys["toy_unet_timestep_int64_scalar.onnx"])
    check_equal("toy_unet_timestep_float_single vs float_scalar",
                toys["toy_unet_timestep_float_scalar.onnx"],
                toys["toy_unet_timestep_float_single.onnx"])


def main():
    os.makedirs(OUT, exist_ok=True)
    models = {
        "text_encoder_ids_int32.onnx": text_encoder_ids_int32(),
        "unet_timestep_int64_batch.onnx": unet_timestep(TensorProto.INT64),
        "unet_timestep_float_batch.onnx": unet_timestep(TensorProto.FLOAT),
        "unet_extra_input.onnx": unet_extra_input(),
        "toy_unet_timestep_float_scalar.onnx": toy_unet(TensorProto.FLOAT),
        "toy_unet_timestep_int64_scalar.onnx": toy_unet(TensorProto.INT64),
        "toy_unet_timestep_float_single.onnx": toy_unet(TensorProto.FLOAT, (1,)),
    }
    paths = {}
    for name, model in models.items():
        path = os.path.join(OUT, name)
        with open(path, "wb") as f:
            f.write(model.SerializeToString(deterministic=True))
        paths[name] = path
    verify(paths)
    total = 0
    for name in sorted(os.listdir(OUT)):
        size = os.path.getsize(os.path.join(OUT, name))
        total += size
        print(f"{size:>10}  tests/data/variants/{name}")
    print(f"{total:>10}  total")
    if total >= MAX_TOTAL:
        sys.exit(f"tests/data/variants is {total} bytes, over the {MAX_TOTAL} byte budget")


if __name__ == "__main__":
    main()
