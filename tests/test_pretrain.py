"""Masked-LM pretraining: a few steps of a tiny model on the real plasmid, resume, splits, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from safetensors.numpy import load_file
from typer.testing import CliRunner

from genoembed.errors import InputError, ModelError
from genoembed.train.corpus import WindowSampler, load_corpus, mask_tokens, read_sequences
from genoembed.train.pretrain import PretrainConfig, evaluate_mlm, pretrain
from genoembed.embedders.tokenize import SPECIAL_TOKENS, kmer_token_ids, kmer_vocab
from genoembed.train.loop import learning_rate

DATA = Path(__file__).parent / "data"
PLASMID = DATA / "NC_005816.fna"


@pytest.fixture()
def two_contigs(tmp_path) -> Path:
    """The 9.6 kbp plasmid cut into two named contigs (a: first 5 kb, b: the rest)."""
    (record,) = read_sequences(PLASMID)
    seq = record.bases.tobytes().decode()
    path = tmp_path / "two.fa"
    path.write_text(f">a\n{seq[:5000]}\n>b\n{seq[5000:]}\n")
    return path


def _tiny(train, out, **changes) -> PretrainConfig:
    base = PretrainConfig(
        train_files=(train,),
        output_dir=out,
        val_contigs=("b",),
        window_bp=300,
        num_layers=2,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        batch_size=8,
        warmup_steps=2,
        max_steps=4,
        eval_every=2,
        eval_batches=2,
        checkpoint_every=2,
        log_every=1,
        threads=1,
        progress=False,
    )
    return dataclasses.replace(base, **changes)


def test_short_pretrain_writes_loadable_hf_directory_and_resumes(two_contigs, tmp_path):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    out = tmp_path / "model"
    config = _tiny(two_contigs, out)
    assert pretrain(config) == out
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt", "training.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.pt")), "optimizer state must stay in the checkpoint directory"
    assert (tmp_path / "model.ckpt" / "checkpoint.pt").is_file()

    report = json.loads((out / "training.json").read_text())
    assert report["training"]["steps"] == 4
    assert [h["step"] for h in report["history"]] == [2, 4]
    assert report["data"]["validation"]["held-out contigs"][0]["contig"] == "b"
    assert [c["contig"] for c in report["data"]["train"]] == ["a"]
    assert set(report["baselines"]) == {"unigram_token", "unigram", "random_init"}
    assert 0 <= report["final"]["val"]["accuracy"] <= 1 and report["final"]["val"]["loss"] > 0
    assert report["machine"]["torch_threads"] == 1

    model = AutoModelForMaskedLM.from_pretrained(str(out), local_files_only=True)
    assert type(model).__name__ == "EsmForMaskedLM"
    assert model.config.position_embedding_type == "rotary" and model.config.token_dropout is False
    assert (model.config.pad_token_id, model.config.mask_token_id, model.config.eos_token_id) == (1, 2, 4)
    encoder = AutoModel.from_pretrained(str(out), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert tokenizer.vocab_size == model.config.vocab_size == len(kmer_vocab(6))
    batch = tokenizer(["ACGTACGTACGTNAC"], return_tensors="pt")
    assert encoder(**batch).last_hidden_state.shape == (1, batch["input_ids"].shape[1], 32)

    # An existing checkpoint is never silently overwritten or resumed.
    with pytest.raises(InputError, match="checkpoint already exists.*--resume"):
        pretrain(dataclasses.replace(config, max_steps=6))
    pretrain(dataclasses.replace(config, max_steps=6, resume=True))
    report = json.loads((out / "training.json").read_text())
    assert report["training"]["steps"] == 6
    assert [h["step"] for h in report["history"]] == [2, 4, 6]
    assert report["training"]["tokens_seen"] > 0


def test_resume_reproduces_an_uninterrupted_run(two_contigs, tmp_path, monkeypatch):
    import genoembed.train.loop as module

    straight = _tiny(two_contigs, tmp_path / "straight", eval_every=4, checkpoint_every=4)
    pretrain(straight)

    save = module.save_checkpoint

    def save_then_die(path, shape, schedule, model, optimizer, rng, state):
        save(path, shape, schedule, model, optimizer, rng, state)
        if state["step"] == 2:
            raise KeyboardInterrupt  # killed right after the step-2 checkpoint

    interrupted = _tiny(two_contigs, tmp_path / "split", eval_every=4, checkpoint_every=2)
    monkeypatch.setattr(module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(interrupted)
    monkeypatch.setattr(module, "save_checkpoint", save)
    assert not (tmp_path / "split").exists()
    pretrain(dataclasses.replace(interrupted, resume=True))

    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    history = json.loads((tmp_path / "split" / "training.json").read_text())["history"]
    assert [h["step"] for h in history] == [4]


def test_resume_with_another_shape_is_a_model_error(two_contigs, tmp_path):
    config = _tiny(two_contigs, tmp_path / "m", max_steps=2)
    pretrain(config)
    with pytest.raises(ModelError, match="other settings"):
        pretrain(dataclasses.replace(config, hidden_size=64, max_steps=3, resume=True))


def test_validation_split_is_respected(two_contigs, tmp_path):
    corpus = load_corpus(_tiny(two_contigs, tmp_path / "m"))
    assert [c.name for c in corpus.train] == ["a"]
    assert [c.name for c in corpus.validation["held-out contigs"]] == ["b"]
    rng = np.random.default_rng(0)
    _, origin = WindowSampler(corpus.train, 300).sample(rng, 500)
    assert {name for name, _, _ in origin} == {"a"}
    assert all(0 <= start <= 5000 - 300 for _, start, _ in origin)
    assert {rc for _, _, rc in origin} == {True, False}  # both strands

    # Whole held-out files: the validation genome is never in the training set.
    held_out = tmp_path / "held_out.fa"
    held_out.write_text(">c\n" + "ACGT" * 200 + "\n")
    corpus = load_corpus(_tiny(two_contigs, tmp_path / "m", val_contigs=(), val_files=(held_out,), window_bp=300))
    assert [c.name for c in corpus.train] == ["a", "b"]
    assert [c.name for c in corpus.validation["held_out.fa"]] == ["c"]
    with pytest.raises(InputError, match="also given for training"):
        load_corpus(_tiny(two_contigs, tmp_path / "m", val_contigs=(), val_files=(two_contigs,)))


def test_gzip_and_genbank_inputs_read_the_same_sequence(tmp_path):
    import gzip

    gz = tmp_path / "p.fna.gz"
    gz.write_bytes(gzip.compress(PLASMID.read_bytes()))
    (fasta,) = read_sequences(PLASMID)
    (gzipped,) = read_sequences(gz)
    (genbank,) = read_sequences(DATA / "NC_005816.gb")
    assert len(fasta.bases) == 9609
    np.testing.assert_array_equal(fasta.bases, gzipped.bases)
    np.testing.assert_array_equal(fasta.bases, genbank.bases)


def test_bad_inputs_name_the_problem(two_contigs, tmp_path):
    with pytest.raises(InputError, match="sequence file not found: .*missing.fa"):
        pretrain(_tiny(tmp_path / "missing.fa", tmp_path / "m"))
    empty = tmp_path / "empty.fa"
    empty.write_text("this is not a FASTA file\n")
    with pytest.raises(InputError, match=r"empty.fa: no sequences found; expected FASTA records"):
        pretrain(_tiny(empty, tmp_path / "m"))
    with pytest.raises(InputError, match="no validation data"):
        pretrain(_tiny(two_contigs, tmp_path / "m", val_contigs=()))
    with pytest.raises(InputError, match=r"held-out contig\(s\) chrX not in the training files; available: a, b"):
        pretrain(_tiny(two_contigs, tmp_path / "m", val_contigs=("chrX",)))
    with pytest.raises(InputError, match="no sequence is as long as one window"):
        pretrain(_tiny(two_contigs, tmp_path / "m", window_bp=20_000))
    with pytest.raises(InputError, match="not divisible"):
        pretrain(_tiny(two_contigs, tmp_path / "m", hidden_size=30, num_heads=4))
    assert not (tmp_path / "m").exists()


def test_masking_follows_80_10_10_and_spares_special_tokens():
    vocab = {t: i for i, t in enumerate(kmer_vocab(6))}
    rng = np.random.default_rng(0)
    tiles = rng.choice(np.frombuffer(b"ACGT", np.uint8), size=(200, 1002))
    encoded = kmer_token_ids(tiles, vocab)
    ids, attn = encoded["input_ids"], encoded["attention_mask"]
    batch = mask_tokens(ids, attn, rng, len(vocab), 0.15)
    scored = batch.labels != -100
    assert not scored[:, 0].any() and not scored[:, -1].any()  # <cls>, <eos>
    assert abs(scored.mean() * ids.shape[1] / (ids.shape[1] - 2) - 0.15) < 0.01
    np.testing.assert_array_equal(batch.labels[scored], ids[scored])
    mask_id = SPECIAL_TOKENS.index("<mask>")
    as_mask = (batch.input_ids[scored] == mask_id).mean()
    kept = (batch.input_ids[scored] == ids[scored]).mean()
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02
    evaluation = mask_tokens(ids, attn, np.random.default_rng(1), len(vocab), 0.15, mask_all=True)
    assert (evaluation.input_ids[evaluation.labels != -100] == mask_id).all()


def test_learning_rate_warms_up_then_decays_by_steps_or_time():
    config = PretrainConfig(train_files=(), output_dir=Path("x"), learning_rate=1e-3, warmup_steps=10, max_steps=100)
    assert learning_rate(config, 0, 0) == pytest.approx(1e-4, rel=0.01)
    assert learning_rate(config, 9, 0) == pytest.approx(1e-3, rel=0.03)  # cosine has begun
    assert learning_rate(config, 100, 0) == pytest.approx(1e-4)  # min_lr_ratio 0.1
    timed = dataclasses.replace(config, max_steps=10**6, max_minutes=1.0)
    assert learning_rate(timed, 50, 60.0) == pytest.approx(1e-4)  # budget spent: fully decayed
    assert learning_rate(timed, 50, 30.0) == pytest.approx(5.5e-4)


def _cli_app():
    """A throwaway app around the sub-command, loaded from its file (independent of the other commands)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_genoembed_cli_pretrain_under_test", Path(__file__).parents[1] / "genoembed" / "cli" / "pretrain.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    command = module.pretrain

    app = typer.Typer()
    app.command("pretrain")(command)
    app.command("noop")(lambda: None)  # two commands: keep the sub-command name
    return app


def test_cli_help_documents_every_option():
    result = CliRunner().invoke(_cli_app(), ["pretrain", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    for option in ("--fasta", "--output", "--val-fasta", "--val-contig", "--resume", "--max-minutes", "--max-steps",
                   "--layers", "--hidden", "--threads", "--checkpoint-dir", "--seed"):
        assert option in result.output


def test_cli_reports_input_errors_in_one_line_with_exit_code_2(tmp_path):
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    result = CliRunner().invoke(
        _cli_app(), ["pretrain", "--fasta", str(empty), "--output", str(tmp_path / "m"), "--val-contig", "x"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "error:" in result.stderr and "no sequences found" in result.stderr
    assert "Traceback" not in result.output


def test_cli_trains_a_tiny_model(two_contigs, tmp_path):
    out = tmp_path / "cli-model"
    args = ["pretrain", "--fasta", str(two_contigs), "--val-contig", "b", "--output", str(out), "--window-bp", "300",
            "--layers", "2", "--hidden", "32", "--heads", "2", "--intermediate", "64", "--max-positions", "128",
            "--batch-size", "4", "--max-steps", "2", "--eval-every", "2", "--eval-batches", "1", "--threads", "2",
            "--no-progress"]
    result = CliRunner().invoke(_cli_app(), args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "training.json").read_text())["training"]["steps"] == 2


def test_evaluate_mlm_scores_model_and_baselines_on_the_same_tokens(two_contigs, tmp_path):
    out = tmp_path / "model"
    pretrain(_tiny(two_contigs, out, max_steps=2))
    result = evaluate_mlm(out, [PLASMID], [two_contigs], window_bp=300, windows_per_set=16, batch_size=8, threads=1)
    for key in ("model", "random_init", "unigram"):
        assert result[key]["pooled"]["masked_tokens"] == result["model"]["NC_005816.fna"]["masked_tokens"] > 0
        assert 0 <= result[key]["pooled"]["accuracy"] <= 1
    assert result["settings"]["windows_per_set"] == 16
    with pytest.raises(ModelError, match="not a model directory"):
        evaluate_mlm(tmp_path, [PLASMID], [two_contigs])


def test_shipped_default_model_loads_offline_with_transformers_alone():
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    directory = Path(__file__).parents[1] / "genoembed" / "data" / "models" / "genoembed-nt6"
    names = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "training.json",
            "MODEL_CARD.md"} <= names
    assert not any(name.endswith((".pt", ".bin")) for name in names), "no optimizer state / pickles shipped"
    assert (directory / "model.safetensors").stat().st_size < 40e6
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(tokenizer.vocab_size)] == kmer_vocab(6)
    model = AutoModelForMaskedLM.from_pretrained(str(directory), local_files_only=True)
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (4, 256, 4106)
    assert model.config.eos_token_id == 4
    report = json.loads((directory / "training.json").read_text())
    assert report["final"]["val"]["loss"] < report["baselines"]["unigram"]["val"]["loss"]
    assert report["final"]["val"]["loss"] < report["baselines"]["random_init"]["val"]["loss"]
