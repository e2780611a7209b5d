#!/usr/bin/python3
"""Generates the "digits" ladder used by the bring-your-own-model tests.

Three tiny MNIST classifiers built the way a user's own models often are, not
the way the embedded MNIST ladder is:

  * input UINT8 [N, 28, 28] (raw pixels 0..255, no channel axis); the model
    scales the bytes itself,
  * output float32 [N, 10] of softmax probabilities (no output-kind metadata),
  * tensor names of their own, different per model.

They are trained for a few seconds on the first 5,000 images of the MNIST
test file embedded in the repository (models/mnist/data), so the tests can
replay them on later test images. Run with Debian's python3 (python3-torch,
python3-onnx) from anywhere:

    /usr/bin/python3 internal/system/testdata/digits/make_digits.py

Training is seeded and single-threaded; re-running reproduces the models up
to floating-point differences between torch builds.
"""

import gzip
import os

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "..", "..", "models", "mnist", "data")
TRAIN = 5000

# name: (input name, output name, pooling, hidden units)
MODELS = {
    "tiny": ("pixels", "probs", 4, 0),  # 7x7 average pool, linear
    "small": ("pixels", "probs", 2, 0),  # 14x14 average pool, linear
    "wide": ("image_u8", "class_probs", 2, 24),  # 14x14 average pool, one hidden layer
}


def read_idx(name):
    with gzip.open(os.path.join(DATA, name), "rb") as f:
        raw = f.read()
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def net(pool, hidden):
    feats = (28 // pool) ** 2
    layers = [torch.nn.AvgPool2d(pool), torch.nn.Flatten()]
    if hidden:
        layers += [torch.nn.Linear(feats, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)]
    else:
        layers += [torch.nn.Linear(feats, 10)]
    return torch.nn.Sequential(*layers)


def train(model, x, y, epochs=30):
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 250):
            idx = perm[i : i + 250]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return model


def export(name, model, pool, hidden):
    """Writes the ONNX graph by hand: Cast, scale, pool, dense layers, Softmax."""
    in_name, out_name = MODELS[name][:2]
    p = name + "_"
    inits = [
        numpy_helper.from_array(np.array(1.0 / 255, dtype=np.float32), p + "scale"),
        numpy_helper.from_array(np.array([-1, 1, 28, 28], dtype=np.int64), p + "shape4"),
    ]
    nodes = [
        helper.make_node("Cast", [in_name], [p + "f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [p + "f", p + "scale"], [p + "x"]),
        helper.make_node("Reshape", [p + "x", p + "shape4"], [p + "x4"]),
        helper.make_node("AveragePool", [p + "x4"], [p + "pooled"], kernel_shape=[pool, pool], strides=[pool, pool]),
        helper.make_node("Flatten", [p + "pooled"], [p + "h0"], axis=1),
    ]
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    h = p + "h0"
    for i, lin in enumerate(linears):
        w = lin.weight.detach().numpy().T.astype(np.float32)
        b = lin.bias.detach().numpy().astype(np.float32)
        inits += [numpy_helper.from_array(w, f"{p}w{i}"), numpy_helper.from_array(b, f"{p}b{i}")]
        nodes += [
            helper.make_node("MatMul", [h, f"{p}w{i}"], [f"{p}mm{i}"]),
            helper.make_node("Add", [f"{p}mm{i}", f"{p}b{i}"], [f"{p}z{i}"]),
        ]
        h = f"{p}z{i}"
        if i < len(linears) - 1:
            nodes.append(helper.make_node("Relu", [h], [f"{p}r{i}"]))
            h = f"{p}r{i}"
    nodes.append(helper.make_node("Softmax", [h], [out_name], axis=1))
    graph = helper.make_graph(
        nodes,
        "digits_" + name,
        [helper.make_tensor_value_info(in_name, TensorProto.UINT8, ["N", 28, 28])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="cascadeserve-testdata")
    m.ir_version = 8
    onnx.checker.check_model(m)
    with open(os.path.join(HERE, name + ".onnx"), "wb") as f:
        f.write(m.SerializeToString())


def main():
    torch.manual_seed(7)
    torch.set_num_threads(1)
    images = read_idx("t10k-images-idx3-ubyte.gz")
    labels = read_idx("t10k-labels-idx1-ubyte.gz")
    x = torch.tensor(images[:TRAIN], dtype=torch.float32).unsqueeze(1) / 255
    y = torch.tensor(labels[:TRAIN], dtype=torch.long)
    xt = torch.tensor(images[TRAIN:], dtype=torch.float32).unsqueeze(1) / 255
    yt = torch.tensor(labels[TRAIN:], dtype=torch.long)
    for name, (_, _, pool, hidden) in MODELS.items():
        model = train(net(pool, hidden), x, y)
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
        print(f"{name}: held-out accuracy {100 * acc:.2f}%")
        export(name, model, pool, hidden)


if __name__ == "__main__":
    main()
