"""Prints the Markdown tables of a scripts/bench-vs-pytorch.sh folder: every run, then per case the
best ONNX time against PyTorch's best (over 1 and 2 threads and the rounds), and their ratio.

  python3 scripts/pytorch/summarize_vs.py <out-dir>
"""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import sys


def read_runs(folder: str) -> list:
    runs = []
    # In the order they ran (each run's .load file is written when it starts and when it ends).
    def started(path: str) -> float:
        load = path[:-5] + ".load"
        return os.path.getmtime(load) if os.path.exists(load) else 0

    paths = sorted(glob.glob(os.path.join(folder, "*.json")), key=started)
    for path in paths:
        name = os.path.basename(path)[:-5]
        m = re.fullmatch(r"(.+)-(onnx|torch1|torch2)-r(\d+)", name)
        if not m:
            continue
        with open(path) as f:
            text = f.read().strip()
        if not text:
            raise SystemExit(f"summarize_vs: {path} is empty (see {name}.log)")
        with open(os.path.join(folder, f"{name}.time")) as f:
            timing = json.loads(f.read().strip().splitlines()[-1])
        with open(os.path.join(folder, f"{name}.load")) as f:
            load = [line.split()[0] for line in f.read().split("\n") if line]
        runs.append({"case": m[1], "engine": m[2], "round": int(m[3]), "r": json.loads(text.splitlines()[-1]),
                     "time": timing, "load": load})
    return runs


def fmt(x, digits=0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def main() -> None:
    folder = sys.argv[1]
    runs = read_runs(folder)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}")
    torch_run = next((x["r"] for x in runs if x["engine"] != "onnx"), None)
    if torch_run:
        print(f"PyTorch {torch_run['torch_version']}, {torch_run['blas']} core {torch_run['blas_core']} "
              f"(OPENBLAS_CORETYPE={torch_run['openblas_coretype_env']}), oneDNN {torch_run['mkldnn']}")
    for path in sorted(glob.glob(os.path.join(folder, "blas-check-*.json"))):
        with open(path) as f:
            b = json.load(f)
        print(f"  {b['threads']} thread(s): 2048^2 matmul {b['matmul_2048_gflops']:.0f} GFLOP/s, "
              f"3x3 conv 320ch 32x32 {b['conv3x3_320ch_32x32_gflops']:.0f} GFLOP/s")
    print()
    print("| case | engine | threads | round | ms/step | CPU ms/step | peak RSS (MiB) | GFLOP/step | load before -> after |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for x in runs:
        r = x["r"]
        threads = r["config"]["threads"] if x["engine"] != "onnx" else f"{r['config']['threads']} (ORT)"
        print(f"| {x['case']} | {x['engine'][:5]} | {threads} | {x['round']} | {fmt(r['ms_per_step'])} | "
              f"{fmt(r['cpu_ms_per_step'])} | {fmt(r['peak_rss_mb'])} | {r['gflop_per_step']:.1f} | {' -> '.join(x['load'])} |")
    print()
    print("| case | onnx best ms/step (CPU ms) | PyTorch best ms/step (CPU ms), threads | onnx / PyTorch time "
          "| CPU time ratio | peak RSS onnx / PyTorch (MiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case in dict.fromkeys(x["case"] for x in runs):
        mine = [x for x in runs if x["case"] == case]
        onnx = min((x for x in mine if x["engine"] == "onnx"), key=lambda x: x["r"]["ms_per_step"], default=None)
        torch = min((x for x in mine if x["engine"] != "onnx"), key=lambda x: x["r"]["ms_per_step"], default=None)
        if not onnx or not torch:
            continue
        o, t = onnx["r"], torch["r"]
        print(f"| {case} | {fmt(o['ms_per_step'])} ({fmt(o['cpu_ms_per_step'])}) | {fmt(t['ms_per_step'])} "
              f"({fmt(t['cpu_ms_per_step'])}), {t['config']['threads']} | {o['ms_per_step'] / t['ms_per_step']:.2f}x | "
              f"{o['cpu_ms_per_step'] / t['cpu_ms_per_step']:.2f}x | "
              f"{max(x['r']['peak_rss_mb'] for x in mine if x['engine'] == 'onnx'):,} / "
              f"{max(x['r']['peak_rss_mb'] for x in mine if x['engine'] != 'onnx'):,} |")


if __name__ == "__main__":
    main()
