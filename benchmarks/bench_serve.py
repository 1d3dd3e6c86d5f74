"""`make bench-serve`: `diffrt serve` under load from concurrent HTTP clients, beside the server a user would
otherwise write (diffusers behind FastAPI, one pipeline, a lock), in one run on one machine.

For each model (the bundled digits model at 32x32; the SD 1.5 architecture with random weights at 256x256) and each
server (diffrt with step batching, diffrt one job at a time, diffusers + FastAPI), closed-loop clients at concurrency
1, 2, 4 and 8 each send requests one after another; throughput (images per minute) and p50 / p95 / p99 latency
are recorded per level, with the server process's peak RSS. Then an overload burst: 4x the queue capacity of
requests at once at the batching server; every accepted request must complete, the rest get 429, none a 5xx.

    python benchmarks/bench_serve.py [--models digits,sd15] [--work build/bench-serve]

Writes benchmarks/results/serve.json and the tables of benchmarks/SERVE.md (between its markers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
CONCURRENCY = (1, 2, 4, 8)
MODELS = {
    # name: (size, steps, guidance, requests per client, prompt)
    "digits": (32, 20, 4.0, 6, "a handwritten digit {i}"),
    "sd15": (256, 10, 7.5, 2, "a photo of a cat number {i}"),
}
SERVERS = ("diffrt, step batching", "diffrt, one at a time", "diffusers + FastAPI + lock")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sources(model: str, work: Path) -> tuple[Path, Path]:
    """(diffusers folder, diffrt package) of ``model``, built and exported once under ``work``."""
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    if model == "digits":
        source = ROOT / "models" / "digits"
        options = ExportOptions(batch=10, check=False)
    else:
        from sd15 import build_source

        source = build_source(work / "sd15-random")
        options = ExportOptions(batch=8, check=False)
    package = work / f"{model}-package"
    if not (package / "diffrt.json").is_file():
        export_package(load_source(source), package, options)
    return source, package


def diffrt_cmd(package: Path, port: int, max_batch: int, max_queue: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "diffrt",
        "serve",
        f"{package}=model",
        "--port",
        str(port),
        "--provider",
        "cpu",
        "--max-batch",
        str(max_batch),
        "--max-queue",
        str(max_queue),
        "--log-level",
        "warning",
    ]


def start(server: str, source: Path, package: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if server.startswith("diffrt"):
        cmd = diffrt_cmd(package, port, 8 if "batching" in server else 1, 64)
    else:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "diffusers_server.py"), str(source), str(port)]
    return launch(cmd, port, log, server)


def launch(cmd: list[str], port: int, log: Path, what: str) -> tuple[subprocess.Popen, str]:
    """Start a server process (its output to ``log``) and wait until its /readyz answers 200."""
    process = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready")
        time.sleep(0.5)


def peak_rss_gb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def body(model: str, i: int) -> dict:
    size, steps, guidance, _, prompt = MODELS[model]
    return {
        "prompt": prompt.format(i=i % 10),
        "size": f"{size}x{size}",
        "steps": steps,
        "guidance_scale": guidance,
        "seed": i,
    }


def run_threads(target, count: int) -> float:
    """Run ``target(i)`` in ``count`` threads at once; the seconds until the last one ends."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def load(url: str, model: str, clients: int, per_client: int) -> dict:
    """``clients`` closed-loop clients, ``per_client`` requests each: throughput and latency percentiles."""
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(k: int) -> None:
        session = requests.Session()
        barrier.wait()
        for j in range(per_client):
            t0 = time.perf_counter()
            try:
                status = session.post(
                    f"{url}/v1/images/generations", json=body(model, k * per_client + j), timeout=3600
                ).status_code
            except requests.RequestException:
                status = 0
            with lock:
                latencies.append(time.perf_counter() - t0)
                statuses.append(status)

    wall = run_threads(client, clients)
    ok = statuses.count(200)
    q = np.percentile(latencies, [50, 95, 99])
    return {
        "clients": clients,
        "requests": len(statuses),
        "ok": ok,
        "wall_s": round(wall, 2),
        "images_per_min": round(60 * ok / wall, 2),
        "p50_s": round(q[0], 3),
        "p95_s": round(q[1], 3),
        "p99_s": round(q[2], 3),
    }


def overload(package: Path, work: Path) -> dict:
    """A burst of 4x the queue capacity at a batching server with a small queue."""
    port = free_port()
    max_queue, max_batch = 8, 4
    process, url = launch(diffrt_cmd(package, port, max_batch, max_queue), port, work / "overload.log", "overload")
    try:
        burst = 4 * (max_queue + max_batch)
        statuses: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(burst)

        def one(i: int) -> None:
            barrier.wait()
            answer = requests.post(f"{url}/v1/images/generations", json=body("digits", i), timeout=600)
            with lock:
                statuses.append(answer.status_code)

        wall = run_threads(one, burst)
        counts = {str(s): statuses.count(s) for s in sorted(set(statuses))}
        return {
            "burst": burst,
            "queue": max_queue,
            "running": max_batch,
            "statuses": counts,
            "five_xx": sum(1 for s in statuses if s >= 500),
            "wall_s": round(wall, 2),
            "peak_rss_gb": round(peak_rss_gb(process.pid), 3),
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)


def run_model(model: str, work: Path) -> dict:
    source, package = sources(model, work)
    per_client = MODELS[model][3]
    out: dict = {"size": MODELS[model][0], "steps": MODELS[model][1], "guidance_scale": MODELS[model][2], "servers": {}}
    for server in SERVERS:
        process, url = start(server, source, package, work / f"{model}-{server.split(',')[0].split()[0]}.log")
        try:
            requests.post(f"{url}/v1/images/generations", json=body(model, 0), timeout=3600)  # warm-up
            levels = []
            for clients in CONCURRENCY:
                levels.append(load(url, model, clients, per_client))
                print(model, server, json.dumps(levels[-1]), flush=True)
            out["servers"][server] = {"levels": levels, "peak_rss_gb": round(peak_rss_gb(process.pid), 3)}
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=300)
    base = out["servers"]["diffusers + FastAPI + lock"]["levels"]
    for server in SERVERS[:2]:
        levels = out["servers"][server]["levels"]
        out["servers"][server]["vs_diffusers"] = [
            {
                "clients": a["clients"],
                "throughput_x": round(a["images_per_min"] / max(b["images_per_min"], 1e-9), 2),
                "p95_x": round(b["p95_s"] / a["p95_s"], 2),
            }
            for a, b in zip(levels, base)
        ]
    return out


def table(results: dict) -> str:
    lines = []
    for model, data in results["models"].items():
        lines += [
            f"### {model} ({data['size']}x{data['size']}, {data['steps']} steps)",
            "",
            "| server | clients | images/min | p50 s | p95 s | p99 s | throughput vs diffusers | p95 vs diffusers |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for server, s in data["servers"].items():
            ratios = {r["clients"]: r for r in s.get("vs_diffusers", [])}
            for level in s["levels"]:
                r = ratios.get(level["clients"])
                extra = f"{r['throughput_x']:.2f}x | {r['p95_x']:.2f}x" if r else "1 | 1"
                lines.append(
                    f"| {server} | {level['clients']} | {level['images_per_min']:.1f} | {level['p50_s']:.2f} "
                    f"| {level['p95_s']:.2f} | {level['p99_s']:.2f} | {extra} |"
                )
        rss = ", ".join(f"{k}: {v['peak_rss_gb']:.2f} GB" for k, v in data["servers"].items())
        lines += ["", f"Peak RSS of the server process: {rss}.", ""]
    if "overload" in results:
        o = results["overload"]
        lines += [
            "### Overload (digits)",
            "",
            f"A burst of {o['burst']} requests at once (4x a queue of {o['queue']} plus {o['running']} running): "
            f"statuses {o['statuses']}, {o['five_xx']} of them 5xx, done in {o['wall_s']} s; "
            f"peak RSS {o['peak_rss_gb']:.2f} GB.",
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="digits,sd15")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-serve")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?"),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "models": {},
    }
    for model in args.models.split(","):
        results["models"][model] = run_model(model, args.work)
        if model == "digits":
            results["overload"] = overload(sources("digits", args.work)[1], args.work)
    out = ROOT / "benchmarks" / "results" / "serve.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    doc = ROOT / "benchmarks" / "SERVE.md"
    text = doc.read_text() if doc.is_file() else "<!-- results -->\n<!-- /results -->\n"
    head, _, rest = text.partition("<!-- results -->")
    _, _, tail = rest.partition("<!-- /results -->")
    machine = f"{results['cpu']}, {results['cores']} cores, {results['date']}"
    doc.write_text(f"{head}<!-- results -->\nMeasured on {machine}.\n\n{table(results)}\n<!-- /results -->{tail}")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
