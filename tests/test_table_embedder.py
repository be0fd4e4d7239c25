"""TokenTableEmbedder: TransformersEmbedder's vectors, fingerprint and provenance for zero-layer ESM models,
without torch; everything else refused.

References are ``TransformersEmbedder`` itself (same model directory, same options) on tiles of the
chloroplast demo genome edited to hit every tokenisation case: N's and IUPAC letters, lowercase, sequences
shorter than a k-mer, of 7..20 bases (fewer than 6 frames), and longer than one chunk (max_tokens x 6 bases),
with N runs that make a chunk overflow its tokens and be halved again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from genoembed.embedders import load_embedder
from genoembed.embedders.table import TokenTableEmbedder, supports, unsupported_reason
from genoembed.errors import InputError, ModelError
from genoembed.genome import open_genome
from genoembed.resources import default_model_dir
from genoembed.embedders.tokenize import kmer_vocab, write_kmer_tokenizer

from conftest import CHLOROPLAST_FASTA

REPO = Path(__file__).resolve().parents[1]
DEFAULT = default_model_dir()
MLM = default_model_dir("mlm")
ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread(torch_one_thread):
    """The reference embedders run on one torch thread (the machine is shared)."""


def _hf(directory: Path, **options):
    from genoembed.embedders.hf import TransformersEmbedder

    with warnings.catch_warnings():  # torch: a zero-layer ESM model's contact head is an empty matrix
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return TransformersEmbedder(model_path=str(directory), threads=1, **options)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A random zero-layer EsmModel (hidden 32, rotary) with the 6-mer tokenizer and a random final
    LayerNorm (so a table that skipped it would fail); 66 positions, so chunks are 384 bases."""
    import torch
    from transformers import EsmConfig, EsmModel

    directory = tmp_path_factory.mktemp("models") / "tiny-zero-layer"
    write_kmer_tokenizer(directory, 6)
    config = EsmConfig(vocab_size=len(kmer_vocab(6)), pad_token_id=1, mask_token_id=2, hidden_size=32,
                       num_hidden_layers=0, num_attention_heads=2, intermediate_size=64,
                       max_position_embeddings=66, position_embedding_type="rotary", token_dropout=False,
                       emb_layer_norm_before=False)
    config.architectures = ["EsmModel"]
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        model = EsmModel(config, add_pooling_layer=False)
    with torch.no_grad():
        model.encoder.emb_layer_norm_after.weight.uniform_(0.5, 1.5)
        model.encoder.emb_layer_norm_after.bias.normal_(0, 0.1)
    model.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def projected_dir(tiny_dir, tmp_path_factory) -> Path:
    """The tiny model with a fine-tuning projection (16 x 32) applied after pooling."""
    directory = tmp_path_factory.mktemp("models") / "tiny-projected"
    shutil.copytree(tiny_dir, directory)
    weight = np.random.default_rng(5).normal(size=(16, 32)).astype(np.float32)
    save_file({"weight": weight}, str(directory / "genoembed_projection.safetensors"))
    return directory


def demo_sequences(max_tokens: int) -> list[str]:
    """Chloroplast tiles covering every path of the tokenisation and chunk planning."""
    genome = open_genome(CHLOROPLAST_FASTA)
    ((chrom, length),) = genome.contigs.items()
    seq = genome.fetch(chrom, 0, length)
    chunk = (max_tokens - 2) * 6  # bases of one chunk
    tiles = [seq[i : i + 1000] for i in range(0, 12000, 1000)]
    tile = tiles[0]
    edited = [
        tile[:200] + "N" + tile[201:],
        tile[:300] + "N" * 7 + tile[307:],
        tile[:10] + "RYKMSWBDHV" + tile[20:500] + "nn" + tile[502:],
        tiles[1].lower(),
        tiles[2][:400].lower() + tiles[2][400:],
        "NNNNNN" + tile[:994],
        tile[:997] + "ACG",  # a tile that is not a multiple of 6 apart from its frame
    ]
    short = ["A", "cg", "ACG", "GATN", "TTGCA", "N"]
    middle = [seq[5000 : 5000 + n] for n in range(7, 21)] + ["ACGTNACG", "NNNNNNNNNN"]
    long = [
        seq[: chunk + 37],
        seq[20000 : 20000 + 2 * chunk + 501],
        seq[40000 : 40000 + chunk - 1],  # one chunk, but its frame 0 has a tail: token overflow
        seq[60000 : 60000 + chunk] + "N" * 300 + seq[70000 : 70000 + chunk],
        "N" * (max_tokens + 10) + seq[80000 : 80000 + chunk],  # an N run: a chunk is halved again
        "N" * 100 + seq[90000 : 90000 + chunk - 200],  # within one chunk's bases, but too many tokens
        seq[100000 : 100000 + chunk - 4],  # frame 0 needs exactly one token more than a chunk holds
        seq[100000 : 100000 + chunk - 5] + "N",  # the same with an N
    ]
    return tiles + edited + short + middle + long


@pytest.fixture(scope="module")
def model_dirs(tiny_dir, projected_dir) -> dict[str, Path]:
    return {"default": DEFAULT, "tiny": tiny_dir, "tiny-projected": projected_dir}


@pytest.mark.parametrize("name", ["default", "tiny", "tiny-projected"])
def test_same_vectors_as_transformers_embedder(model_dirs, name):
    directory = model_dirs[name]
    options = dict(frames=6, reverse_complement=True, pooling="mean", layer=-1)
    table, hf = TokenTableEmbedder(directory, **options), _hf(directory, **options)
    sequences = demo_sequences(hf.max_tokens)
    vectors = table.embed(sequences)
    assert vectors.dtype == np.float32 and vectors.shape == (len(sequences), hf.dim)
    np.testing.assert_allclose(vectors, hf.embed(sequences), rtol=0, atol=ATOL)


@pytest.mark.parametrize("options", [
    dict(frames=1), dict(frames=8), dict(reverse_complement=False), dict(max_tokens=64),
    dict(frames=3, reverse_complement="auto", max_tokens=200),
], ids=["frames1", "frames8", "no-rc", "max_tokens64", "frames3"])
def test_same_vectors_with_other_settings(options):
    table, hf = TokenTableEmbedder(DEFAULT, **options), _hf(DEFAULT, **options)
    sequences = demo_sequences(table.max_tokens)
    np.testing.assert_allclose(table.embed(sequences), hf.embed(sequences), rtol=0, atol=ATOL)
    assert table.describe() == hf.describe()


@pytest.mark.parametrize("name", ["default", "tiny", "tiny-projected"])
def test_fingerprint_and_describe_are_transformers_embedders(model_dirs, name):
    """A store written by either embedder reopens with the other: same record, same fingerprint."""
    table = TokenTableEmbedder(model_dirs[name])
    record = table.describe()
    assert record == _hf(model_dirs[name]).describe()
    assert record["kind"] == "transformers" and record["family"] == "nucleotide-transformer"
    rebuilt = load_embedder(json.loads(json.dumps(record)))
    assert rebuilt.describe() == record
    assert TokenTableEmbedder(**{k: v for k, v in record.items()
                                 if k not in ("kind", "fingerprint", "dim", "model_id")}).describe() == record


def test_fingerprint_changes_with_weights_and_settings(tiny_dir, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(tiny_dir, changed)
    (changed / "model.safetensors").write_bytes((changed / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    base = TokenTableEmbedder(tiny_dir).fingerprint
    assert TokenTableEmbedder(changed).fingerprint != base
    assert TokenTableEmbedder(tiny_dir, frames=1).fingerprint != base
    assert TokenTableEmbedder(tiny_dir, reverse_complement=False).fingerprint != base


def test_both_embedders_keep_the_fingerprint_a_store_recorded(tmp_path):
    """The default model's fingerprint, as both embedders compute it today, is the one a store built by an
    earlier release recorded (tests/data/store_v2): the model-directory reading they share did not move it."""
    recorded = json.loads((REPO / "tests" / "data" / "store_v2" / "manifest.json").read_text())
    spec = recorded["provenance"]["embedder"]
    assert Path(spec["model_path"]).name == DEFAULT.name
    options = {key: spec[key] for key in ("pooling", "layer", "reverse_complement", "max_tokens", "frames")}
    assert TokenTableEmbedder(DEFAULT).fingerprint == spec["fingerprint"]
    assert TokenTableEmbedder(DEFAULT, **options).fingerprint == spec["fingerprint"]
    assert _hf(DEFAULT).fingerprint == spec["fingerprint"]


def test_embeds_without_importing_torch_or_transformers():
    code = (
        "import sys\n"
        "from genoembed.embedders.table import TokenTableEmbedder\n"
        "from genoembed.resources import default_model_dir\n"
        "embedder = TokenTableEmbedder(default_model_dir())\n"
        "vectors = embedder.embed(['ACGT' * 250, 'ACGTNNNNNNacgtac' * 1000, 'GATTACA', 'A'])\n"
        "assert vectors.shape == (4, 256) and embedder.fingerprint\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_refuses_layers_and_other_poolings():
    assert supports(DEFAULT) and supports(DEFAULT, pooling="mean", layer=-1, frames=6, reverse_complement=True)
    assert supports(DEFAULT, batch_size=8, threads=1, fuse=False, device="cpu", dtype="float32")
    assert "4 transformer layers" in unsupported_reason(MLM)
    assert not supports(MLM, pooling="mean")
    with pytest.raises(ModelError, match="4 transformer layers"):
        TokenTableEmbedder(MLM)
    for options in (dict(pooling="max"), dict(pooling="cls"), dict(layer=0), dict(family="char"),
                    dict(device="cuda"), dict(dtype="bfloat16"), dict(frames=0), dict(max_tokens=7),
                    dict(reverse_complement="sometimes"), dict(window=3)):
        assert not supports(DEFAULT, **options), options
    with pytest.raises(ModelError, match="pooling 'max'"):
        TokenTableEmbedder(DEFAULT, pooling="max")


@pytest.mark.parametrize("change", [
    {"position_embedding_type": "absolute"}, {"auto_map": {"AutoModel": "x.Model"}}, {"token_dropout": True},
    {"model_type": "bert"},
], ids=["absolute-positions", "custom-code", "token-dropout", "bert"])
def test_refuses_models_that_are_not_a_token_table(tiny_dir, tmp_path, change):
    directory = tmp_path / "model"
    shutil.copytree(tiny_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    assert not supports(directory)


def test_refuses_a_vocabulary_with_extra_tokens(tiny_dir, tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(tiny_dir, directory)
    with open(directory / "vocab.txt", "a", encoding="utf-8") as handle:
        handle.write("ACGTACGTACGT\n")
    assert "vocabulary" in unsupported_reason(directory)


def test_input_errors_and_empty_input():
    embedder = TokenTableEmbedder(DEFAULT)
    assert embedder.embed([]).shape == (0, 256)
    with pytest.raises(InputError, match="sequence 1 has 0 bases"):
        embedder.embed(["ACGT", ""])
    with pytest.raises(InputError, match="sequence 0 is a bytes"):
        embedder.embed([b"ACGT"])
