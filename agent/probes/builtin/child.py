"""The built-in probe's child process: PyTorch on every visible GPU (CUDA and ROCm alike: ROCm's torch answers
to torch.cuda), or the CPU when there is none. Prints one JSON document on stdout and exits 0; 3 when torch
cannot be imported (the probe is not available). Imports only the standard library and torch, so it runs in
any interpreter that has torch, apart from the agent's own dependencies.

Per device:
- matmul: n x n x n product (bf16 on a GPU, float32 on the CPU), TFLOP/s = 2 n^3 / seconds;
- copy: device-to-device copy of `copy_bytes`, TB/s counting bytes read plus written;
- sdc: a deterministic product of integer-valued float32 matrices (entries in -8..8, 256 wide: every partial
  sum is an integer below 2^24, so exact in float32 and TF32 whatever the summation order) compared bit for
  bit with the same product in float64 on the CPU. A correct device always matches; one wrong bit is silent
  data corruption. The digests are also compared across devices.
Optionally peer copies between GPU pairs (NVLink/XGMI), GB/s.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import time

SDC_N = 256


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent.probes.builtin")
    p.add_argument("--devices", default="all", help="comma-separated GPU indices, or all")
    p.add_argument("--matmul-size", type=int, default=8192)
    p.add_argument("--copy-bytes", type=int, default=1 << 30)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--peer", action="store_true")
    p.add_argument("--cpu", action="store_true", help="use the CPU even when a GPU is visible")
    p.add_argument("--corrupt-device", type=int, default=None, help=argparse.SUPPRESS)  # tests: inject SDC
    return p


def _sync(torch, dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(torch, dev, fn, reps: int) -> float:
    fn()  # warm-up (kernel selection, allocation)
    _sync(torch, dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(torch, dev)
    return max(time.perf_counter() - t0, 1e-9)


def reference(torch):
    """The SDC inputs (from a fixed seed, on the CPU) and their float64 product."""
    g = torch.Generator().manual_seed(20261202)
    a = torch.randint(-8, 9, (SDC_N, SDC_N), generator=g).to(torch.float32)
    b = torch.randint(-8, 9, (SDC_N, SDC_N), generator=g).to(torch.float32)
    ref = (a.double() @ b.double()).to(torch.float32)
    return a, b, ref


def digest(t) -> str:
    """A hash of the exact bits (float32 viewed as int32; no numpy needed)."""
    import torch
    bits = t.contiguous().cpu().view(torch.int32).flatten().tolist()
    return hashlib.sha256(struct.pack(f"<{len(bits)}i", *bits)).hexdigest()[:16]


def probe_device(torch, dev, args, a, b, ref, corrupt: bool) -> dict:
    out: dict = {}
    n = args.matmul_size
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    x = torch.randn(n, n, device=dev, dtype=dtype)
    y = torch.randn(n, n, device=dev, dtype=dtype)
    seconds = _timed(torch, dev, lambda: torch.matmul(x, y), args.reps)
    out["matmul_tflops"] = 2 * n ** 3 * args.reps / seconds / 1e12
    out["matmul_dtype"] = str(dtype).removeprefix("torch.")
    out["matmul_size"] = n
    del x, y
    count = max(1, args.copy_bytes // 4)
    src = torch.empty(count, device=dev, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = _timed(torch, dev, lambda: dst.copy_(src), args.reps)
    out["copy_tbps"] = 2 * src.numel() * 4 * args.reps / seconds / 1e12
    out["copy_bytes"] = src.numel() * 4
    del src, dst
    got = (a.to(dev) @ b.to(dev)).cpu()
    if corrupt:  # test-only: what a flipped bit in the product looks like
        got[0, 0] += 1.0
    out["sdc"] = {"mismatches": int((got != ref).sum().item()), "digest": digest(got), "elements": got.numel()}
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install raising anything
        print(json.dumps({"error": f"torch cannot be imported: {type(e).__name__}: {e}", "torch": None}))
        return 3
    torch.backends.cuda.matmul.allow_tf32 = False  # the SDC product must be exact
    doc: dict = {"version": 1, "torch": torch.__version__, "devices": [], "peer": []}
    gpu = torch.cuda.is_available() and not args.cpu
    if gpu:
        doc["backend"] = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        visible = list(range(torch.cuda.device_count()))
        wanted = visible if args.devices == "all" else [int(i) for i in args.devices.split(",") if i.strip()]
        devices = [(i, torch.device("cuda", i), torch.cuda.get_device_name(i)) for i in wanted if i in visible]
    else:
        doc["backend"] = "cpu"
        devices = [(None, torch.device("cpu"), "cpu")]
        # No floor applies to a CPU (it checks the probe's logic and the CPU's arithmetic): keep it short.
        args.matmul_size, args.copy_bytes = min(args.matmul_size, 1024), min(args.copy_bytes, 64 << 20)
        args.reps = min(args.reps, 3)
    a, b, ref = reference(torch)
    doc["reference_digest"] = digest(ref)
    for index, dev, name in devices:
        entry = {"index": index, "name": name}
        try:
            entry.update(probe_device(torch, dev, args, a, b, ref, args.corrupt_device == (index or 0)))
        except Exception as e:  # noqa: BLE001 - one device's failure (OOM, an ECC trap) costs that device
            entry["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        doc["devices"].append(entry)
    if gpu and args.peer:
        for i, di, _ in devices:
            for j, dj, _ in devices:
                if i >= j:
                    continue
                try:
                    src = torch.empty(max(1, args.copy_bytes // 4), device=di).fill_(1.0)
                    dst = torch.empty_like(src, device=dj)
                    seconds = _timed(torch, dj, lambda: dst.copy_(src), args.reps)
                    doc["peer"].append({"from": i, "to": j, "gbps": src.numel() * 4 * args.reps / seconds / 1e9})
                except Exception as e:  # noqa: BLE001
                    doc["peer"].append({"from": i, "to": j, "error": f"{type(e).__name__}: {str(e)[:200]}"})
    print(json.dumps(doc))
    return 0
