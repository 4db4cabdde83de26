"""timm's side of `tools/benchmark.py --peer=timm`: runs in the peer Python (torch + timm, never a
dependency of nf), driven over a pipe: one JSON request per line on stdin, one JSON reply per line
on stdout. Requests:

    {"cmd": "setup", "model": "nf_resnet50", "num_classes": 1000, "batch_dir": DIR, "threads": 2,
     "lr": .., "momentum": .., "nesterov": true, "weight_decay": .., "label_smoothing": ..,
     "agc_clip": 0.0, "ema_decay": 0.99, "seed": 0, "drop_rate": 0.0,
     "drop_path_rate": 0.0, "device": "cpu", "amp": false}
        -> {"ok": true, "params": N, "forward_flops_conv_matmul": F, "torch": .., "timm": .., "threads": T}
    {"cmd": "train"}  -> {"seconds": s, "loss": l}   one optimizer step on the batch
    {"cmd": "infer"}  -> {"seconds": s}              eval-mode forward under torch.inference_mode
    {"cmd": "rss"}    -> {"peak_rss_bytes": b}           VmHWM: since start or the last reset_rss
    {"cmd": "reset_rss"} -> {"ok": bool}                 restart VmHWM (Linux /proc/self/clear_refs)
    {"cmd": "profile", "steps": n} -> {"ops": {aten op: self seconds per step}, "wall_seconds": s}
                      n train steps under torch.profiler (tools/profile_step.py)
    {"cmd": "quit"}   -> {"ok": true}, then exit

The batch is DIR/image.npy (B, H, W, C float32, made channels-first here) and DIR/label.npy
(B,) written by the benchmark. The train step mirrors nf-train's: forward in train mode,
label-smoothed cross-entropy, backward, AGC on every parameter but the classifier's when
`agc_clip` > 0 (timm's train.py does the same), SGD with (Nesterov) momentum and coupled weight
decay on kernels only (tensors with more than one element per output unit, like nf's mask), and
the EMA of the weights (timm's ModelEmaV3, foreach update).

`"device": "cuda"` runs the model on the GPU in channels-last layout (timm train.py's
`--channels-last`); `"amp": true` runs forward and loss under bfloat16 autocast (timm train.py's
`--amp --amp-dtype bfloat16`). Times on a GPU end with `torch.cuda.synchronize()`, and "rss" then
also reports the peak of `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
import types

# A torchvision wheel built for CUDA torch cannot load its C ops under CPU torch, and fails while
# registering their fake kernels at import; timm only needs torchvision's Python modules.
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from timm.utils import ModelEmaV3, adaptive_clip_grad  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402


class Peer:
    def __init__(self, req: dict):
        torch.manual_seed(req["seed"])
        torch.set_num_threads(req["threads"])
        self.device = torch.device(req.get("device", "cpu"))
        self.cuda = self.device.type == "cuda"
        layout = torch.channels_last if self.cuda else torch.contiguous_format
        self.model = timm.create_model(
            req["model"],
            pretrained=False,
            num_classes=req["num_classes"],
            drop_rate=req.get("drop_rate", 0.0),
            drop_path_rate=req.get("drop_path_rate", 0.0),
        )
        self.model.to(self.device, memory_format=layout)
        d = req["batch_dir"]
        x = torch.from_numpy(np.load(os.path.join(d, "image.npy"))).permute(0, 3, 1, 2)
        self.x = x.to(self.device).contiguous(memory_format=layout)
        self.y = torch.from_numpy(np.load(os.path.join(d, "label.npy")).astype(np.int64)).to(self.device)
        self.amp = bool(req.get("amp", False))
        classifier = {id(p) for p in self.model.get_classifier().parameters()}
        params = list(self.model.parameters())
        decay = [p for p in params if p.ndim >= 2 and p[0].numel() > 1]  # kernels, not gains/biases
        no_decay = [p for p in params if not (p.ndim >= 2 and p[0].numel() > 1)]
        self.opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": req["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=req["lr"],
            momentum=req["momentum"],
            nesterov=req["nesterov"],
        )
        self.agc_params = [p for p in params if id(p) not in classifier]
        self.agc_clip = req["agc_clip"]
        self.ema = ModelEmaV3(self.model, decay=req["ema_decay"])
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=req["label_smoothing"])
        self.step_count = 0
        self.model.eval()
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            self.model(self.x[:1])
        self.forward_flops = counter.get_total_flops()  # 2 x MACs of convs and matmuls, one image

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def train(self) -> dict:
        self.model.train()
        self.sync()
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        if self.agc_clip:
            adaptive_clip_grad(self.agc_params, self.agc_clip, eps=1e-3)
        self.opt.step()
        self.ema.update(self.model, step=self.step_count)
        self.step_count += 1
        value = loss.item()  # waits for the step, as nf's block_until_ready does
        self.sync()
        return {"seconds": time.perf_counter() - start, "loss": value}

    def profile(self, steps: int) -> dict:
        """Each operator's self CPU time per step over `steps` train steps, and the median wall."""
        from torch.profiler import ProfilerActivity, profile

        walls = []
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                walls.append(self.train()["seconds"])
        ops = {e.key: e.self_cpu_time_total * 1e-6 / steps for e in prof.key_averages() if e.self_cpu_time_total > 0}
        return {"ops": ops, "wall_seconds": float(np.median(walls))}

    def infer(self) -> dict:
        self.model.eval()
        self.sync()
        start = time.perf_counter()
        with torch.inference_mode(), self.autocast():
            self.model(self.x)
        self.sync()
        return {"seconds": time.perf_counter() - start}


def peak_rss_bytes() -> int:
    """This process's peak RSS. Linux keeps getrusage's ru_maxrss across execve, so a peer started
    by a 5 GB benchmark would report the benchmark's peak; VmHWM belongs to this program's memory."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current resident set (nf.train.host_memory.reset_peak_rss; this
    process cannot import nf)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main() -> None:
    peer = None
    for line in sys.stdin:
        req = json.loads(line)
        try:
            cmd = req["cmd"]
            if cmd == "setup":
                peer = Peer(req)
                reply = {
                    "ok": True,
                    "model": req["model"],
                    "params": sum(p.numel() for p in peer.model.parameters()),
                    "forward_flops_conv_matmul": peer.forward_flops,
                    "torch": torch.__version__,
                    "timm": timm.__version__,
                    "threads": torch.get_num_threads(),
                    "device": str(peer.device),
                    "amp": peer.amp,
                }
            elif cmd == "train":
                reply = peer.train()
            elif cmd == "infer":
                reply = peer.infer()
            elif cmd == "profile":
                reply = peer.profile(int(req["steps"]))
            elif cmd == "rss":
                reply = {"peak_rss_bytes": peak_rss_bytes()}
                if peer is not None and peer.cuda:
                    reply["peak_device_bytes"] = torch.cuda.max_memory_allocated()
            elif cmd == "reset_rss":
                reply = {"ok": reset_peak_rss()}
            elif cmd == "quit":
                print(json.dumps({"ok": True}), flush=True)
                return
            else:
                reply = {"error": f"unknown command {cmd!r}"}
        except Exception as e:  # reported to the benchmark, which raises with it
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
