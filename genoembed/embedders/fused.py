"""Inference fusions for ESM-family encoders (Nucleotide Transformer v1, genoembed's default model).

transformers' ``EsmModel`` spends over half of a CPU forward pass in elementwise
passes over memory, not in matmuls: its GELU is five separate ops over the
4x-wide feed-forward activations, the query is scaled in its own pass, and
query and key get rotary embeddings one after the other. Fused here, with the
same arithmetic:

- GELU -> ``torch.nn.functional.gelu`` (the same erf formula, one kernel);
- query, key and value projections -> one matmul over concatenated weights,
  with the ``head_dim ** -0.5`` query scale folded into the query weights
  (rotary embeddings are linear, so scaling before or after them is the same);
- rotary embeddings applied to query and key stacked, in one pass.

Attention itself still goes through transformers' attention interface (SDPA,
eager or xformers), so masks behave exactly as in the stock model. The caller
checks the fused model against the stock one on probe tiles before keeping it.
"""

from __future__ import annotations

import inspect
import types

import torch
import torch.nn.functional as F

_PARTS = ("query", "key", "value")


def can_fuse(model) -> bool:
    """True for an ESM encoder with the module layout these fusions were written against."""
    try:
        from transformers.models.esm import modeling_esm
    except ImportError:
        return False
    config = model.config
    if getattr(config, "model_type", None) != "esm" or getattr(config, "is_decoder", False):
        return False
    if getattr(config, "position_embedding_type", "absolute") not in ("absolute", "rotary"):
        return False
    if "position_embeddings" not in inspect.signature(modeling_esm.EsmSelfAttention.forward).parameters:
        return False  # older transformers apply rotary inside the attention module
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    return bool(layers) and all(
        type(layer.attention.self) is modeling_esm.EsmSelfAttention
        and type(layer.intermediate) is modeling_esm.EsmIntermediate for layer in layers)


def fuse(model) -> None:
    """Switch every layer of ``model`` (``can_fuse`` must hold) to the fused forward passes."""
    for layer in model.encoder.layer:
        attention = layer.attention.self
        scale = attention.attention_head_size ** -0.5
        weights = [attention.query.weight * scale, attention.key.weight, attention.value.weight]
        biases = [attention.query.bias * scale, attention.key.bias, attention.value.bias]
        attention.register_buffer("fused_qkv_weight", torch.cat(weights), persistent=False)
        attention.register_buffer("fused_qkv_bias", torch.cat(biases), persistent=False)
        attention.forward = types.MethodType(_fused_attention, attention)
        layer.intermediate.forward = types.MethodType(_fused_intermediate, layer.intermediate)


def unfuse(model) -> None:
    """Back to transformers' own forward passes (the original weights were kept)."""
    for layer in model.encoder.layer:
        attention = layer.attention.self
        for name in ("forward", "fused_qkv_weight", "fused_qkv_bias"):
            if name in attention.__dict__ or name in attention._buffers:
                delattr(attention, name)
        layer.intermediate.__dict__.pop("forward", None)


def drop_unfused_weights(model) -> None:
    """Free the separate query/key/value weights once the fused model is kept."""
    for layer in model.encoder.layer:
        for name in _PARTS:
            delattr(layer.attention.self, name)


def _fused_intermediate(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return F.gelu(self.dense(hidden_states))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _fused_attention(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     encoder_hidden_states=None, encoder_attention_mask=None,
                     position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.esm.modeling_esm import eager_attention_forward

    batch, length = hidden_states.shape[:2]
    qkv = F.linear(hidden_states, self.fused_qkv_weight, self.fused_qkv_bias)
    qkv = qkv.view(batch, length, 3, -1, self.attention_head_size).permute(2, 0, 3, 1, 4)
    query_key, value = qkv[:2], qkv[2]
    if self.position_embedding_type == "rotary":
        cos, sin = (part.unsqueeze(1) for part in position_embeddings)  # (batch, 1, length, head_dim)
        query_key = query_key * cos + _rotate_half(query_key) * sin
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
    output, weights = attend(self, query_key[0], query_key[1], value, attention_mask,
                             dropout=0.0, scaling=1.0, **kwargs)
    return output.reshape(batch, length, -1).contiguous(), weights
