"""Contrastive fine-tuning: pair derivation, the loss, a few-step run of a tiny model, resume, loading."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from genoembed.seqio import reverse_complement
from genoembed.errors import InputError, ModelError
from genoembed.eval import minimap2_available, read_coords
from genoembed.embedders.model_dir import PROJECTION_FILE
from genoembed.train.finetune import FinetuneConfig, finetune
from genoembed.train.pairs import (
    RelatedPair,
    false_negative_mask,
    frame_views,
    map_window,
    pair_alignments,
    shared_kmer_fraction,
)
from genoembed.train.surgery import info_nce
from genoembed.train.corpus import read_sequences
from genoembed.train.pretrain import PretrainConfig, build_model
from genoembed.synthetic import mutate, random_sequence, write_fasta
from genoembed.embedders.tokenize import kmer_token_ids, kmer_vocab, write_kmer_tokenizer

DATA = Path(__file__).parent / "data"
PLASMID = DATA / "NC_005816.fna"


def _rc(sequence: str) -> str:
    return sequence.translate(str.maketrans("ACGT", "TGCA"))[::-1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random-init 2 x 32 EsmForMaskedLM with the 6-mer tokenizer (the shape of a pretrain output)."""
    import torch

    out = tmp_path_factory.mktemp("models") / "tiny"
    torch.manual_seed(0)
    config = PretrainConfig(train_files=(), output_dir=out, num_layers=2, hidden_size=32, num_heads=2,
                            intermediate_size=64, max_position_embeddings=256)
    build_model(config, len(kmer_vocab(6))).save_pretrained(out)
    write_kmer_tokenizer(out, 6)
    return out


@pytest.fixture(scope="module")
def strains(tmp_path_factory) -> tuple[Path, Path]:
    """The real plasmid and a related 'strain' of it: 3 % substitutions, small indels, a 1 kb inversion."""
    root = tmp_path_factory.mktemp("strains")
    (record,) = read_sequences(PLASMID)
    seq = record.bases.tobytes().decode()
    other = mutate(seq[:4000] + _rc(seq[4000:5000]) + seq[5000:], 0.03, 0.002, seed=3)
    return (write_fasta(root / "a.fa", {"a": seq}), write_fasta(root / "b.fa", {"b": other}))


def _tiny(train, out, base, **changes) -> FinetuneConfig:
    config = FinetuneConfig(
        train_files=tuple(train), output_dir=out, base_model=base, window_bp=300, batch_size=6,
        projection_dim=16, max_steps=4, eval_every=2, eval_pairs=8, checkpoint_every=2, log_every=1,
        warmup_steps=1, learning_rate=1e-3, min_alignment_bp=500, threads=1, progress=False,
    )
    return dataclasses.replace(config, **changes)


# --------------------------------------------------------------------------- pair derivation


def test_map_window_plus_and_minus_blocks():
    assert map_window((100, 1100), (5000, 6000), "+", 200, 500) == (5100, 5400)
    # minus strand: the start of the reference span is the end of the query span
    assert map_window((100, 1100), (5000, 6000), "-", 100, 400) == (5700, 6000)
    # a block with an insertion on the query side stretches linearly
    assert map_window((0, 1000), (0, 1100), "+", 500, 600) == (550, 660)
    with pytest.raises(InputError, match="not inside the block"):
        map_window((0, 1000), (0, 1000), "+", 900, 1100)


def test_shared_kmers_see_both_strands_and_mutations():
    a = random_sequence(1000, seed=1)
    assert shared_kmer_fraction(a, a) == 1.0
    assert shared_kmer_fraction(a, _rc(a)) == 1.0
    assert shared_kmer_fraction(a, random_sequence(1000, seed=2)) < 0.01
    diverged = shared_kmer_fraction(a, mutate(a, 0.05, seed=3))
    assert 0.3 < diverged < 0.8  # (0.95)^12 = 0.54 expected
    assert shared_kmer_fraction(a, "NNNN") == 0.0


def test_false_negative_mask_flags_repeats_only():
    repeat = random_sequence(1000, seed=5)
    anchors = [repeat, random_sequence(1000, seed=6), _rc(mutate(repeat, 0.01, seed=7)), random_sequence(1000, seed=8)]
    mask = false_negative_mask(anchors, threshold=0.2)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 2] = expected[2, 0] = True
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.skipif(not minimap2_available(), reason="minimap2 not installed")
def test_minimap2_pairs_map_windows_onto_the_homologous_locus(strains):
    a, b = strains
    table = pair_alignments(RelatedPair(a, b), min_length=500)
    assert table.num_rows >= 2 and set(table["strand"].to_pylist()) == {"+", "-"}
    seq_a = read_sequences(a)[0].bases.tobytes().decode()
    seq_b = read_sequences(b)[0].bases.tobytes().decode()
    for row in table.to_pylist():
        start = (row["ref_start"] + row["ref_end"]) // 2 - 150
        q0, q1 = map_window((row["ref_start"], row["ref_end"]), (row["query_start"], row["query_end"]),
                            row["strand"], start, start + 300)
        assert shared_kmer_fraction(seq_a[start : start + 300], seq_b[q0:q1]) > 0.3, row


def test_pairs_from_nucmer_coords():
    table = pair_alignments(RelatedPair(Path("ref.fa"), Path("contigs.fa"), coords=DATA / "SJM180_head.coords"),
                            min_length=2000)
    full = read_coords(DATA / "SJM180_head.coords")
    assert 0 < table.num_rows <= full.num_rows
    assert min(e - s for s, e in zip(table["ref_start"].to_pylist(), table["ref_end"].to_pylist())) >= 2000


# --------------------------------------------------------------------------- loss


def test_info_nce_prefers_matched_pairs_and_drops_excluded():
    import torch

    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(np.log(1 / 0.05), dtype=torch.float32)
    matched = info_nce(a, a, scale)
    shuffled = info_nce(a, a[torch.tensor([1, 0, 2, 3, 4, 5])], scale)
    assert float(matched) < float(shuffled)
    # excluding the confusable pair (0, 1) both ways removes its contribution
    exclude = torch.zeros(6, 6, dtype=torch.bool)
    exclude[0, 1] = exclude[1, 0] = True
    b = a.clone()
    b[1] = a[0]
    assert float(info_nce(a, b, scale, exclude)) < float(info_nce(a, b, scale))


# --------------------------------------------------------------------------- a few steps end to end


def test_few_steps_write_a_model_the_embedder_loads_and_resume_continues(tiny_model, strains, tmp_path):
    from genoembed.embedders.hf import TransformersEmbedder

    a, b = strains
    out = tmp_path / "tuned"
    config = _tiny((a, b), out, tiny_model, related=(RelatedPair(a, b),))
    assert finetune(config) == out
    for name in ("config.json", "model.safetensors", "vocab.txt", PROJECTION_FILE, "finetune.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "finetune.json").read_text())
    assert report["training"]["steps"] == 4 and [h["step"] for h in report["history"]] == [2, 4]
    assert report["data"]["related_pairs"][0]["blocks"] >= 1
    assert report["data"]["pairs_drawn"]["strain"] > 0 and report["data"]["pairs_drawn"]["shift"] > 0
    assert report["model"]["output_dim"] == 16

    embedder = TransformersEmbedder(str(out))
    assert embedder.dim == 16 and embedder.frames == 6 and embedder.reverse_complement
    sequences = [random_sequence(300, seed=i) for i in range(3)]
    vectors = embedder.embed(sequences)
    assert vectors.shape == (3, 16) and np.isfinite(vectors).all()
    # the embedder computes exactly the trained vector: mean-pooled last layer of every frame of both
    # strands, averaged, then the projection (numpy here, from the saved files)
    import torch
    from transformers import AutoModel

    from genoembed.embedders.tokenize import kmer_token_ids

    encoder = AutoModel.from_pretrained(str(out), local_files_only=True, add_pooling_layer=False)
    views = frame_views(sequences, 6, 6, both_strands=True)
    assert views[1] == sequences[0][1:] and views[6] == reverse_complement(sequences[0])
    encoded = kmer_token_ids(views, {t: i for i, t in enumerate(kmer_vocab(6))}, 6)
    with torch.no_grad():
        hidden = encoder(input_ids=torch.from_numpy(encoded["input_ids"]),
                         attention_mask=torch.from_numpy(encoded["attention_mask"])).last_hidden_state.numpy()
    content = ((encoded["input_ids"] >= 5) & (encoded["attention_mask"] > 0))[..., None]
    pooled = (hidden * content).sum(1) / content.sum(1)
    weight = load_file(str(out / PROJECTION_FILE))["weight"]
    expected = pooled.reshape(3, 12, -1).mean(axis=1) @ weight.T
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)
    # the projection is part of the fingerprint
    plain = TransformersEmbedder(str(tiny_model), reverse_complement=False)
    assert plain.dim == 32 and plain.fingerprint != embedder.fingerprint

    with pytest.raises(InputError, match="checkpoint already exists.*--resume"):
        finetune(dataclasses.replace(config, max_steps=6))
    finetune(dataclasses.replace(config, max_steps=6, resume=True))
    report = json.loads((out / "finetune.json").read_text())
    assert report["training"]["steps"] == 6 and [h["step"] for h in report["history"]] == [2, 4, 6]
    with pytest.raises(ModelError, match="other settings"):
        finetune(dataclasses.replace(config, projection_dim=8, max_steps=8, resume=True))


def test_without_projection_the_output_is_a_plain_encoder(tiny_model, strains, tmp_path):
    from genoembed.embedders.hf import TransformersEmbedder

    a, _ = strains
    out = tmp_path / "plain"
    finetune(_tiny((a,), out, tiny_model, projection_dim=None, max_steps=1, val_files=(PLASMID,), eval_pairs=6))
    assert not (out / PROJECTION_FILE).exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["EsmModel"]
    assert TransformersEmbedder(str(out)).dim == 32
    report = json.loads((out / "finetune.json").read_text())
    assert set(report["baselines"]) == {"base_model", "kmer4", "kmer6"}
    assert 0 <= report["history"][-1]["val"]["r1"] <= 1


def test_loss_decreases_on_an_easy_task(tiny_model, tmp_path):
    """Same tile vs a mutated copy (0-50 % substitutions, no shift, no strain pairs): the loss must fall."""
    genome = write_fasta(tmp_path / "g.fa", {"g": random_sequence(30_000, seed=11)})
    out = tmp_path / "easy"
    config = _tiny((genome,), out, tiny_model, projection_dim=None, max_steps=40, eval_every=1,
                   checkpoint_every=40, log_every=40, batch_size=8, window_bp=120, max_shift=0.0,
                   max_substitution=0.5, indel_probability=0.0, learning_rate=5e-4, warmup_steps=2,
                   min_lr_ratio=1.0)
    finetune(config)
    losses = [h["train_loss"] for h in json.loads((out / "finetune.json").read_text())["history"]]
    assert len(losses) == 40
    assert np.mean(losses[:3]) > 2.0 and np.mean(losses[-10:]) < 0.75 * np.mean(losses[:3]), losses


def test_settings_are_checked_together(tiny_model, strains, tmp_path):
    a, b = strains
    with pytest.raises(InputError, match=r"batch_size=1.*related genome .*b\.fa is not one of the training files"):
        finetune(_tiny((a,), tmp_path / "x", tiny_model, batch_size=1, related=(RelatedPair(a, b),)))
    with pytest.raises(InputError, match="validation file.*also given for training"):
        finetune(_tiny((a,), tmp_path / "x", tiny_model, val_files=(a,)))
    with pytest.raises(ModelError, match="no config.json"):
        finetune(_tiny((a,), tmp_path / "x", tmp_path))


def test_cli_runs_a_few_steps(tiny_model, strains, tmp_path):
    import typer

    from genoembed.cli.finetune import finetune as finetune_command

    app = typer.Typer()
    app.command()(finetune_command)
    a, b = strains
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [
        "--fasta", str(a), "--fasta", str(b), "--related", f"{a},{b}", "--base-model", str(tiny_model),
        "--output", str(out), "--window-bp", "300", "--batch-size", "4", "--projection-dim", "8",
        "--max-steps", "2", "--eval-every", "2", "--checkpoint-every", "2", "--threads", "1",
        "--min-alignment-bp", "500", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert (out / PROJECTION_FILE).is_file()
    result = CliRunner().invoke(app, ["--fasta", str(a), "--related", f"{a}", "--base-model", str(tiny_model),
                                      "--output", str(out)])
    assert result.exit_code == 2
    assert "--related takes REFERENCE,QUERY[,COORDS]" in result.output


def test_subword_init_brings_tokens_that_share_subsequences_together(tiny_model):
    import torch

    from genoembed.train.surgery import load_encoder, subword_init

    encoder, k = load_encoder(tiny_model)
    before = encoder.get_input_embeddings().weight.detach().clone()
    subword_init(encoder, k, (4, 5), seed=0)
    after = encoder.get_input_embeddings().weight.detach()
    ids = {t: i for i, t in enumerate(kmer_vocab(6))}
    kmers = [random_sequence(6, seed=i) for i in range(300)]
    shifted = [w[1:] + "A" for w in kmers]  # shares the 5-mer w[1:6] and two 4-mers
    others = [random_sequence(6, seed=1000 + i) for i in range(300)]

    def mean_cos(x, y):
        rows = lambda ws: after[[ids[w] for w in ws]]  # noqa: E731
        return float(torch.nn.functional.cosine_similarity(rows(x), rows(y), dim=1).mean())

    assert mean_cos(kmers, shifted) > 0.15 > 0.05 > mean_cos(kmers, others)
    assert torch.equal(before[:5], after[:5])  # special tokens untouched
    with pytest.raises(InputError, match="subword size 7"):
        subword_init(encoder, k, (7,))


def test_zero_residual_start_is_the_mean_layer_normed_token_embedding(tiny_model, strains, tmp_path):
    """--reinitialize --zero-residual: fresh weights, and every layer adds nothing at step 0."""
    import torch

    from genoembed.train.surgery import load_encoder, zero_residual_branches

    encoder, _ = load_encoder(tiny_model)
    zero_residual_branches(encoder)
    encoder.eval()
    ids = torch.from_numpy(kmer_token_ids([random_sequence(120, seed=3)], {t: i for i, t in enumerate(kmer_vocab(6))},
                                          6)["input_ids"])
    with torch.no_grad():
        hidden = encoder(input_ids=ids).last_hidden_state
        expected = encoder.encoder.emb_layer_norm_after(encoder.embeddings.word_embeddings(ids))
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)

    a, _ = strains
    out = tmp_path / "fresh"
    finetune(_tiny((a,), out, tiny_model, reinitialize=True, zero_residual=True, max_steps=1, seed=5))
    base, _ = load_encoder(tiny_model)
    trained, _ = load_encoder(out)
    assert not torch.allclose(trained.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight,
                              atol=1e-2)  # fresh weights, not the base model's nudged by one step
    dense = trained.encoder.layer[0].output.dense.weight.detach()
    assert 0 < float(dense.abs().max()) < 1e-2  # grown from zero by one small step


def test_a_zero_layer_model_is_the_mean_layer_normed_token_embedding_over_frames(tiny_model, strains, tmp_path):
    """--keep-layers 0: the saved model has no transformer layers, loads in the embedder, and its vector is
    the mean over every frame of both strands of the layer-normed token embeddings (numpy oracle)."""
    from genoembed.embedders.hf import TransformersEmbedder

    a, _ = strains
    out = tmp_path / "bag"
    finetune(_tiny((a,), out, tiny_model, keep_layers=0, projection_dim=None, max_steps=2, train_frames=6))
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 0
    embedder = TransformersEmbedder(str(out))
    weights = load_file(str(out / "model.safetensors"))
    table = next(v for key, v in weights.items() if key.endswith("word_embeddings.weight"))
    gamma = next(v for key, v in weights.items() if key.endswith("emb_layer_norm_after.weight"))
    beta = next(v for key, v in weights.items() if key.endswith("emb_layer_norm_after.bias"))
    sequences = [random_sequence(200, seed=8), random_sequence(77, seed=9)]
    vocab = {t: i for i, t in enumerate(kmer_vocab(6))}
    expected = []
    for sequence in sequences:
        views = frame_views([sequence], 6, 6, both_strands=True)
        pooled = []
        for view in views:
            ids = kmer_token_ids([view], vocab, 6)["input_ids"][0]
            rows = table[ids[ids >= 5]].astype(np.float64)
            normed = (rows - rows.mean(1, keepdims=True)) / np.sqrt(rows.var(1, keepdims=True) + 1e-12)
            pooled.append((normed * gamma + beta).mean(0))
        expected.append(np.mean(pooled, axis=0))
    np.testing.assert_allclose(embedder.embed(sequences), np.array(expected), atol=1e-5)


def test_shipped_default_is_the_retrieval_model_and_mlm_stays_reachable():
    """The default model is the fine-tuned one (plain files, offline), with the record of how it won."""
    from transformers import AutoModel

    from genoembed.embedders import get_embedder
    from genoembed.embedders.hf import TransformersEmbedder
    from genoembed.embedders.table import TokenTableEmbedder
    from genoembed.resources import default_model_dir

    directory = default_model_dir()
    assert directory is not None and directory.name == "genoembed-nt6-retrieval"
    names = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "finetune.json",
            "MODEL_CARD.md"} <= names
    assert not any(name.endswith((".pt", ".bin")) for name in names)
    with warnings.catch_warnings():  # torch: the zero-layer model's contact head is an empty matrix
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        model = AutoModel.from_pretrained(str(directory), local_files_only=True, add_pooling_layer=False)
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (0, 256, 4106)
    report = json.loads((directory / "finetune.json").read_text())
    held_out = set(report["data"]["validation"])
    assert held_out and not held_out & {entry["file"] for entry in report["data"]["train"]}
    last = report["history"][-1]["val"]
    assert last["r1"] > report["baselines"]["kmer4"]["r1"] and last["r1"] > report["baselines"]["base_model"]["r1"]
    embedder = get_embedder("default")  # a token table: served by numpy, no torch
    assert isinstance(embedder, TokenTableEmbedder) and embedder.frames == 6 and embedder.dim == 256
    mlm = get_embedder("mlm")  # four transformer layers: torch
    assert isinstance(mlm, TransformersEmbedder) and Path(mlm.model_path).name == "genoembed-nt6"


def test_zero_layer_models_pool_from_a_token_table_exactly_as_the_stock_forward(tiny_model, tmp_path):
    """The embedder's token-table path (no hidden states materialised) gives the stock model's vectors."""
    from genoembed.embedders.hf import TransformersEmbedder
    from genoembed.train.surgery import keep_first_layers, load_encoder

    encoder, _ = load_encoder(tiny_model)
    keep_first_layers(encoder, 0)
    out = tmp_path / "bag"
    encoder.save_pretrained(out)
    write_kmer_tokenizer(out, 6)
    sequences = [random_sequence(n, seed=n) for n in (7, 40, 300, 2500)] + ["ACGTNNNNNNACGTAGGATTACA" * 3]
    for pooling in ("mean", "max"):
        table = TransformersEmbedder(str(out), pooling=pooling, max_tokens=64)  # 2500 bp: several chunks
        stock = TransformersEmbedder(str(out), pooling=pooling, max_tokens=64, fuse=False)
        assert table.token_table_lookup and not stock.token_table_lookup
        np.testing.assert_allclose(table.embed(sequences), stock.embed(sequences), atol=1e-5, rtol=1e-5)
