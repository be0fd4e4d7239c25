"""The model side of contrastive fine-tuning: the encoder loaded from a base model, the starting-point surgery
(keep the first layers, zero the residual branches, subword initialisation), the contrastive wrapper whose
``embed`` is the product's vector, and the InfoNCE loss."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from genoembed.embedders import model_dir
from genoembed.embedders.tokenize import SPECIAL_TOKENS, kmer_vocab
from genoembed.errors import InputError, ModelError
from genoembed.seqio import kmer_index


def contrastive_model(encoder, projection_dim: int | None, temperature: float, learn_temperature: bool):
    import torch

    class ContrastiveEncoder(torch.nn.Module):
        """Encoder + optional projection; ``embed`` is exactly the product's mean-pooled vector."""

        def __init__(self):
            super().__init__()
            self.encoder = encoder
            hidden = encoder.config.hidden_size
            self.projection = (torch.nn.Linear(hidden, projection_dim, bias=False)
                               if projection_dim is not None else None)
            scale = torch.tensor(math.log(1.0 / temperature))
            if learn_temperature:
                self.logit_scale = torch.nn.Parameter(scale)
            else:
                self.register_buffer("logit_scale", scale)

        def embed(self, input_ids, attention_mask, group: int = 1):
            """L2-normalised mean of each run of ``group`` consecutive rows' pooled vectors (frames, strands)."""
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            content = ((input_ids >= len(SPECIAL_TOKENS)) & (attention_mask > 0)).unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * content).sum(1) / content.sum(1).clamp_min(1.0)
            if self.projection is not None:
                pooled = self.projection(pooled)
            pooled = pooled.float().unflatten(0, (-1, group)).mean(1)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return ContrastiveEncoder()


def info_nce(a, b, logit_scale, exclude=None):
    """Symmetric InfoNCE over in-batch negatives; ``exclude`` (n, n) bool drops off-diagonal pairs."""
    import torch

    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    logits = scale * a @ b.T
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                  + torch.nn.functional.cross_entropy(logits.T, target))


def load_encoder(base_model: Path):
    """The base model's encoder (``AutoModel``, no MLM head) and its k-mer size, from a local directory."""
    from transformers import AutoModel

    base_model = Path(base_model)
    if not (base_model / "config.json").is_file():
        raise ModelError(f"{base_model}: no config.json; give a Hugging Face model directory as the base model")
    config = model_dir.read_config(base_model)
    if config.get("model_type") != "esm" or model_dir.needs_remote_code(config):
        raise ModelError(f"{base_model}: fine-tuning supports native ESM-family k-mer models (genoembed's "
                         f"default); this one is model_type={config.get('model_type')!r}")
    vocab = model_dir.read_vocab(base_model)
    k = model_dir.kmer_size(vocab)
    if k is None:
        raise ModelError("the base model's vocabulary is not a non-overlapping k-mer vocabulary")
    if vocab != {t: i for i, t in enumerate(kmer_vocab(k))}:
        raise ModelError(f"{base_model}: the vocabulary is not genoembed's {k}-mer vocabulary "
                         "(genoembed.embedders.tokenize.write_kmer_tokenizer); fine-tuning needs it")
    from genoembed.embedders.loading import quiet_transformers

    try:
        with quiet_transformers():
            encoder, info = AutoModel.from_pretrained(str(base_model), local_files_only=True,
                                                      add_pooling_layer=False, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelError(f"cannot load {base_model}: {err}") from None
    if info.get("missing_keys"):
        raise ModelError(f"{base_model}: {len(info['missing_keys'])} encoder weights missing "
                         f"(e.g. {sorted(info['missing_keys'])[:3]})")
    return encoder, k


def subword_init(encoder, k: int, sizes: Sequence[int], seed: int = 0) -> None:
    """Add to each k-mer token's embedding the sum of random vectors of its overlapping sub-m-mers.

    fastText-style: two tokens that share sub-sequences start close, so a
    sequence read in another frame of non-overlapping k-mers (another set of
    tokens) starts with a similar mean embedding. The added part has the
    norm of the existing rows (in mean); the model stays a plain EsmModel.
    """
    import itertools

    import torch

    weight = encoder.get_input_embeddings().weight
    hidden = weight.shape[1]
    n_special = len(SPECIAL_TOKENS)
    rng = np.random.default_rng([seed, 7])
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    codes = np.array([[ "ACGT".index(c) for c in kmer] for kmer in kmers], dtype=np.uint8)
    added = np.zeros((len(kmers), hidden))
    for m in sizes:
        if not 1 <= m <= k:
            raise InputError(f"subword size {m} must be within 1..{k}")
        table = rng.normal(size=(4**m, hidden))
        index, _ = kmer_index(codes, m)  # (k-mers, k - m + 1): the m-mer at each offset of each k-mer
        for j in range(k - m + 1):
            added += table[index[:, j]]
    with torch.no_grad():
        rows = weight[n_special : n_special + len(kmers)]
        scale = float(rows.norm(dim=1).mean()) / float(np.linalg.norm(added, axis=1).mean())
        rows += torch.from_numpy(added * scale).to(rows.dtype)


def keep_first_layers(encoder, n: int) -> None:
    """Drop every transformer layer after the first ``n`` (config updated, so the saved model has n layers).

    With ``n = 0`` the vector is the mean over all frames of the layer-normed
    token embeddings: a learned embedding of the window's overlapping k-mer
    spectrum, k forward passes of nothing but a table look-up.
    """
    from transformers.models.esm.modeling_esm import EsmContactPredictionHead

    from genoembed.embedders.loading import quiet_transformers

    encoder.encoder.layer = encoder.encoder.layer[:n]
    encoder.config.num_hidden_layers = n
    # The (unused) contact head reads every layer's attention maps: its size follows the layer count.
    with quiet_transformers():  # n = 0: the contact head is an empty matrix
        encoder.contact_head = EsmContactPredictionHead(n * encoder.config.num_attention_heads,
                                                        eos_idx=encoder.config.eos_token_id)


def zero_residual_branches(encoder) -> None:
    """Zero each layer's attention-output and feed-forward-output projections.

    Every layer then adds nothing to the residual stream, so the pooled vector
    starts as the mean of the (layer-normed) token embeddings over all frames:
    a projection of the window's overlapping k-mer spectrum, which already
    retrieves about as well as 4-mer profiles with random embeddings.
    Gradients still reach the zeroed weights (through the inputs they
    multiply), so training grows the layers from there (ReZero-style start).
    """
    import torch

    with torch.no_grad():
        for layer in encoder.encoder.layer:
            for projection in (layer.attention.output.dense, layer.output.dense):
                projection.weight.zero_()
                projection.bias.zero_()
