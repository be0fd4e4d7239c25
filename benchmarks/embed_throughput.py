"""Embedding throughput: genoembed's TransformersEmbedder vs a stock transformers loop, same run.

Models are random-init ``EsmForMaskedLM`` directories of the Nucleotide
Transformer v2 shapes (rotary positions, 6-mer ``EsmTokenizer`` written by
:func:`genoembed.embedders.tokenize.write_kmer_tokenizer`) plus the shipped default
model (``genoembed/data/models/genoembed-nt6`` when installed, else its
4 x 256 shape at random init). Inputs are 1 kb tiles of a synthetic genome
and of the Arabidopsis chloroplast shipped with genoembed.

Paths, each over the same tiles, interleaved repeat by repeat so machine load
hits them alike:

- ``stock``: what a user writes with transformers: ``AutoTokenizer`` on every
  batch, ``AutoModel`` with SDPA, mean over the content tokens (attention mask
  minus the tokenizer's special tokens), bf16 autocast on CUDA, float32 on CPU;
  the same loop in float32 is the reference for the agreement check;
- ``genoembed``: ``TransformersEmbedder`` with its defaults
  (reverse_complement=False, so both paths do the same work);
- variants: ``+compile``, ``bf16``, ``threads=1`` (CPU) and the same
  knob on the stock loop (``stock threads=1``), so every gain is attributed.

Before timing, every path's vectors must agree with stock float32 (cosine >=
0.999 per row). One JSON line per (model, data, path): Mbp/s, tokens/s,
achieved TFLOP/s (2 x non-embedding params x tokens + attention 4 x L x t x h
per token), the ratio to stock, GPU idle % (CUDA: 1 - model time by CUDA
events / wall time), peak RSS and GPU memory during the path, and hg38
(3.1 Gbp of non-overlapping single-strand tiles) extrapolated. Then the
memory check: ``genoembed.build.index`` on a 5 and a 25 Mbp synthetic
genome, one subprocess each, peak RSS of each.

    python benchmarks/embed_throughput.py --device cpu --size s
    python benchmarks/embed_throughput.py --device cuda --size l
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genoembed.resources import default_model_dir, resolve
from genoembed.synthetic import random_sequence
from genoembed.embedders.tokenize import kmer_vocab, write_kmer_tokenizer

HG38_BP = 3.1e9
TILE_BP = 1000
MIN_COSINE = 0.999
REAL_FASTA = "genoembed:data/demo/NC_000932.fa"


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int


SHAPES = {
    "default": Shape("default-4x256", 4, 256, 4, 1024),  # genoembed pretrain's default shape
    "50M": Shape("nt-v2-50M-shape-12x512", 12, 512, 16, 2048),
    "250M": Shape("nt-v2-250M-shape-24x768", 24, 768, 16, 3072),
    "500M": Shape("nt-v2-500M-shape-29x1024", 29, 1024, 16, 4096),
}

# size -> device -> [(shape key, tiles per data set)]
PLANS = {
    "s": {"cpu": [("default", 256), ("50M", 96)], "cuda": [("default", 8192), ("50M", 8192)]},
    "m": {"cpu": [("default", 1024), ("50M", 256), ("250M", 64)],
          "cuda": [("default", 32768), ("50M", 32768), ("250M", 16384)]},
    "l": {"cpu": [("default", 4096), ("50M", 1024), ("250M", 256), ("500M", 128)],
          "cuda": [("default", 65536), ("50M", 65536), ("250M", 32768), ("500M", 16384)]},
}


# --------------------------------------------------------------------------- models and data


def build_model(directory: Path, shape: Shape) -> Path:
    """A random-init EsmForMaskedLM of ``shape`` with a 6-mer tokenizer, saved like a real checkpoint."""
    from transformers import EsmConfig, EsmForMaskedLM

    write_kmer_tokenizer(directory, k=6)
    config = EsmConfig(
        vocab_size=len(kmer_vocab(6)), pad_token_id=1, mask_token_id=2, eos_token_id=4,
        hidden_size=shape.hidden, num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate, max_position_embeddings=2050,
        position_embedding_type="rotary", token_dropout=False, emb_layer_norm_before=False,
        tie_word_embeddings=True, is_folding_model=False,
    )
    config.architectures = ["EsmForMaskedLM"]
    torch.manual_seed(0)
    EsmForMaskedLM(config).save_pretrained(str(directory))
    return directory


def model_for(key: str, root: Path) -> tuple[str, Path]:
    if key == "default":
        shipped = default_model_dir()
        if shipped is not None:
            return "default-shipped", shipped
    shape = SHAPES[key]
    return shape.name, build_model(root / shape.name, shape)


def synthetic_tiles(n: int) -> list[str]:
    genome = random_sequence(n * TILE_BP, seed=11)
    return [genome[i : i + TILE_BP] for i in range(0, n * TILE_BP, TILE_BP)]


def real_tiles(n: int) -> list[str]:
    """1 kb tiles of the chloroplast, stride chosen to give ``n`` tiles (wrapping around if needed)."""
    lines = resolve(REAL_FASTA).read_text().splitlines()
    genome = "".join(line.strip() for line in lines if not line.startswith(">")).upper()
    stride = max(1, (len(genome) - TILE_BP) // n)
    starts = [(i * stride) % (len(genome) - TILE_BP) for i in range(n)]
    return [genome[s : s + TILE_BP] for s in starts]


# --------------------------------------------------------------------------- the two paths


class StockLoop:
    """The loop a transformers user writes; ``autocast`` bf16 on CUDA unless ``fp32``."""

    def __init__(self, directory: Path, device: str, batch_size: int, fp32: bool = False):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(directory), local_files_only=True, attn_implementation="sdpa",
                                               add_pooling_layer=False).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.autocast = device == "cuda" and not fp32

    def embed(self, tiles: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(tiles), self.batch_size):
            encoded = self.tokenizer(tiles[start : start + self.batch_size], padding=True, return_tensors="pt",
                                     return_special_tokens_mask=True)
            special = encoded.pop("special_tokens_mask")
            encoded = {k: v.to(self.device) for k, v in encoded.items()}
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                hidden = self.model(**encoded).last_hidden_state
            weights = (encoded["attention_mask"] * (1 - special.to(self.device))).unsqueeze(-1).float()
            out.append(((hidden.float() * weights).sum(1) / weights.sum(1)).cpu().numpy())
        return np.concatenate(out)


class StockThreads(StockLoop):
    """The stock loop with torch's intra-op threads set for the call."""

    def __init__(self, *args, threads: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads = threads

    def embed(self, tiles):
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return super().embed(tiles)
        finally:
            torch.set_num_threads(before)


def genoembed_paths(directory: Path, device: str, batch_size: int, with_variants: bool) -> dict:
    from genoembed.embedders.hf import TransformersEmbedder

    def make(**options):
        # frames=1: the engine's speed per forward pass, as the stock loop does (frames=k is k times the work)
        return TransformersEmbedder(directory, reverse_complement=False, device=device, frames=1, **options)

    paths = {"genoembed": lambda: make(batch_size=batch_size)}
    if device == "cpu":
        paths["genoembed bf16"] = lambda: make(batch_size=batch_size, dtype="bfloat16")
        if with_variants:
            paths["genoembed threads=1"] = lambda: make(batch_size=batch_size, threads=1)
            paths["genoembed +compile"] = lambda: make(batch_size=batch_size, compile=True)
            paths["genoembed bf16 threads=1"] = lambda: make(batch_size=batch_size, dtype="bfloat16", threads=1)
            paths["genoembed bf16 +compile"] = lambda: make(batch_size=batch_size, dtype="bfloat16", compile=True)
    else:
        paths["genoembed +compile"] = lambda: make(batch_size=batch_size, compile=True)
        paths["genoembed batch=auto"] = lambda: make(batch_size="auto")
    return paths


# --------------------------------------------------------------------------- measuring


class PeakRss:
    """Peak resident set size of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class CudaBusy:
    """Sums model forward time by CUDA events (forward pre/post hooks) to get the GPU idle fraction."""

    def __init__(self, model):
        self.pairs: list[tuple] = []
        self._handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def _pre(self, module, args):
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        self.pairs.append([start, None])

    def _post(self, module, args, output):
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.pairs[-1][1] = end

    def reset(self):
        self.pairs = []

    def seconds(self) -> float:
        torch.cuda.synchronize()
        return sum(a.elapsed_time(b) for a, b in self.pairs if b is not None) / 1e3

    def remove(self):
        for handle in self._handles:
            handle.remove()


def model_flops_per_token(model, tokens_per_row: int) -> tuple[int, float]:
    """(non-embedding parameters, FLOPs per token: 2 x params + attention 4 x layers x t x hidden)."""
    config = model.config
    embedding = sum(p.numel() for name, p in model.named_parameters() if "embeddings" in name)
    params = sum(p.numel() for p in model.parameters()) - embedding
    attention = 4 * config.num_hidden_layers * tokens_per_row * config.hidden_size
    return params, 2.0 * params + attention


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def measure_model(label: str, directory: Path, n_tiles: int, device: str, batch_size: int, repeats: int,
                  with_variants: bool, machine: str) -> list[dict]:
    datasets = {"synthetic": synthetic_tiles(n_tiles), "chloroplast": real_tiles(n_tiles)}
    reference_loop = StockLoop(directory, device, batch_size, fp32=True)
    references = {name: reference_loop.embed(tiles) for name, tiles in datasets.items()}
    tokens_per_row = int(reference_loop.tokenizer(datasets["synthetic"][:1], return_tensors="pt")
                         ["input_ids"].shape[1])
    params, flops_per_token = model_flops_per_token(reference_loop.model, tokens_per_row)
    del reference_loop

    # Build every path (loading and the bf16 probe check happen here, untimed).
    builders = {"stock": lambda: StockLoop(directory, device, batch_size)}
    if device == "cpu" and with_variants:
        builders["stock threads=1"] = lambda: StockThreads(directory, device, batch_size, threads=1)
    builders.update(genoembed_paths(directory, device, batch_size, with_variants))
    paths, notes = {}, {}
    for name, build in builders.items():
        try:
            paths[name] = build()
        except Exception as err:  # noqa: BLE001 - a refused variant (bf16 failing its probe check) is reported
            notes[name] = f"{type(err).__name__}: {err}"
            continue
        notes[name] = "; ".join(getattr(paths[name], "notes", []))

    # Correctness first (this call also warms up, and compiles the +compile path).
    agreement = {}
    for name, path in paths.items():
        agreement[name] = {data: float(row_cosines(path.embed(tiles), references[data]).min())
                           for data, tiles in datasets.items()}
    for name, worst in agreement.items():
        if min(worst.values()) < MIN_COSINE:
            print(f"# {label}: {name} disagrees with stock float32 (min cosine {worst})", file=sys.stderr)

    busy = {}
    if device == "cuda":
        for name, path in paths.items():
            if "compile" not in name:
                busy[name] = CudaBusy(path.model)
    times = {(name, data): [] for name in paths for data in datasets}
    peaks = {(name, data): [0, 0] for name in paths for data in datasets}
    gpu_busy = {(name, data): [] for name in paths for data in datasets}
    for _ in range(repeats):
        for data, tiles in datasets.items():
            for name, path in paths.items():
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    if name in busy:
                        busy[name].reset()
                with PeakRss() as rss:
                    started = time.perf_counter()
                    path.embed(tiles)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    elapsed = time.perf_counter() - started
                times[name, data].append(elapsed)
                peaks[name, data][0] = max(peaks[name, data][0], rss.peak)
                if device == "cuda":
                    peaks[name, data][1] = max(peaks[name, data][1], torch.cuda.max_memory_allocated())
                    if name in busy:
                        gpu_busy[name, data].append(busy[name].seconds() / elapsed)

    rows = []
    for data, tiles in datasets.items():
        stock_seconds = float(np.median(times["stock", data]))
        for name in paths:
            seconds = float(np.median(times[name, data]))
            bp = sum(len(t) for t in tiles)
            tokens = len(tiles) * tokens_per_row
            rate = bp / seconds
            rows.append({
                "benchmark": "embed_throughput", "model": label, "params_non_embedding": params,
                "data": data, "path": name, "device": device, "machine": machine,
                "tiles": len(tiles), "tokens_per_tile": tokens_per_row, "batch_size": batch_size,
                "repeats": repeats, "torch_threads": torch.get_num_threads(),
                "seconds_median": round(seconds, 4), "seconds_min": round(min(times[name, data]), 4),
                "mbp_per_s": round(rate / 1e6, 5), "tokens_per_s": round(tokens / seconds, 1),
                "tflops": round(flops_per_token * tokens / seconds / 1e12, 5),
                "x_stock": round(stock_seconds / seconds, 3),
                "min_cosine_vs_stock_fp32": round(agreement[name][data], 6),
                "agrees": agreement[name][data] >= MIN_COSINE,
                "gpu_idle_pct": (round(100 * (1 - float(np.median(gpu_busy[name, data]))), 1)
                                 if gpu_busy[name, data] else None),
                "peak_rss_mb": round(peaks[name, data][0] / 2**20, 1),
                "peak_gpu_mb": round(peaks[name, data][1] / 2**20, 1) if device == "cuda" else None,
                "hg38_hours": round(HG38_BP / rate / 3600, 2),
                "notes": notes.get(name, ""),
            })
    for name, note in notes.items():
        if name not in paths:
            rows.append({"benchmark": "embed_throughput", "model": label, "path": name, "device": device,
                         "machine": machine, "refused": note})
    for counter in busy.values():
        counter.remove()
    return rows


# --------------------------------------------------------------------------- tokenisation alone


def tokenize_rates(tiles: int = 4096, hf_tiles: int = 256) -> dict:
    """Mbp/s of genoembed's vectorised 6-mer tokenisation vs the HF EsmTokenizer, one thread, same ids."""
    from transformers import AutoTokenizer

    from genoembed.embedders.tokenize import kmer_token_ids

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(str(write_kmer_tokenizer(Path(tmp) / "tok")))
    vocab = tokenizer.get_vocab()
    sequences = synthetic_tiles(tiles)
    expected = tokenizer(sequences[:hf_tiles], padding=True, return_tensors="np")["input_ids"]
    if not np.array_equal(kmer_token_ids(sequences[:hf_tiles], vocab)["input_ids"], expected):
        raise RuntimeError("vectorised tokenisation disagrees with the HF tokenizer")
    best = {}
    for name, run, n in (("genoembed_kmer_token_ids", lambda: kmer_token_ids(sequences, vocab), tiles),
                         ("hf_esm_tokenizer", lambda: tokenizer(sequences[:hf_tiles], padding=True,
                                                                return_tensors="np"), hf_tiles)):
        run()
        seconds = []
        for _ in range(3):
            started = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - started)
        best[name] = round(n * TILE_BP / min(seconds) / 1e6, 2)
    return {"benchmark": "tokenize_throughput", "unit": "Mbp/s (best of 3, one process)", **best,
            "x_hf": round(best["genoembed_kmer_token_ids"] / best["hf_esm_tokenizer"], 1)}


# --------------------------------------------------------------------------- memory vs genome size


def memory_child(mbp: float, workdir: Path, model: str, shard_rows: int) -> dict:
    """Run in a subprocess: index a synthetic genome of ``mbp`` Mbp; report this process's peak RSS."""
    from genoembed.build import index
    from genoembed.synthetic import random_genome, write_fasta
    from genoembed.tiles import TilingSpec

    n_contigs = 5
    per = int(mbp * 1e6 / n_contigs)
    fasta = write_fasta(workdir / "genome.fa", random_genome({f"chr{i}": per for i in range(n_contigs)}, seed=3))
    if model == "kmer":
        from genoembed.embedders.kmer import KmerEmbedder

        embedder = KmerEmbedder(k=4)
    else:
        from genoembed.embedders.hf import TransformersEmbedder

        embedder = TransformersEmbedder(model, reverse_complement=False, frames=1)
    import gc

    gc.collect()
    before = _rss_bytes()
    started = time.perf_counter()
    with PeakRss() as rss:
        store = index(fasta, workdir / "store", embedder=embedder, tiling=TilingSpec(), index_spec=None,
                      shard_rows=shard_rows)
    return {"benchmark": "embed_memory", "genome_mbp": mbp, "embedder": model, "tiles": store.num_tiles,
            "shard_rows": shard_rows,
            "seconds": round(time.perf_counter() - started, 2),
            "rss_before_mb": round(before / 2**20, 1), "peak_rss_during_index_mb": round(rss.peak / 2**20, 1),
            "process_peak_rss_mb": round(_vm_hwm_bytes() / 2**20, 1)}


def _vm_hwm_bytes() -> int:
    """This process's peak RSS (VmHWM; unlike ru_maxrss it does not carry over the parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_check(sizes: list[float], model: str, shard_rows: int) -> list[dict]:
    rows = []
    for mbp in sizes:
        with tempfile.TemporaryDirectory(prefix="genoembed-mem-") as tmp:
            result = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(mbp), "--workdir", tmp, "--memory-model", model,
                 "--memory-shard-rows", str(shard_rows)],
                capture_output=True, text=True, check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"memory child for {mbp} Mbp failed:\n{result.stderr[-2000:]}")
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return rows


# --------------------------------------------------------------------------- main


def machine_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=tuple(PLANS), default="s")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CPU, 1024 on CUDA")
    parser.add_argument("--tiles", type=int, default=None, help="tiles per data set (default: by --size)")
    parser.add_argument("--models", default=None, help="comma-separated subset of " + ",".join(SHAPES))
    parser.add_argument("--no-variants", action="store_true", help="stock vs genoembed and bf16 only")
    parser.add_argument("--memory-sizes", default="5,25", help="Mbp per memory run ('' to skip)")
    parser.add_argument("--memory-model", default="kmer", help="'kmer' or a model directory")
    parser.add_argument("--memory-shard-rows", type=int, default=65536,
                        help="index(shard_rows=...): the writer holds up to this many tiles before a shard")
    parser.add_argument("--memory-child", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, Path(args.workdir), args.memory_model,
                                      args.memory_shard_rows)), flush=True)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is available")
    batch_size = args.batch_size or (64 if args.device == "cpu" else 1024)
    plan = PLANS[args.size][args.device]
    if args.models is not None:
        wanted = [key for key in args.models.split(",") if key]
        plan = [(key, n) for key, n in plan if key in wanted]
    if args.tiles:
        plan = [(key, args.tiles) for key, _ in plan]
    machine = machine_name(args.device)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="genoembed-bench-") as tmp:
        for index, (key, n_tiles) in enumerate(plan):
            label, directory = model_for(key, Path(tmp))
            variants = not args.no_variants and index == 0  # knob-by-knob on the default model
            for row in measure_model(label, directory, n_tiles, args.device, batch_size, args.repeats,
                                     variants, machine):
                print(json.dumps(row), flush=True)
    print(json.dumps(tokenize_rates()), flush=True)
    sizes = [float(x) for x in args.memory_sizes.split(",") if x.strip()]
    for row in memory_check(sizes, args.memory_model, args.memory_shard_rows):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
