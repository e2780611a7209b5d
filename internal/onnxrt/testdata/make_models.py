#!/usr/bin/python3
"""Generates the tiny ONNX models used by internal/onnxrt tests.

Run from anywhere with Debian's python3 (needs the `onnx` package, no torch):

    /usr/bin/python3 internal/onnxrt/testdata/make_models.py

Every file is deterministic, so re-running the script reproduces the committed
bytes. The weights of the linear classifier are also written to linear.json so
the Go tests can compute the expected probabilities by hand.
"""

import json
import os
import random

import onnx
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = [helper.make_opsetid("", 13)]

# Item shape [2, 3] (rank-3 input with the batch axis), 6 features, 3 classes.
ITEM = [2, 3]
FEATURES = 6
CLASSES = 3
W = [[((i * 3 + j * 7) % 11 - 5) / 4.0 for j in range(CLASSES)] for i in range(FEATURES)]
B = [0.5, -0.25, 0.125]


def save(model, name, props=None):
    if props:
        helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    path = os.path.join(HERE, name)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def linear_nodes(src):
    """Flatten src to [N, FEATURES] and apply the affine map, producing 'logits'."""
    return [
        helper.make_node("Flatten", [src], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
    ]


def initializers():
    flat_w = [w for row in W for w in row]
    return [
        helper.make_tensor("W", TensorProto.FLOAT, [FEATURES, CLASSES], flat_w),
        helper.make_tensor("B", TensorProto.FLOAT, [CLASSES], B),
    ]


def model(nodes, inputs, outputs, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers())
    m = helper.make_model(graph, opset_imports=OPSET, producer_name="cascadeserve-testdata")
    m.ir_version = 8
    return m


def f32_input(shape, name="x"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def out(name, shape=("N", CLASSES), dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def main():
    batch_item = ["N"] + ITEM

    # Linear classifier emitting logits, dynamic batch.
    logits = model(linear_nodes("x"), [f32_input(batch_item)], [out("logits")], "linear_logits")
    save(logits, "linear_logits.onnx")

    # Same classifier followed by Softmax: emits probabilities.
    probs_nodes = linear_nodes("x") + [helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    save(model(probs_nodes, [f32_input(batch_item)], [out("probs")], "linear_probs"),
         "linear_probs.onnx")

    # Emits probabilities but its metadata claims logits: metadata must win over the
    # per-row heuristic, so the runner applies softmax once more.
    save(model(probs_nodes, [f32_input(batch_item)], [out("probs")], "linear_probs_meta_logits"),
         "linear_probs_meta_logits.onnx", {"cascadeserve.output_kind": "logits"})

    # Invalid metadata value.
    save(model(probs_nodes, [f32_input(batch_item)], [out("probs")], "bad_meta"),
         "bad_metadata.onnx", {"cascadeserve.output_kind": "maybe"})

    # uint8 input (e.g. raw pixels), cast to float inside the graph.
    u8_nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT)] + linear_nodes("xf")
    u8_in = helper.make_tensor_value_info("x", TensorProto.UINT8, batch_item)
    save(model(u8_nodes, [u8_in], [out("logits")], "linear_uint8"), "linear_uint8.onnx")

    # int64 input: unsupported dtype.
    i64_in = helper.make_tensor_value_info("x", TensorProto.INT64, batch_item)
    save(model(u8_nodes, [i64_in], [out("logits")], "int64_input"), "int64_input.onnx")

    # Rank-1 input: no item axis.
    rank1_nodes = [
        helper.make_node("Constant", [], ["shape"],
                         value=helper.make_tensor("s", TensorProto.INT64, [2], [-1, FEATURES])),
        helper.make_node("Reshape", ["x", "shape"], ["x2"]),
        helper.make_node("MatMul", ["x2", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
    ]
    save(model(rank1_nodes, [f32_input(["N"])], [out("logits")], "rank1_input"), "rank1_input.onnx")

    # Static batch axis of 1.
    save(model(linear_nodes("x"), [f32_input([1] + ITEM)], [out("logits", (1, CLASSES))],
               "static_batch"), "static_batch.onnx")

    # Two outputs.
    two_nodes = linear_nodes("x") + [helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    save(model(two_nodes, [f32_input(batch_item)], [out("logits"), out("probs")], "two_outputs"),
         "two_outputs.onnx")

    # Output of rank 3 ([N, 1, classes]).
    r3_nodes = linear_nodes("x") + [
        helper.make_node("Constant", [], ["axes"],
                         value=helper.make_tensor("a", TensorProto.INT64, [1], [1])),
        helper.make_node("Unsqueeze", ["logits", "axes"], ["out3"]),
    ]
    save(model(r3_nodes, [f32_input(batch_item)], [out("out3", ("N", 1, CLASSES))], "rank3_output"),
         "rank3_output.onnx")

    # Corrupt files: random bytes, and a valid model cut in half.
    rng = random.Random(20240611)
    with open(os.path.join(HERE, "corrupt_random.onnx"), "wb") as f:
        f.write(bytes(rng.getrandbits(8) for _ in range(256)))
    data = logits.SerializeToString()
    with open(os.path.join(HERE, "corrupt_truncated.onnx"), "wb") as f:
        f.write(data[: len(data) // 2])

    with open(os.path.join(HERE, "linear.json"), "w") as f:
        json.dump({"item_shape": ITEM, "classes": CLASSES, "W": W, "B": B}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
