"""The embedder's throughput knobs change speed, not vectors: each is checked against a stock loop.

The stock loop is what a transformers user writes (the model's own tokenizer
on every batch, ``AutoModel``, mean over the content tokens); the tiny model
has genoembed's 6-mer vocabulary and rotary positions like NT-v2 and the
default model. Speed itself is measured in ``benchmarks/embed_throughput.py``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from genoembed.embedders import hf
from genoembed.embedders.hf import TransformersEmbedder
from genoembed.embedders.loading import XFORMERS_ATTENTION, auto_batch_size
from genoembed.errors import InputError, MissingExtraError, ModelError
from genoembed.synthetic import random_sequence

SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(autouse=True, scope="module")
def one_thread(torch_one_thread):
    """Tiny models gain nothing from intra-op threads, and spinning threads crawl on a busy 2-core box."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from transformers import EsmConfig, EsmForMaskedLM

    from genoembed.embedders.tokenize import kmer_vocab, write_kmer_tokenizer

    directory = write_kmer_tokenizer(tmp_path_factory.mktemp("models") / "nt6-rotary", k=6)
    config = EsmConfig(vocab_size=len(kmer_vocab(6)), pad_token_id=1, mask_token_id=2, eos_token_id=4,
                       max_position_embeddings=2050, position_embedding_type="rotary", token_dropout=False,
                       **SHAPE)
    config.architectures = ["EsmForMaskedLM"]
    torch.manual_seed(0)
    EsmForMaskedLM(config).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def fast(model_dir):
    return TransformersEmbedder(model_dir, reverse_complement=False, frames=1, batch_size=8)


def stock(directory: Path, sequences: list[str], batch_size: int = 8) -> np.ndarray:
    """A user's transformers loop, float32, SDPA, mean over attention mask minus special tokens."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model = AutoModel.from_pretrained(str(directory), local_files_only=True, attn_implementation="sdpa",
                                      add_pooling_layer=False).eval()
    out = []
    for start in range(0, len(sequences), batch_size):
        encoded = tokenizer(sequences[start : start + batch_size], padding=True, return_tensors="pt",
                            return_special_tokens_mask=True)
        special = encoded.pop("special_tokens_mask")
        with torch.no_grad():
            hidden = model(**encoded).last_hidden_state
        weights = (encoded["attention_mask"] * (1 - special)).unsqueeze(-1).float()
        out.append(((hidden * weights).sum(1) / weights.sum(1)).numpy())
    return np.concatenate(out)


def tiles(n: int, length: int = 300, seed: int = 0) -> list[str]:
    genome = random_sequence(n * length, seed=seed)
    return [genome[i : i + length] for i in range(0, n * length, length)]


def cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --------------------------------------------------------------------------- same vectors as stock


def test_fixed_length_tiles_equal_stock(model_dir, fast):
    """Full unpadded batches run without an attention mask: same vectors as the stock loop."""
    sequences = tiles(20)
    np.testing.assert_allclose(fast.embed(sequences), stock(model_dir, sequences), rtol=1e-4, atol=1e-5)


def test_mixed_lengths_equal_stock(model_dir, fast):
    """Padded batches keep their mask; sorting by length does not change any row."""
    rng = np.random.default_rng(1)
    sequences = [random_sequence(int(n), seed=i) for i, n in enumerate(rng.integers(20, 400, size=19))]
    expected = np.concatenate([stock(model_dir, [s]) for s in sequences])  # no padding at all
    np.testing.assert_allclose(fast.embed(sequences), expected, rtol=1e-4, atol=1e-5)


def test_no_mask_path_equals_masked_path(fast):
    """The fused (mask-free) forward of an unpadded batch equals the masked forward."""
    batch = fast.adapter.tokenize(tiles(8))
    ids = torch.from_numpy(batch.input_ids)
    with torch.inference_mode():
        masked = fast.adapter.forward(ids, torch.from_numpy(batch.attention_mask), -1)
        free = fast.adapter.forward(ids, None, -1)
    torch.testing.assert_close(free, masked, rtol=1e-5, atol=1e-6)


def test_threads_option_is_restored_and_invariant(model_dir, fast):
    sequences = tiles(10)
    two = TransformersEmbedder(model_dir, reverse_complement=False, frames=1, batch_size=8, threads=2)
    before = torch.get_num_threads()
    np.testing.assert_allclose(two.embed(sequences), fast.embed(sequences), rtol=1e-4, atol=1e-5)
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------------- reduced precision on CPU


def test_bfloat16_on_cpu_is_checked_and_agrees(model_dir, fast):
    reduced = TransformersEmbedder(model_dir, reverse_complement=False, frames=1, batch_size=8, dtype="bfloat16")
    assert reduced.probe_cosine is not None and reduced.probe_cosine >= hf.MIN_PROBE_COSINE
    assert any("bfloat16 on CPU" in note for note in reduced.notes)
    sequences = tiles(12, seed=3)
    assert cosines(reduced.embed(sequences), fast.embed(sequences)).min() >= 0.999
    assert reduced.fingerprint == fast.fingerprint  # a numerical tolerance, like bf16 on CUDA


def test_reduced_precision_that_changes_vectors_is_refused(model_dir, monkeypatch):
    monkeypatch.setattr(hf, "MIN_PROBE_COSINE", 1.5)  # nothing passes: the refusal must name the fix
    with pytest.raises(ModelError, match=r"bfloat16 on CPU changes this model's vectors too much.*use dtype float32"):
        TransformersEmbedder(model_dir, reverse_complement=False, frames=1, dtype="bfloat16")


def test_int8_is_not_offered(model_dir):
    """Dynamic int8 fell below cosine 0.999 on real tiles (benchmarks/RESULTS.md), so it is no dtype."""
    with pytest.raises(InputError, match="unknown dtype 'int8'"):
        TransformersEmbedder(model_dir, dtype="int8")


# --------------------------------------------------------------------------- compile, batch size, attention


def test_compile_failure_is_announced_and_eager_is_used(model_dir, fast, monkeypatch, caplog):
    def broken_compile(model, **_):
        def run(**kwargs):
            raise RuntimeError("no C++ compiler\nsecond line")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    embedder = TransformersEmbedder(model_dir, reverse_complement=False, frames=1, batch_size=4, compile=True)
    sequences = tiles(9)
    np.testing.assert_allclose(embedder.embed(sequences), fast.embed(sequences), rtol=1e-4, atol=1e-5)
    assert embedder._compiled is None
    assert any("torch.compile failed (RuntimeError: no C++ compiler); running eagerly" in n for n in embedder.notes)


def test_compiled_model_is_used_for_one_shape_only(model_dir, fast, monkeypatch):
    """Full unpadded batches go to the compiled model; other shapes stay eager (no recompiles)."""
    shapes = []

    def recording_compile(model, **_):
        def run(**kwargs):
            shapes.append(tuple(kwargs["input_ids"].shape))
            return model(**kwargs)
        return run

    monkeypatch.setattr(torch, "compile", recording_compile)
    embedder = TransformersEmbedder(model_dir, reverse_complement=False, frames=1, batch_size=4, compile=True)
    sequences = tiles(9) + [random_sequence(150, seed=9)]
    np.testing.assert_allclose(embedder.embed(sequences), fast.embed(sequences), rtol=1e-4, atol=1e-5)
    assert shapes and set(shapes) == {(4, 52)}


def test_auto_batch_size():
    config = {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 16}
    small = auto_batch_size(2 * 2**30, tokens=172, config=config)
    large = auto_batch_size(64 * 2**30, tokens=172, config=config)
    assert small & (small - 1) == 0 and 1 <= small < large <= 4096
    assert auto_batch_size(64 * 2**30, tokens=1024, config=config) < large
    assert auto_batch_size(1, tokens=172, config=config) == 1


def test_batch_size_auto_on_cpu(model_dir):
    embedder = TransformersEmbedder(model_dir, reverse_complement=False, frames=1, batch_size="auto")
    assert embedder.batch_size == hf._AUTO_BATCH_CPU


@pytest.mark.parametrize("bad", [0, -1, "big", True, 1.5])
def test_bad_throughput_options(model_dir, bad):
    with pytest.raises(InputError, match="batch size must be a positive integer or 'auto'"):
        TransformersEmbedder(model_dir, batch_size=bad)


def test_bad_threads_and_attention(model_dir):
    with pytest.raises(InputError, match="threads must be a positive integer"):
        TransformersEmbedder(model_dir, threads=0)
    with pytest.raises(InputError, match="unknown attention 'flash9'"):
        TransformersEmbedder(model_dir, attention="flash9")


def test_xformers_missing_names_the_extra(model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    with pytest.raises(MissingExtraError, match=r"genoembed\[gpu\]"):
        TransformersEmbedder(model_dir, attention="xformers")


def test_xformers_attention_equals_sdpa(model_dir, fast, monkeypatch):
    """With a stand-in for xformers.ops (same layout and contract), vectors equal the SDPA path."""

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (b, t, h, d) -> (b, h, t, d)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=scale)
        return out.transpose(1, 2)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    package = types.ModuleType("xformers")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    embedder = TransformersEmbedder(model_dir, reverse_complement=False, frames=1, batch_size=8, attention="xformers")
    assert embedder.attention == XFORMERS_ATTENTION
    rng = np.random.default_rng(2)
    sequences = tiles(8) + [random_sequence(int(n), seed=i) for i, n in enumerate(rng.integers(20, 300, 5))]
    np.testing.assert_allclose(embedder.embed(sequences), fast.embed(sequences), rtol=1e-4, atol=1e-5)


def test_reduced_precision_is_recorded_so_a_store_never_mixes_precisions(model_dir, fast, tmp_path):
    """bfloat16 vectors keep the fingerprint (queries in either precision find the same tiles) but their record
    says bfloat16: appending float32 vectors to a bfloat16 store (a CPU run onto a GPU-built store) is refused,
    naming the dtype; float32 records stay those of earlier releases."""
    from genoembed.embedders import load_embedder
    from genoembed.engine import LocalEngine, embed_genome
    from genoembed.errors import StoreError
    from genoembed.genome import open_genome
    from genoembed.synthetic import write_fasta
    from genoembed.tiles import TilingSpec

    reduced = TransformersEmbedder(model_dir, reverse_complement=False, frames=1, batch_size=8, dtype="bfloat16")
    assert reduced.describe()["dtype"] == "bfloat16" and "dtype" not in fast.describe()
    rebuilt = load_embedder(reduced.describe())
    assert rebuilt.dtype == torch.bfloat16 and rebuilt.fingerprint == reduced.fingerprint
    assert load_embedder(fast.describe()).dtype == torch.float32

    fasta = write_fasta(tmp_path / "g.fa", {"chr1": random_sequence(3000, seed=1)})
    other = write_fasta(tmp_path / "h.fa", {"chr1": random_sequence(3000, seed=2)})
    store, tiling = tmp_path / "store", TilingSpec(window=500, stride=500)

    def build(embedder, path, append):
        provenance = {"embedder": embedder.describe(), "tiling": tiling.describe(), "embedding_dtype": "float32"}
        embed_genome(store, provenance=provenance, embedder=embedder, genome=open_genome(path), tiling=tiling,
                     batch_rows=64, shard_rows=1000, overwrite=False, engine=LocalEngine(), append=append)

    build(reduced, fasta, append=False)
    with pytest.raises(StoreError, match=r"different embedder \(dtype: 'bfloat16' stored, 'float32' now\)"):
        build(fast, other, append=True)
