#!/usr/bin/env python3
"""A ResNet-18/50/152 ladder for timing the runner against PyTorch on one GPU.

The models have random weights (seeded): they measure cost, never accuracy.
They are the torchvision architectures, written out here so that only torch
is needed.

  resnet_ladder.py export  --out DIR [--models resnet18,resnet50,resnet152]
      writes DIR/<name>.onnx: input "input" [N,3,224,224] float32 with a
      dynamic batch axis, output "logits" [N,1000].
  resnet_ladder.py time    --out torch.json [--device cuda] [--batches 1,8,64]
                           [--tf32 on|off] [--reps 15] [--warmup 3]
      times the same models with PyTorch eager (fp32, eval, no grad),
      cudnn.benchmark on (as ONNX Runtime's EXHAUSTIVE search), the median
      of --reps runs per batch, for three input paths:
        pageable  the batch in ordinary host memory, copied to the GPU, the
                  output copied back: what the runner does, as a server
                  receives requests (the equal-conditions comparison);
        pinned    the same from page-locked host memory;
        device    the batch already on the GPU, the output left there.
  resnet_ladder.py compare --torch torch.json --runner NAME=profile.json ...
                           [--out table.md]
      prints a table: runner ms per batch (from `cascadeserve profile`
      files) against PyTorch's pageable time under the same TF32 setting,
      and the ratio runner / PyTorch.

Exit status 3 when torch is not installed (the caller may skip this part).
"""

import argparse
import json
import statistics
import sys
import time

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - reported to the caller
    torch = None

MODELS = ("resnet18", "resnet50", "resnet152")
LAYERS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3]),
          "resnet152": ("bottleneck", [3, 8, 36, 3])}


def need_torch():
    if torch is None:
        print("resnet_ladder: torch is not installed for %s" % sys.executable, file=sys.stderr)
        sys.exit(3)


def build(name, seed=0):
    """Returns the torchvision ResNet `name` with random weights, in eval mode."""
    need_torch()

    class Residual(nn.Module):
        """A residual block: body(x) plus x, or x's projection where the
        block changes the shape, through a ReLU."""

        def project(self, cin, out, stride):
            """Sets down, the projection of the input: None (the identity), or
            a strided 1x1 convolution with batch norm where stride or channels
            change."""
            self.down = None
            if stride != 1 or cin != out:
                self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

        def forward(self, x):
            idt = x if self.down is None else self.down(x)
            return self.relu(self.body(x) + idt)

    class Basic(Residual):
        expansion = 1

        def __init__(self, cin, c, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.relu = nn.ReLU(inplace=True)
            self.project(cin, c, stride)

        def body(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            return self.bn2(self.conv2(y))

    class Bottleneck(Residual):
        expansion = 4

        def __init__(self, cin, c, stride):
            super().__init__()
            out = c * 4
            self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.conv3 = nn.Conv2d(c, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU(inplace=True)
            self.project(cin, out, stride)

        def body(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            return self.bn3(self.conv3(y))

    kind, counts = LAYERS[name]
    block = Basic if kind == "basic" else Bottleneck
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, (c, n) in enumerate(zip((64, 128, 256, 512), counts)):
        for j in range(n):
            layers.append(block(cin, c, 2 if i > 0 and j == 0 else 1))
            cin = c * block.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    model = nn.Sequential(*layers)
    # Random but sane statistics, so activations neither vanish nor explode.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.0)
            nn.init.uniform_(m.bias, -0.1, 0.1)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def cmd_export(args):
    need_torch()
    import inspect
    import os
    os.makedirs(args.out, exist_ok=True)
    kwargs = dict(input_names=["input"], output_names=["logits"], opset_version=args.opset,
                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter: no onnxscript needed
    for name in args.models.split(","):
        start = time.time()
        model = build(name)
        path = os.path.join(args.out, name + ".onnx")
        with torch.no_grad():
            torch.onnx.export(model, torch.zeros(1, 3, 224, 224), path, **kwargs)
        print("exported %s (%.1f MB) in %.1fs" % (path, os.path.getsize(path) / 1e6, time.time() - start), file=sys.stderr)


def cmd_time(args):
    need_torch()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("resnet_ladder: CUDA is not available to torch", file=sys.stderr)
        sys.exit(2)
    tf32 = args.tf32 == "on"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    batches = [int(b) for b in args.batches.split(",")]
    paths = ["pageable", "pinned", "device"] if cuda else ["pageable"]
    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
           "tf32": tf32, "cudnn_benchmark": True, "reps": args.reps, "warmup": args.warmup, "models": {}}

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    for name in args.models.split(","):
        model = build(name).to(dev)
        res = {}
        for path in paths:
            res[path] = {}
            for b in batches:
                host = torch.rand(b, 3, 224, 224)
                if path == "pinned":
                    host = host.pin_memory()
                dev_in = host.to(dev)

                def step():
                    with torch.no_grad():
                        if path == "device":
                            return model(dev_in)
                        x = host.to(dev, non_blocking=(path == "pinned"))
                        return model(x).cpu()

                for _ in range(args.warmup):
                    step()
                sync()
                times = []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    step()
                    sync()
                    times.append((time.perf_counter() - t0) * 1e3)
                res[path][str(b)] = round(statistics.median(times), 4)
                print("torch %s %s batch %d: %.3f ms" % (name, path, b, res[path][str(b)]), file=sys.stderr)
        out["models"][name] = res
        del model
        if cuda:
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


def runner_ms(profile, name, batch):
    for pt in profile["models"].get(name, {}).get("points", []):
        if pt["batch"] == batch:
            return pt["latency_ms"]
    return None


def cmd_compare(args):
    with open(args.torch) as f:
        tt = json.load(f)
    runners = []
    for spec in args.runner:
        label, _, path = spec.partition("=")
        with open(path) as f:
            runners.append((label, json.load(f)))
    tf = "on" if tt.get("tf32") else "off"
    lines = ["PyTorch %s on %s, TF32 %s, cudnn.benchmark on; ms per batch (median); ratio = runner / PyTorch pageable." % (
        tt.get("torch"), tt.get("device"), tf), "",
        "| model | batch | PyTorch pageable | PyTorch pinned | PyTorch device-resident | " +
        " | ".join("runner %s | ratio" % label for label, _ in runners) + " |",
        "|---|---:|---:|---:|---:|" + "---:|---:|" * len(runners)]
    fmt = lambda v: "—" if v is None else ("%.0f" % v if v >= 100 else "%.3g" % v)
    for name, res in tt["models"].items():
        for b in sorted(int(x) for x in res["pageable"]):
            pg = res["pageable"].get(str(b))
            row = [name, str(b), fmt(pg), fmt(res.get("pinned", {}).get(str(b))), fmt(res.get("device", {}).get(str(b)))]
            for _, prof in runners:
                r = runner_ms(prof, name, b)
                row += [fmt(r), "—" if r is None or not pg else "%.2f×" % (r / pg)]
            lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--out", required=True)
    e.add_argument("--models", default=",".join(MODELS))
    e.add_argument("--opset", type=int, default=17)
    t = sub.add_parser("time")
    t.add_argument("--out", required=True)
    t.add_argument("--models", default=",".join(MODELS))
    t.add_argument("--device", default="cuda")
    t.add_argument("--batches", default="1,8,64")
    t.add_argument("--tf32", choices=("on", "off"), default="off")
    t.add_argument("--reps", type=int, default=15)
    t.add_argument("--warmup", type=int, default=3)
    c = sub.add_parser("compare")
    c.add_argument("--torch", required=True)
    c.add_argument("--runner", action="append", required=True, help="LABEL=profile.json (repeatable)")
    c.add_argument("--out")
    a = p.parse_args()
    {"export": cmd_export, "time": cmd_time, "compare": cmd_compare}[a.cmd](a)


if __name__ == "__main__":
    main()
