"""Every GPU claim of genoembed in one prepared run (under 8 minutes on one H100); writes one JSON file.

Sections (each timed, each recorded even when it fails or is skipped, with the reason):

- ``probe``: bf16 vs fp32 vectors on CUDA of the NT-v2-50M shape (random init, rotary, 6-mer tokens) on
  chloroplast tiles: the load-time probe cosine the embedder now checks on CUDA, and the cosines of real tiles;
- ``attention``: xformers' memory-efficient attention vs SDPA on *padded* batches (tiles of mixed lengths):
  vectors (cosine) and time. xformers is kept in genoembed only if this says it is faster;
- ``compile``: a real ``torch.compile`` (inductor) of the embedder vs eager: first-call (compile) time,
  steady-state time, cosine;
- ``faiss``: FAISS Flat search and IVF training + search on the GPU against the CPU, recall against exact;
- ``throughput``: the NT-v2-50M shape, 1 kb tiles, genoembed vs a stock transformers loop (bf16 autocast,
  SDPA, the model's own tokenizer): Mbp/s, the ratio (target >= 2.5x) and hg38 (3.1 Gbp of single-strand,
  single-frame 1 kb tiles: target < 3 minutes).

``--dry-run`` runs the same code on the CPU with tiny shapes (the suite runs it: tests/test_gpu_check.py);
sections that need CUDA or a package that is missing are recorded as skipped.

On a lent GPU machine (no network; its image has torch, transformers, pyarrow, numpy, typer and rich), the
packages it lacks travel as wheels with the working tree (64 MiB a call; the tree is ~26 MB): pyfaidx (30 kB,
which ``import genoembed`` needs), faiss-cpu (19 MB) and xformers (3.3 MB, needs torch >= 2.10)::

    echo /.whl/ >> .git/info/exclude
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl pyfaidx faiss-cpu xformers
    # on the machine, carrying .whl:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
        PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py --output $OUT/gpu_check.json

FAISS on the GPU needs ``faiss-gpu-cu12`` (48 MB) *and* ``nvidia-cublas-cu12`` (581 MB: the image ships CUDA
13's cuBLAS, not 12's), which does not fit the 64 MiB a call may carry: there the ``faiss`` section records
that FAISS has no GPU and measures the CPU side only. Where pip reaches PyPI, ``pip install faiss-gpu-cu12``
in place of faiss-cpu is all it takes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embed_throughput as et  # noqa: E402  (the stock loop, model shapes and tiles of the throughput benchmark)

HG38_BP = 3.1e9
TARGET_X_STOCK = 2.5
TARGET_HG38_MIN = 3.0
TINY = et.Shape("tiny-2x32", 2, 32, 2, 64)


def sizes(dry_run: bool) -> dict:
    """How much each section does: full on a GPU, a few tiles on the CPU."""
    if dry_run:
        return {"device": "cpu", "shape": TINY, "probe_tiles": 16, "padded_tiles": 24, "compile_tiles": 32,
                "throughput_tiles": 64, "batch": 16, "repeats": 1, "faiss_n": 4000, "faiss_queries": 50,
                "faiss_lists": 16}
    return {"device": "cuda", "shape": et.SHAPES["50M"], "probe_tiles": 512, "padded_tiles": 4096,
            "compile_tiles": 8192, "throughput_tiles": 32768, "batch": 1024, "repeats": 3,
            "faiss_n": 1_000_000, "faiss_queries": 10_000, "faiss_lists": 4096}


# --------------------------------------------------------------------------- sections


def environment(ctx: dict) -> dict:
    import torch
    import transformers

    from genoembed.version import VERSION

    found = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
             "genoembed": VERSION, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
    for name in ("xformers", "faiss"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found


def embedder(ctx: dict, **options):
    from genoembed.embedders.hf import TransformersEmbedder

    return TransformersEmbedder(ctx["model"], device=ctx["device"], reverse_complement=False, frames=1,
                                batch_size=ctx["batch"], **options)


def timed_embed(path, tiles: list[str], repeats: int) -> tuple[float, np.ndarray]:
    """Median seconds of ``repeats`` calls after one untimed call, and the vectors."""
    import torch

    vectors = path.embed(tiles)
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        vectors = path.embed(tiles)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return float(np.median(times)), vectors


def cosine_summary(a: np.ndarray, b: np.ndarray) -> dict:
    cosines = et.row_cosines(a, b)
    return {"min": round(float(cosines.min()), 6), "mean": round(float(cosines.mean()), 6),
            "p01": round(float(np.quantile(cosines, 0.01)), 6)}


def probe(ctx: dict) -> dict:
    """bf16 against fp32 on the section's device: the load-time probe check, then real tiles."""
    tiles = et.real_tiles(ctx["probe_tiles"])
    fp32 = embedder(ctx, dtype="float32")
    bf16 = embedder(ctx, dtype="bfloat16")
    return {"tiles": len(tiles), "load_probe_cosine": round(bf16.probe_cosine, 6), "notes": bf16.notes,
            "bf16_vs_fp32": cosine_summary(bf16.embed(tiles), fp32.embed(tiles)),
            "recorded_dtype": bf16.describe().get("dtype"), "same_fingerprint": bf16.fingerprint == fp32.fingerprint}


def padded_tiles(n: int) -> list[str]:
    """Tiles of 200-1000 bp (seeded), so every batch is padded and the attention mask matters."""
    lengths = np.random.default_rng(5).integers(200, 1001, n)
    genome = et.synthetic_tiles(n)
    return [tile[:length] for tile, length in zip(genome, lengths)]


def attention(ctx: dict) -> dict:
    try:
        import xformers.ops  # noqa: F401
    except ImportError as err:
        return {"skipped": f"xformers is not installed ({err}); genoembed keeps it opt-in, unmeasured"}
    tiles = padded_tiles(ctx["padded_tiles"])
    dtype = "bfloat16" if ctx["device"] == "cuda" else "float32"
    sdpa = embedder(ctx, dtype=dtype, attention="sdpa")
    xformers = embedder(ctx, dtype=dtype, attention="xformers")
    sdpa_s, sdpa_vectors = timed_embed(sdpa, tiles, ctx["repeats"])
    xformers_s, xformers_vectors = timed_embed(xformers, tiles, ctx["repeats"])
    return {"tiles": len(tiles), "dtype": dtype, "sdpa_s": round(sdpa_s, 4), "xformers_s": round(xformers_s, 4),
            "x_sdpa": round(sdpa_s / xformers_s, 3), "xformers_faster": xformers_s < sdpa_s,
            "xformers_vs_sdpa": cosine_summary(xformers_vectors, sdpa_vectors), "attention": xformers.attention}


def compile_check(ctx: dict) -> dict:
    if ctx["dry_run"]:
        return {"skipped": "dry run: inductor's CPU compile takes tens of seconds; the GPU run is the check"}
    tiles = et.synthetic_tiles(ctx["compile_tiles"])
    eager = embedder(ctx, dtype="bfloat16")
    compiled = embedder(ctx, dtype="bfloat16", compile=True)
    started = time.perf_counter()
    compiled.embed(tiles[: ctx["batch"]])  # the first full batch compiles
    first_s = time.perf_counter() - started
    eager_s, eager_vectors = timed_embed(eager, tiles, ctx["repeats"])
    compiled_s, compiled_vectors = timed_embed(compiled, tiles, ctx["repeats"])
    return {"tiles": len(tiles), "first_batch_s": round(first_s, 2), "eager_s": round(eager_s, 4),
            "compiled_s": round(compiled_s, 4), "x_eager": round(eager_s / compiled_s, 3),
            "compiled_used": compiled._compiled is not None, "notes": compiled.notes,
            "compiled_vs_eager": cosine_summary(compiled_vectors, eager_vectors)}


def faiss_check(ctx: dict) -> dict:
    from genoembed.recall import recall_at
    from genoembed.vector_index import gpu_available, gpu_resources, import_faiss, on_search_device

    faiss = import_faiss()
    rng = np.random.default_rng(0)
    dim, k = 256, 10
    database = rng.normal(size=(ctx["faiss_n"], dim)).astype(np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    queries = database[rng.choice(len(database), ctx["faiss_queries"], replace=False)]
    queries = queries + rng.normal(scale=0.05, size=queries.shape).astype(np.float32)
    train = database[rng.choice(len(database), min(len(database), 64 * ctx["faiss_lists"]), replace=False)]
    result = {"vectors": len(database), "queries": len(queries), "dim": dim, "faiss": faiss.__version__,
              "gpu": gpu_available()}

    def seconds(call):
        started = time.perf_counter()
        value = call()
        return round(time.perf_counter() - started, 4), value

    flat = faiss.IndexFlatIP(dim)
    flat.add(database)
    result["cpu_flat_search_s"], (_, exact) = seconds(lambda: flat.search(queries, k))
    ivf = faiss.index_factory(dim, f"IVF{ctx['faiss_lists']},Flat", faiss.METRIC_INNER_PRODUCT)
    result["cpu_ivf_train_s"], _ = seconds(lambda: ivf.train(train))
    ivf.add(database)
    ivf.nprobe = 16
    result["cpu_ivf_search_s"], (_, found) = seconds(lambda: ivf.search(queries, k))
    result["cpu_ivf_recall_at_10"] = recall_at(found, exact, k)
    if not result["gpu"]:
        result["gpu_skipped"] = "the installed faiss has no GPU support or sees no GPU (faiss-gpu-cu12 needed)"
        return result
    gpu_flat = on_search_device(flat)
    gpu_flat.search(queries[:10], k)  # warm-up: the copy to the GPU and its scratch memory
    result["gpu_flat_search_s"], (_, gpu_exact) = seconds(lambda: gpu_flat.search(queries, k))
    result["gpu_flat_recall_at_10"] = recall_at(gpu_exact, exact, k)
    empty = faiss.index_factory(dim, f"IVF{ctx['faiss_lists']},Flat", faiss.METRIC_INNER_PRODUCT)
    on_gpu = faiss.index_cpu_to_gpu(gpu_resources(), 0, empty)
    result["gpu_ivf_train_s"], _ = seconds(lambda: on_gpu.train(train))
    trained = faiss.index_gpu_to_cpu(on_gpu)
    trained.add(database)
    gpu_ivf = on_search_device(trained)
    faiss.GpuParameterSpace().set_index_parameter(gpu_ivf, "nprobe", 16)
    result["gpu_ivf_search_s"], (_, gpu_found) = seconds(lambda: gpu_ivf.search(queries, k))
    result["gpu_ivf_recall_at_10"] = recall_at(gpu_found, exact, k)
    for name in ("flat_search", "ivf_train", "ivf_search"):
        result[f"x_cpu_{name}"] = round(result[f"cpu_{name}_s"] / result[f"gpu_{name}_s"], 2)
    return result


def throughput(ctx: dict) -> dict:
    from genoembed.embedders.loading import quiet_transformers

    tiles = et.synthetic_tiles(ctx["throughput_tiles"])
    with quiet_transformers():  # the MLM head the stock AutoModel leaves unused is no news
        stock = et.StockLoop(ctx["model"], ctx["device"], ctx["batch"])
        reference = et.StockLoop(ctx["model"], ctx["device"], ctx["batch"], fp32=True).embed(tiles[:256])
    paths = {"stock": stock, "genoembed": embedder(ctx)}
    if ctx.get("compile_ok"):
        paths["genoembed +compile"] = embedder(ctx, compile=True)
    rows = {}
    for name, path in paths.items():
        seconds, vectors = timed_embed(path, tiles, ctx["repeats"])
        rate = len(tiles) * et.TILE_BP / seconds
        rows[name] = {"seconds": round(seconds, 4), "mbp_per_s": round(rate / 1e6, 3),
                      "hg38_min": round(HG38_BP / rate / 60, 2),
                      "vs_stock_fp32": cosine_summary(vectors[:256], reference)}
    for row in rows.values():
        row["x_stock"] = round(rows["stock"]["seconds"] / row["seconds"], 3)
    best = max((name for name in rows if name != "stock"), key=lambda name: rows[name]["x_stock"])
    return {"tiles": len(tiles), "shape": ctx["shape"].name, "batch": ctx["batch"], "paths": rows, "best": best,
            "meets_x_stock": rows[best]["x_stock"] >= TARGET_X_STOCK,
            "meets_hg38": rows[best]["hg38_min"] < TARGET_HG38_MIN}


SECTIONS = {"environment": environment, "probe": probe, "attention": attention, "compile": compile_check,
            "faiss": faiss_check, "throughput": throughput}


# --------------------------------------------------------------------------- running


def run(dry_run: bool, only: list[str], workdir: Path) -> dict:
    import torch

    ctx = {**sizes(dry_run), "dry_run": dry_run}
    if ctx["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on the CPU")
    ctx["model"] = et.build_model(workdir / ctx["shape"].name, ctx["shape"])
    report = {"benchmark": "gpu_check", "dry_run": dry_run, "device": ctx["device"], "machine": platform.node(),
              "date": time.strftime("%Y-%m-%d"), "targets": {"x_stock": TARGET_X_STOCK, "hg38_min": TARGET_HG38_MIN},
              "sections": {}}
    began = time.perf_counter()
    for name, section in SECTIONS.items():
        if only and name not in only and name != "environment":
            continue
        started = time.perf_counter()
        try:
            result = section(ctx)
        except Exception as err:  # noqa: BLE001 - one failing check must not hide the others' figures
            result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=4)}
        result["wall_s"] = round(time.perf_counter() - started, 2)
        report["sections"][name] = result
        ctx["compile_ok"] = ctx.get("compile_ok") or (name == "compile" and "x_eager" in result)
        print(json.dumps({name: result}, default=str), file=sys.stderr, flush=True)
    report["wall_s"] = round(time.perf_counter() - began, 1)
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks the script itself")
    parser.add_argument("--output", type=Path, default=Path("gpu_check.json"), help="the JSON file to write")
    parser.add_argument("--only", nargs="*", default=[], choices=[s for s in SECTIONS if s != "environment"],
                        help="run only these sections")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        report = run(options.dry_run, options.only, Path(workdir))
    options.output.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(json.dumps({"benchmark": "gpu_check", "output": str(options.output), "wall_s": report["wall_s"]}))


if __name__ == "__main__":
    main()
