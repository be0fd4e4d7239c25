"""Serve benchmark: one-region search latency (p50/p99) and QPS over HTTP, one client and 8 concurrent clients.

Builds (or reuses) a store of the E. coli 536 genome (1 kb tiles every 500 bp, both strands) with the
shipped default model and a Flat index, starts `genoembed serve` on it as a subprocess on a free
loopback port, checks that the served hits equal `genoembed.search.search`'s, then times seeded random
1 kb region queries (k=10; no annotations in this store) from one keep-alive client and from 8 clients
at once. For contrast it times one `genoembed search` of the same kind from a cold start.
Prints one JSON line.

    PYTHONPATH=. .venv/bin/python benchmarks/serve.py                       # store in a temp dir
    PYTHONPATH=. .venv/bin/python benchmarks/serve.py --store /tmp/ecoli    # built once, then reused
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from genoembed.build import index
from genoembed.search import search
from genoembed.store import Store
from genoembed.tiles import TilingSpec

CLI = [sys.executable, "-c", "from genoembed.cli import main; main()"]
GENOME = Path(__file__).resolve().parents[2] / "shared" / "data" / "ecoli_536" / "NC_008253.fna.gz"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def open_or_build(path: Path) -> Store:
    if (path / "manifest.json").is_file():
        return Store.open(path)
    return index(GENOME, path, tiling=TilingSpec(window=1000, stride=500, strands="both"))


def regions(store: Store, count: int, seed: int) -> list[str]:
    """Seeded random 1 kb regions (1-based, as a user types them)."""
    chrom, length = next(iter(next(iter(store.contig_lengths.values())).items()))
    starts = np.random.default_rng(seed).integers(0, length - 1000, size=count)
    return [f"{chrom}:{start + 1}-{start + 1000}" for start in starts]


def timed(client: httpx.Client, region: str) -> float:
    began = time.perf_counter()
    reply = client.post("/search", json={"regions": [region], "k": 10})
    elapsed = time.perf_counter() - began
    if reply.status_code != 200:
        raise RuntimeError(f"{region}: HTTP {reply.status_code} {reply.text}")
    return elapsed


def run_clients(url: str, work: list[str], clients: int) -> tuple[list[float], float]:
    """Every client takes its share of ``work`` on its own keep-alive connection; latencies and wall time."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client_loop(share: list[str]) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            mine = [timed(client, region) for region in share]
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client_loop, args=(work[n::clients],)) for n in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - began


def summary(latencies: list[float], wall: float) -> dict:
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "qps": round(len(ms) / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="Store path (built there when missing; default: a temp dir).")
    parser.add_argument("--requests", type=int, default=300, help="Requests per phase.")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent clients in the second phase.")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    scratch = None if args.store else Path(tempfile.mkdtemp(prefix="genoembed-serve-bench-"))
    path = args.store or scratch / "ecoli_536"
    began = time.perf_counter()
    store = open_or_build(path)
    build_s = time.perf_counter() - began
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*CLI, "serve", str(path), "--port", str(port), "-q"],
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        began = time.perf_counter()
        with httpx.Client(base_url=url, timeout=60) as client:
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    if server.poll() is not None:
                        raise SystemExit("genoembed serve exited before answering") from None
                    time.sleep(0.1)
            startup_s = time.perf_counter() - began
            probe = regions(store, 1, args.seed + 1)[0]
            served = client.post("/search", json={"regions": [probe], "k": 10}).json()["rows"]
            local = search(store, [probe], k=10, embedder=store.embedder()).to_pylist()
            assert [h["tile_id"] for h in served] == [h["tile_id"] for h in local], "served hits differ"
            for region in regions(store, 20, args.seed + 2):  # warm-up
                timed(client, region)
        work = regions(store, args.requests, args.seed)
        one = summary(*run_clients(url, work, 1))
        many = summary(*run_clients(url, work, args.clients))
    finally:
        server.terminate()
        server.wait(30)
    began = time.perf_counter()
    subprocess.run([*CLI, "search", str(path), "-r", probe, "-k", "10", "--no-save",
                    "-f", "tsv"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    cold_cli_s = time.perf_counter() - began
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"tiles": store.num_tiles, "model": store.provenance["embedder"].get("model_id"),
                      "build_s": round(build_s, 1), "server_start_s": round(startup_s, 2), "one_client": one,
                      f"{args.clients}_clients": many, "cold_cli_search_s": round(cold_cli_s, 2),
                      "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
