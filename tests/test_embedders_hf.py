"""TransformersEmbedder end to end on tiny random-init models of each native architecture.

Stand-ins: an ESM with genoembed's non-overlapping 6-mer vocabulary (Nucleotide
Transformer v1 / the default model), a BERT with an overlapping 3-mer
vocabulary (DNABERT), and an ESM with a single-base vocabulary (the
tokenisation of HyenaDNA / Caduceus / GPN). References are computed here from
the model's own tokenizer and ``output_hidden_states``, in numpy.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genoembed.embedders import load_embedder
from genoembed.embedders.families import CaduceusAdapter
from genoembed.embedders.model_dir import FAMILIES, detect_family, read_config
from genoembed.embedders.hf import TransformersEmbedder
from genoembed.errors import InputError
from genoembed.embedders.tokenize import chunk_spans
from genoembed.seqio import reverse_complement
from genoembed.errors import MissingExtraError, ModelError

HIDDEN = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


# --------------------------------------------------------------------------- tiny models


def _save(model, tokenizer, directory: Path) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def make_esm_kmer(directory: Path) -> Path:
    """Nucleotide-Transformer-v1-like: EsmForMaskedLM, 6-mer vocab, absolute positions (62 tokens)."""
    from transformers import EsmConfig, EsmForMaskedLM

    try:
        from genoembed.embedders.tokenize import kmer_vocab, write_kmer_tokenizer
    except ImportError:  # pragma: no cover - the tokenizer module ships with genoembed
        pytest.skip("genoembed.embedders.tokenize not available")
    write_kmer_tokenizer(directory, k=6)
    config = EsmConfig(vocab_size=len(kmer_vocab(6)), pad_token_id=1, mask_token_id=2,
                       max_position_embeddings=64, position_embedding_type="absolute",
                       token_dropout=False, **HIDDEN)
    config.architectures = ["EsmForMaskedLM"]
    torch.manual_seed(0)
    return _save(EsmForMaskedLM(config), None, directory)


def make_dnabert(directory: Path, k: int = 3) -> Path:
    """DNABERT-like: BertForMaskedLM, vocab.txt of overlapping k-mers, 40 positions."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *("".join(p) for p in itertools.product("ACGT", repeat=k))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(directory / "vocab.txt"), do_lower_case=False)
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=40, pad_token_id=0, **HIDDEN)
    config.architectures = ["BertForMaskedLM"]
    torch.manual_seed(0)
    return _save(BertForMaskedLM(config), tokenizer, directory)


def make_char(directory: Path) -> Path:
    """Single-base stand-in: EsmForMaskedLM with a 1-character vocab, rotary positions."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["<cls>", "<pad>", "<eos>", "<unk>", "A", "C", "G", "T", "N", "<mask>"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = EsmTokenizer(str(directory / "vocab.txt"), model_max_length=48)
    config = EsmConfig(vocab_size=len(vocab), pad_token_id=1, mask_token_id=9, max_position_embeddings=48,
                       position_embedding_type="rotary", token_dropout=False, **HIDDEN)
    config.architectures = ["EsmForMaskedLM"]
    torch.manual_seed(0)
    return _save(EsmForMaskedLM(config), tokenizer, directory)


MAKERS = {"nt": make_esm_kmer, "dnabert": make_dnabert, "char": make_char}


@pytest.fixture(autouse=True, scope="module")
def one_thread(torch_one_thread):
    """Tiny models gain nothing from intra-op threads, and spinning threads crawl on a busy 2-core box."""


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: make(root / name) for name, make in MAKERS.items()}


@pytest.fixture(scope="module")
def embedders(model_dirs):
    """One no-RC, single-frame embedder per model (loading is the slow part; reuse it)."""
    return {name: TransformersEmbedder(path, reverse_complement=False, frames=1) for name, path in model_dirs.items()}


def random_dna(rng, n, with_n=False):
    letters = np.array(list("ACGT"))
    seq = letters[rng.integers(0, 4, size=n)]
    if with_n and n > 12:
        seq[5:8] = "N"
        seq[n // 2] = "N"
    return "".join(seq)


def reference(directory: Path, sequences, family: str, how: str, layer: int = -1) -> np.ndarray:
    """Pooled vectors from the model's own tokenizer + output_hidden_states, in numpy."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model = AutoModel.from_pretrained(str(directory), local_files_only=True, attn_implementation="eager",
                                      add_pooling_layer=False).eval()
    texts = [s.upper() for s in sequences]
    if family == "dnabert":
        texts = [" ".join(t[i : i + 3] for i in range(len(t) - 2)) for t in texts]
    out = []
    for text in texts:  # one at a time: no padding in the reference
        encoded = tokenizer([text], return_special_tokens_mask=True, return_tensors="pt")
        with torch.no_grad():
            result = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                           output_hidden_states=True)
        states = result.hidden_states[layer][0].numpy()
        content = encoded["special_tokens_mask"][0].numpy() == 0
        out.append({"mean": states[content].mean(axis=0), "max": states[content].max(axis=0),
                    "cls": states[0]}[how])
    return np.stack(out)


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", ["nt", "dnabert", "char"])
@pytest.mark.parametrize(("how", "layer"), [("mean", -1), ("max", -1), ("cls", -1), ("mean", 1)])
def test_pooling_matches_reference(model_dirs, embedders, name, how, layer):
    rng = np.random.default_rng(3)
    sequences = [random_dna(rng, n) for n in (30, 17, 24, 9)]
    if name == "dnabert":
        sequences = [random_dna(rng, n) for n in (30, 17, 38, 9)]
    embedder = embedders[name]
    if (how, layer) != ("mean", -1):
        embedder = TransformersEmbedder(model_dirs[name], pooling=how, layer=layer, reverse_complement=False,
                                        frames=1)
    got = embedder.embed(sequences)
    assert got.dtype == np.float32 and got.shape == (len(sequences), 32)
    np.testing.assert_allclose(got, reference(model_dirs[name], sequences, name, how, layer), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["nt", "dnabert", "char"])
def test_vectorised_tokenisation_equals_tokenizer(embedders, name):
    adapter = embedders[name].adapter
    assert adapter.fast, adapter.notes
    rng = np.random.default_rng(4)
    pieces = [adapter.normalize(random_dna(rng, n, with_n=True)) for n in (7, 13, 30, 31, 30, 36, 20)]
    pieces.append(adapter.normalize("acgtNNrykACGTTacgtaa"))
    for fast, slow in zip(adapter._fast(pieces), adapter._slow(pieces)):
        np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("name", ["nt", "dnabert", "char"])
def test_soft_masked_lowercase_gives_same_vectors(embedders, name):
    rng = np.random.default_rng(5)
    seq = random_dna(rng, 30)
    mixed = seq[:10].lower() + seq[10:20] + seq[20:].lower()
    got = embedders[name].embed([seq, mixed, seq.lower()])
    np.testing.assert_allclose(got[1], got[0], atol=1e-6)
    np.testing.assert_allclose(got[2], got[0], atol=1e-6)


@pytest.mark.parametrize("name", ["nt", "dnabert", "char"])
def test_batch_size_invariance(model_dirs, embedders, name):
    rng = np.random.default_rng(6)
    sequences = [random_dna(rng, int(n), with_n=True) for n in rng.integers(8, 120, size=11)]
    big = TransformersEmbedder(model_dirs[name], batch_size=7)
    one = TransformersEmbedder(model_dirs[name], batch_size=1)
    np.testing.assert_allclose(big.embed(sequences), one.embed(sequences), atol=1e-5)
    # and order-independent: each row does not depend on its neighbours
    np.testing.assert_allclose(big.embed(sequences[::-1])[::-1], big.embed(sequences), atol=1e-5)


@pytest.mark.parametrize("name", ["nt", "char"])
@pytest.mark.parametrize("how", ["mean", "cls", "max"])
def test_long_sequence_is_chunked_not_truncated(model_dirs, embedders, name, how):
    embedder = TransformersEmbedder(model_dirs[name], pooling=how, reverse_complement=False, frames=1)
    rng = np.random.default_rng(7)
    seq = random_dna(rng, 1000)
    k = 6 if name == "nt" else 1
    content = embedder.max_tokens - embedder.adapter.n_special
    spans = chunk_spans(len(seq), content * k, k)
    assert len(spans) > 1
    chunks = embedder.embed([seq[a:b] for a, b in spans])
    weights = (spans[:, 1] - spans[:, 0]).astype(np.float64)
    if how == "max":
        expected = chunks.max(axis=0)
    else:
        expected = (chunks * weights[:, None]).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(embedder.embed([seq])[0], expected, atol=1e-5)


def test_dnabert_chunks_keep_every_kmer_once(model_dirs, embedders):
    """Overlapping k-mers: chunk [s, e) reads bases [s, e+k-1), so boundary k-mers are not lost."""
    embedder = embedders["dnabert"]
    k = 3
    rng = np.random.default_rng(8)
    seq = random_dna(rng, 200)
    content = embedder.max_tokens - embedder.adapter.n_special
    spans = chunk_spans(len(seq), content, 1)
    assert len(spans) > 1
    pieces = [seq[a : min(len(seq), b + k - 1)] for a, b in spans]
    assert sum(len(p) - k + 1 for p in pieces) == len(seq) - k + 1  # each k-mer exactly once
    chunks = embedder.embed(pieces)
    weights = (spans[:, 1] - spans[:, 0]).astype(np.float64)
    expected = (chunks * weights[:, None]).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(embedder.embed([seq])[0], expected, atol=1e-5)


def test_n_runs_that_overflow_a_chunk_are_split_again(model_dirs, embedders):
    """With N the 6-mer vocab needs one token per base: the planner re-splits, never truncates."""
    embedder = embedders["nt"]
    seq = "ACGTAC" * 20 + "N" * 200 + "GATTAC" * 30
    records, batch = embedder._plan([embedder.adapter.normalize(seq)])
    assert (batch.content_counts <= embedder.max_tokens - embedder.adapter.n_special).all()
    assert records[0, 3] == 0 and records[-1, 4] == len(seq)
    np.testing.assert_array_equal(records[1:, 3], records[:-1, 4])
    assert np.isfinite(embedder.embed([seq])).all()


@pytest.mark.parametrize("name", ["nt", "dnabert", "char"])
def test_reverse_complement_average(model_dirs, embedders, name):
    rng = np.random.default_rng(9)
    sequences = [random_dna(rng, 25), random_dna(rng, 300, with_n=True)]
    with_rc = TransformersEmbedder(model_dirs[name], frames=1)  # RC auto: on for these models
    assert with_rc.reverse_complement is True
    plain = embedders[name]
    expected = (plain.embed(sequences) + plain.embed([reverse_complement(s) for s in sequences])) / 2
    np.testing.assert_allclose(with_rc.embed(sequences), expected, atol=1e-5)
    # the RC vector is strand-agnostic
    np.testing.assert_allclose(with_rc.embed([reverse_complement(s) for s in sequences]),
                               with_rc.embed(sequences), atol=1e-5)


# --------------------------------------------------------------------------- reading frames


def test_kmer_models_average_reading_frames_per_strand(model_dirs, embedders):
    """frames=k: per strand, the mean of the single-frame vectors of the strand read from 0..k-1."""
    framed = TransformersEmbedder(model_dirs["nt"])
    assert framed.frames == 6 and embedders["char"].frames == 1 and TransformersEmbedder(model_dirs["dnabert"]).frames == 1
    single = embedders["nt"]
    rng = np.random.default_rng(12)
    sequences = [random_dna(rng, 41), random_dna(rng, 9), random_dna(rng, 66, with_n=True), random_dna(rng, 1500)]

    def strand_mean(text):
        offsets = range(min(6, len(text) - 6 + 1))  # a frame keeps at least one whole 6-mer
        return single.embed([text[f:] for f in offsets]).mean(axis=0)

    expected = np.stack([(strand_mean(s) + strand_mean(reverse_complement(s))) / 2 for s in sequences])
    np.testing.assert_allclose(framed.embed(sequences), expected, atol=1e-5)


def test_frames_make_the_vector_independent_of_where_a_tile_starts(model_dirs):
    """Shifting a tile by a non-multiple of k changes every single-frame token but few frame-averaged ones."""
    rng = np.random.default_rng(13)
    genome = random_dna(rng, 4000)
    starts = rng.integers(0, 3000, size=12)
    tiles = [genome[a : a + 600] for a in starts]
    shifted = [genome[a + 3 : a + 603] for a in starts]

    def mean_cosine(embedder):
        return float(np.mean(_row_cosines_np(embedder.embed(tiles), embedder.embed(shifted))))

    one = mean_cosine(TransformersEmbedder(model_dirs["nt"], layer=0, frames=1))
    six = mean_cosine(TransformersEmbedder(model_dirs["nt"], layer=0))
    assert six > 0.99 and one < 0.9, (six, one)  # random tiny model: unrelated tiles sit near 0.8


def test_frames_are_recorded_and_old_specs_rebuild_single_frame(model_dirs):
    framed = TransformersEmbedder(model_dirs["nt"])
    single = TransformersEmbedder(model_dirs["nt"], frames=1)
    assert framed.describe()["frames"] == 6 and framed.fingerprint != single.fingerprint
    old_spec = {key: value for key, value in single.describe().items() if key != "frames"}
    rebuilt = load_embedder(old_spec)  # a store written before frames existed
    assert rebuilt.frames == 1 and rebuilt.fingerprint == single.fingerprint
    with pytest.raises(InputError, match="frames must be a positive integer"):
        TransformersEmbedder(model_dirs["nt"], frames=0)


def _row_cosines_np(a, b):
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# --------------------------------------------------------------------------- provenance


def test_describe_rebuilds_an_equal_embedder(model_dirs):
    embedder = TransformersEmbedder(model_dirs["nt"], pooling="max", layer=1)
    spec = embedder.describe()
    json.dumps(spec)
    assert spec["kind"] == "transformers" and spec["family"] == "nucleotide-transformer"
    assert spec["model_path"] == str(model_dirs["nt"]) and spec["dim"] == 32
    assert spec["model_id"]
    rebuilt = load_embedder(spec)
    assert rebuilt.fingerprint == embedder.fingerprint and rebuilt.dim == embedder.dim
    seqs = ["ACGTACGTAGGCTAGCTAGCATCGAT"]
    np.testing.assert_allclose(rebuilt.embed(seqs), embedder.embed(seqs))


def test_fingerprint_tracks_weights_and_settings(model_dirs, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    base = TransformersEmbedder(model_dirs["char"])
    assert TransformersEmbedder(model_dirs["char"], batch_size=3).fingerprint == base.fingerprint
    assert TransformersEmbedder(model_dirs["char"], pooling="max").fingerprint != base.fingerprint
    assert TransformersEmbedder(model_dirs["char"], layer=1).fingerprint != base.fingerprint
    assert TransformersEmbedder(model_dirs["char"], reverse_complement=False).fingerprint != base.fingerprint

    copy = tmp_path / "edited"
    shutil.copytree(model_dirs["char"], copy)
    assert TransformersEmbedder(copy).fingerprint == base.fingerprint  # content, not path
    weights = load_file(str(copy / "model.safetensors"))
    name = sorted(weights)[3]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1e-3
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert TransformersEmbedder(copy).fingerprint != base.fingerprint


# --------------------------------------------------------------------------- errors and gating


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError, match=r"does not exist.*config\.json"):
        TransformersEmbedder(tmp_path / "nowhere")


def test_not_a_model_directory(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"not a transformers model directory \(no config\.json\)"):
        TransformersEmbedder(tmp_path)


def test_no_weights(model_dirs, tmp_path):
    import shutil

    shutil.copytree(model_dirs["char"], tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="holds no weights"):
        TransformersEmbedder(tmp_path / "m")


def test_corrupt_weights(model_dirs, tmp_path):
    import shutil

    shutil.copytree(model_dirs["char"], tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(ModelError, match=r"cannot load the model in .*copy the model's files again"):
        TransformersEmbedder(tmp_path / "m")


def test_mismatched_weights_are_not_silently_random(model_dirs, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dirs["nt"], tmp_path / "m")
    path = str(tmp_path / "m" / "model.safetensors")
    weights = load_file(path)
    dropped = [name for name in weights if "layer.1.attention" in name]
    assert dropped
    save_file({k: v for k, v in weights.items() if k not in dropped}, path, metadata={"format": "pt"})
    with pytest.raises(ModelError, match="weights of the model are missing"):
        TransformersEmbedder(tmp_path / "m")


def _custom_code_dir(directory: Path, model_type: str, where: str = "config") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_type": model_type, "architectures": ["CustomForMaskedLM"]}
    tokenizer_config = {}
    auto_map = {"AutoConfig": "configuration_custom.CustomConfig", "AutoModel": "modeling_custom.CustomModel"}
    (config if where == "config" else tokenizer_config)["auto_map"] = auto_map
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (directory / "modeling_custom.py").write_text("raise SystemExit('custom code must not run')\n")
    return directory


@pytest.mark.parametrize(("model_type", "where"), [
    ("hyenadna", "config"), ("caduceus", "config"), ("esm", "config"), ("bert", "config"), ("char", "tokenizer"),
])
def test_custom_code_needs_trust_remote_code(tmp_path, model_type, where):
    directory = _custom_code_dir(tmp_path / "m", model_type, where)
    with pytest.raises(ModelError, match=r"contains custom code; rerun with --trust-remote-code if you trust it"):
        TransformersEmbedder(directory)


def test_gpn_without_its_package(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "ConvNet", "architectures": ["ConvNetForMaskedLM"]}))
    with pytest.raises(MissingExtraError, match="pip install gpn"):
        TransformersEmbedder(tmp_path)


def test_bad_options(model_dirs):
    from genoembed.errors import InputError

    with pytest.raises(InputError, match="unknown pooling"):
        TransformersEmbedder(model_dirs["char"], pooling="median")
    with pytest.raises(InputError, match="exceeds the model's 62 positions"):
        TransformersEmbedder(model_dirs["nt"], max_tokens=500)
    with pytest.raises(ModelError, match="layer 7 does not exist"):
        TransformersEmbedder(model_dirs["char"], layer=7)
    with pytest.raises(InputError, match="reverse_complement"):
        TransformersEmbedder(model_dirs["char"], reverse_complement="both")


def test_short_and_empty_sequences(embedders):
    from genoembed.errors import InputError

    assert embedders["nt"].embed([]).shape == (0, 32)
    with pytest.raises(InputError, match="needs at least 3"):
        embedders["dnabert"].embed(["ACGTACG", "AC"])
    with pytest.raises(InputError, match="needs at least 1"):
        embedders["nt"].embed([""])


# --------------------------------------------------------------------------- family detection


def _write(directory: Path, config: dict, vocab: list[str] | None = None, tokenizer_json: dict | None = None,
           tokenizer_config: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if vocab is not None:
        (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    if tokenizer_json is not None:
        (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    if tokenizer_config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return directory


def _detect(directory: Path):
    return detect_family(directory, read_config(directory))


def test_detects_published_family_layouts(tmp_path, model_dirs):
    kmers6 = ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>",
              *("".join(p) for p in itertools.product("ACGT", repeat=6)), "A", "T", "C", "G", "N"]
    auto = {"AutoConfig": "esm_config.EsmConfig", "AutoModelForMaskedLM": "modeling_esm.EsmForMaskedLM"}
    nt2 = _detect(_write(tmp_path / "nt2", {"model_type": "esm", "auto_map": auto}, kmers6))
    assert (nt2.name, nt2.k, nt2.custom_code) == ("nucleotide-transformer-v2", 6, True)
    nt1 = _detect(_write(tmp_path / "nt1", {"model_type": "esm", "architectures": ["EsmForMaskedLM"]}, kmers6))
    assert (nt1.name, nt1.k, nt1.custom_code) == ("nucleotide-transformer", 6, False)

    bpe = {"model": {"type": "BPE", "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "A": 4, "ACGT": 5,
                                               "TTTAA": 6}, "merges": []}}
    dnabert2 = _detect(_write(tmp_path / "db2", {"model_type": "bert", "auto_map": {
        "AutoConfig": "configuration_bert.BertConfig", "AutoModel": "bert_layers.BertModel"}}, tokenizer_json=bpe))
    assert (dnabert2.name, dnabert2.tokens, dnabert2.custom_code) == ("dnabert-2", "bpe", True)

    for k in (3, 4, 5, 6):
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *("".join(p) for p in itertools.product("ACGT", repeat=k))]
        dnabert = _detect(_write(tmp_path / f"db{k}", {"model_type": "bert"}, vocab))
        assert (dnabert.name, dnabert.k, dnabert.tokens) == ("dnabert", k, "overlapping-kmer")

    bpe_like = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *("".join(p) for p in itertools.product("ACGT", repeat=3)),
                "ACGTTA", "GG"]
    assert _detect(_write(tmp_path / "bertbpe", {"model_type": "bert"}, bpe_like)).name == "generic"

    chars = ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]", "A", "C", "G", "T", "N"]
    hyena = _detect(_write(tmp_path / "hy", {"model_type": "hyenadna", "auto_map": {"AutoModel": "m.H"}}, chars))
    assert (hyena.name, hyena.custom_code, hyena.rc_equivariant) == ("hyenadna", True, False)
    ps = _detect(_write(tmp_path / "ps", {"model_type": "caduceus", "rcps": True, "auto_map": {"AutoModel": "m.C"}}))
    ph = _detect(_write(tmp_path / "ph", {"model_type": "caduceus", "rcps": False, "auto_map": {"AutoModel": "m.C"}}))
    assert (ps.name, ps.rc_equivariant, ph.rc_equivariant) == ("caduceus", True, False)
    gpn = _detect(_write(tmp_path / "gpn", {"model_type": "ConvNet"}))
    assert (gpn.name, gpn.extra) == ("gpn", "gpn")

    assert _detect(model_dirs["nt"]).name == "nucleotide-transformer"
    assert _detect(model_dirs["dnabert"]).name == "dnabert"
    assert _detect(model_dirs["char"]).name == "char"
    assert set(FAMILIES) >= {"nucleotide-transformer", "nucleotide-transformer-v2", "dnabert", "dnabert-2",
                             "hyenadna", "caduceus", "gpn"}
    with pytest.raises(ModelError, match="unknown model family"):
        detect_family(tmp_path / "nt1", read_config(tmp_path / "nt1"), family="nt9")


def test_rc_equivariant_model_skips_rc_by_default(model_dirs):
    """family='caduceus' forced on a native stand-in with rcps in its config: auto RC is off."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "ps"
        shutil.copytree(model_dirs["char"], copy)
        config = json.loads((copy / "config.json").read_text())
        config["rcps"] = True
        (copy / "config.json").write_text(json.dumps(config))
        embedder = TransformersEmbedder(copy, family="caduceus")
        assert embedder.family.rc_equivariant and embedder.reverse_complement is False
        assert embedder.dim == 16  # forward and reverse channel halves conjoined
        assert TransformersEmbedder(copy, family="caduceus", reverse_complement=True).reverse_complement is True


def test_caduceus_conjoining_is_rc_invariant():
    """RCPS states of RC(x) are the states of x with positions and channels flipped."""
    family = FAMILIES["caduceus"]
    adapter = CaduceusAdapter.__new__(CaduceusAdapter)
    adapter.family = type(family)(**{**family.__dict__, "rc_equivariant": True})
    rng = np.random.default_rng(10)
    states = torch.from_numpy(rng.normal(size=(1, 9, 8)).astype(np.float32))
    rc_states = torch.flip(states, dims=[1, 2])
    mask = torch.ones(1, 9, dtype=torch.bool)
    from genoembed.embedders.pooling import max_pool, mean_pool

    for how in (mean_pool, max_pool):
        forward = adapter.finish(how(states, mask))
        reverse = adapter.finish(how(rc_states, mask))
        assert forward.shape == (1, 4)
        np.testing.assert_allclose(forward.numpy(), reverse.numpy(), atol=1e-6)


# --------------------------------------------------------------------------- a custom-code model (fake HyenaDNA)

_FAKE_CONFIG = '''
from transformers import PretrainedConfig


class FakeHyenaConfig(PretrainedConfig):
    model_type = "hyenadna"

    def __init__(self, vocab_size=10, d_model=16, n_layer=2, max_seq_len=40, pad_token_id=1, **kwargs):
        self.vocab_size, self.d_model, self.n_layer, self.max_seq_len = vocab_size, d_model, n_layer, max_seq_len
        super().__init__(pad_token_id=pad_token_id, **kwargs)
'''

_FAKE_MODEL = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithNoAttention

from .configuration_fake import FakeHyenaConfig


class FakeHyenaModel(PreTrainedModel):
    """Causal convolutions over single-base tokens; like HyenaDNA it takes no attention mask."""

    config_class = FakeHyenaConfig
    base_model_prefix = "hyena"

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.convs = nn.ModuleList(nn.Conv1d(config.d_model, config.d_model, 4) for _ in range(config.n_layer))
        self.post_init()

    def forward(self, input_ids, output_hidden_states=None, return_dict=None):
        h = self.embed(input_ids)
        states = [h]
        for conv in self.convs:
            x = nn.functional.pad(h.transpose(1, 2), (3, 0))
            h = h + torch.tanh(conv(x)).transpose(1, 2)
            states.append(h)
        return BaseModelOutputWithNoAttention(last_hidden_state=h,
                                              hidden_states=tuple(states) if output_hidden_states else None)
'''


@pytest.fixture(scope="module")
def fake_hyena_dir(tmp_path_factory):
    import importlib
    import sys

    from transformers import EsmTokenizer

    directory = tmp_path_factory.mktemp("fakehyena")
    (directory / "configuration_fake.py").write_text(_FAKE_CONFIG)
    (directory / "modeling_fake.py").write_text(_FAKE_MODEL)
    package = tmp_path_factory.mktemp("pkg")
    (package / "fakehyena_build").mkdir()
    (package / "fakehyena_build" / "__init__.py").write_text("")
    for name in ("configuration_fake.py", "modeling_fake.py"):
        (package / "fakehyena_build" / name).write_text((directory / name).read_text())
    sys.path.insert(0, str(package))
    try:
        modeling = importlib.import_module("fakehyena_build.modeling_fake")
        config_module = importlib.import_module("fakehyena_build.configuration_fake")
        torch.manual_seed(0)
        modeling.FakeHyenaModel(config_module.FakeHyenaConfig()).save_pretrained(str(directory))
    finally:
        sys.path.remove(str(package))
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_fake.FakeHyenaConfig", "AutoModel": "modeling_fake.FakeHyenaModel"}
    (directory / "config.json").write_text(json.dumps(config))
    vocab = ["<cls>", "<pad>", "<eos>", "<unk>", "A", "C", "G", "T", "N", "<mask>"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    EsmTokenizer(str(directory / "vocab.txt")).save_pretrained(str(directory))
    return directory


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """Where transformers copies trusted model code: a temp dir, not the user's HF cache."""
    import sys

    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [m for m in sys.modules if m.startswith("transformers_modules")]:
        del sys.modules[name]


def test_custom_code_model_runs_only_when_trusted(fake_hyena_dir, modules_cache):
    with pytest.raises(ModelError, match="trust-remote-code"):
        TransformersEmbedder(fake_hyena_dir)
    embedder = TransformersEmbedder(fake_hyena_dir, trust_remote_code=True, reverse_complement=False, batch_size=3)
    assert embedder.family.name == "hyenadna" and embedder.dim == 16
    assert not embedder.adapter.takes_attention_mask  # so batches hold equal lengths only: no padding
    assert embedder.max_tokens == 40
    assert "trust_remote_code" not in embedder.describe()

    rng = np.random.default_rng(11)
    sequences = [random_dna(rng, int(n)) for n in rng.integers(5, 90, size=8)]
    got = embedder.embed(sequences)
    one = TransformersEmbedder(fake_hyena_dir, trust_remote_code=True, reverse_complement=False, batch_size=1)
    np.testing.assert_allclose(one.embed(sequences), got, atol=1e-5)

    # reference: the model itself, one sequence (or chunk) at a time, mean over base tokens
    model = embedder.model
    tokenizer = embedder.adapter.tokenizer

    def direct(seq):
        encoded = tokenizer([seq], return_special_tokens_mask=True, return_tensors="pt")
        with torch.no_grad():
            states = model(encoded["input_ids"]).last_hidden_state[0].numpy()
        return states[encoded["special_tokens_mask"][0].numpy() == 0].mean(axis=0)

    for seq, vector in zip(sequences, got):
        spans = chunk_spans(len(seq), embedder.max_tokens - embedder.adapter.n_special, 1)
        chunks = np.stack([direct(seq[a:b]) for a, b in spans])
        weights = (spans[:, 1] - spans[:, 0])[:, None]
        np.testing.assert_allclose(vector, (chunks * weights).sum(0) / weights.sum(), atol=1e-5)


def test_lowercasing_tokenizer_is_refused(model_dirs, tmp_path):
    import shutil

    shutil.copytree(model_dirs["dnabert"], tmp_path / "m")
    path = tmp_path / "m" / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["do_lower_case"] = True
    path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="turns plain ACGT into unknown tokens"):
        TransformersEmbedder(tmp_path / "m")


# --------------------------------------------------------------------------- fused ESM forward passes


def _esm_layout_takes_position_embeddings() -> bool:
    import inspect

    from transformers.models.esm import modeling_esm

    return "position_embeddings" in inspect.signature(modeling_esm.EsmSelfAttention.forward).parameters


# transformers releases near the floor (4.56) apply rotary inside EsmSelfAttention: fused.can_fuse says no and
# the stock forward runs (.ci/min-versions runs this file there).
needs_fusable_esm = pytest.mark.skipif(not _esm_layout_takes_position_embeddings(),
                                       reason="this transformers' ESM layout predates the fused passes")


@needs_fusable_esm
def test_esm_models_run_fused_and_match_the_stock_forward(model_dirs, embedders):
    assert embedders["nt"].fused_forward and embedders["char"].fused_forward
    assert not embedders["dnabert"].fused_forward  # BERT: stock transformers
    rng = np.random.default_rng(11)
    sequences = [random_dna(rng, n, with_n=True) for n in (40, 13, 300, 7, 61)]  # padded batches + chunks
    for name in ("nt", "char"):
        stock = TransformersEmbedder(model_dirs[name], reverse_complement=False, fuse=False, batch_size=3, frames=1)
        assert not stock.fused_forward
        np.testing.assert_allclose(embedders[name].embed(sequences), stock.embed(sequences), atol=1e-5, rtol=1e-5)
        fused_attention = embedders[name].model.encoder.layer[0].attention.self
        assert not hasattr(fused_attention, "query")  # the separate q/k/v weights were freed


@needs_fusable_esm
def test_a_fusion_that_changes_vectors_is_refused(model_dirs, monkeypatch):
    from genoembed.embedders import fused

    monkeypatch.setattr(fused, "_fused_intermediate", lambda self, hidden: torch.relu(self.dense(hidden)))
    embedder = TransformersEmbedder(model_dirs["char"], reverse_complement=False)
    assert not embedder.fused_forward
    assert any("fused forward passes changed probe vectors" in note for note in embedder.notes)
    sequences = ["ACGTTGCAAC" * 3, "GGGACCA"]
    np.testing.assert_allclose(embedder.embed(sequences), reference(model_dirs["char"], sequences, "char", "mean"),
                               atol=2e-5, rtol=1e-4)
