"""Loading a transformers model directory with torch: device and dtype, the tokenizer, the model with its
attention backend (SDPA, eager, or xformers' memory-efficient kernel), the fine-tuning projection, and
batch sizes that fit free GPU memory. :class:`genoembed.embedders.hf.TransformersEmbedder` embeds with
what these return; nothing here is ever downloaded (``local_files_only=True``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from genoembed.embedders import model_dir as md
from genoembed.errors import InputError, MissingExtraError, ModelError

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError)
ATTENTIONS = ("auto", "sdpa", "eager", "xformers")


def auto_batch_size(free_bytes: int, tokens: int, config: dict, bytes_per_value: int = 2,
                    budget: float = 0.6, ceiling: int = 4096) -> int:
    """Rows per forward pass that fit ``budget`` of ``free_bytes`` (a power of two, 1..ceiling).

    Inference keeps about one layer's activations alive at a time: per row and
    token the hidden state a few times over, the MLP's intermediate, and the
    attention scores (``heads * tokens``) when the kernel materialises them.
    """
    hidden = int(config.get("hidden_size") or config.get("d_model") or 1024)
    intermediate = int(config.get("intermediate_size") or 4 * hidden)
    heads = int(config.get("num_attention_heads") or 16)
    per_token = 8 * hidden + 2 * intermediate + heads * tokens
    per_row = max(1, tokens * per_token * bytes_per_value)
    rows = int(free_bytes * budget // per_row)
    if rows < 1:
        return 1
    return int(min(ceiling, 2 ** int(np.log2(rows))))


@contextmanager
def intra_op_threads(threads: int | None):
    """torch's intra-op thread count set for the block (process-wide, restored after)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
    return resolved


def dtype_name(dtype: torch.dtype) -> str:
    """``float32``, ``bfloat16``, ``float16``: the name a describe() record and the ``dtype`` option use."""
    return str(dtype).removeprefix("torch.")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


@contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars (genoembed checks loading itself), and torch's
    note that a zero-layer ESM model's (unused) contact head is an empty matrix."""
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(directory: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(str(directory), local_files_only=True,
                                                 trust_remote_code=trust_remote_code)
    except ImportError as err:
        raise MissingExtraError(f"the tokenizer code in {directory} needs a package that is not installed ({err}); "
                                "install it and rerun") from None
    except _LOAD_ERRORS as err:
        raise ModelError(
            f"cannot load the tokenizer in {directory} ({type(err).__name__}: {first_line(err)}); "
            "the directory needs the model's tokenizer files (vocab.txt or tokenizer.json and tokenizer_config.json)"
        ) from None


def load_model(directory: Path, family: md.Family, config: dict, trust_remote_code: bool,
                dtype: torch.dtype, attention_option: str = "auto"):
    """The base model (no MLM/LM head), its attention implementation; every weight must load."""
    import transformers
    from safetensors import SafetensorError

    auto_map = config.get("auto_map") or {}
    loader_name = "AutoModel"
    if family.custom_code and "AutoModel" not in auto_map:
        candidates = [name for name in ("AutoModelForMaskedLM", "AutoModelForCausalLM") if name in auto_map]
        if not candidates:
            raise ModelError(f"{directory}/config.json auto_map names no AutoModel or AutoModelForMaskedLM class")
        loader_name = candidates[0]
    loader = getattr(transformers, loader_name)
    kwargs = {"local_files_only": True, "trust_remote_code": trust_remote_code, "dtype": dtype,
              "output_loading_info": True}
    if not family.custom_code and str(config.get("model_type")) in ("esm", "bert"):
        kwargs["add_pooling_layer"] = False
    attention = "sdpa" if attention_option == "auto" else attention_option
    if attention == "xformers":
        attention = _register_xformers_attention()
    try:
        with quiet_transformers():
            try:
                model, info = loader.from_pretrained(str(directory), attn_implementation=attention, **kwargs)
            except ValueError as err:
                if attention_option != "auto" and attention != "eager":
                    raise ModelError(f"{directory}: this model does not support attention={attention_option!r} "
                                     f"({first_line(err)}); use attention 'auto'") from None
                if "scaled_dot_product_attention" not in str(err) and "sdpa" not in str(err).lower():
                    raise
                attention = "eager"
                log.info("%s: SDPA attention not supported by this model; using eager attention", directory)
                model, info = loader.from_pretrained(str(directory), attn_implementation="eager", **kwargs)
    except ImportError as err:
        raise MissingExtraError(f"the model code in {directory} needs a package that is not installed ({err}); "
                                "install it and rerun") from None
    except (*_LOAD_ERRORS, SafetensorError) as err:
        raise ModelError(
            f"cannot load the model in {directory} ({type(err).__name__}: {first_line(err)}); the weights may "
            "be corrupt, incomplete or not match config.json: copy the model's files again"
        ) from None
    if loader_name != "AutoModel":
        model = model.base_model
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(("lm_head", "pooler", "cls.")))
    if missing:
        raise ModelError(
            f"{len(missing)} weights of the model are missing from {directory} (e.g. {missing[:3]}); "
            "the weight files do not match config.json: copy the model's files again"
        )
    if family.custom_code:
        attention = str(getattr(model.config, "_attn_implementation", None) or "custom")
    return model, attention


XFORMERS_ATTENTION = "genoembed_xformers"


def _register_xformers_attention() -> str:
    """Register xformers' memory-efficient attention with transformers; the name to load models with.

    Imported lazily: the ``gpu`` extra is optional and detected at run time.
    """
    try:
        from xformers.ops import memory_efficient_attention
    except ImportError:
        raise MissingExtraError("attention='xformers' needs xformers: install genoembed[gpu] "
                                "(pip install xformers), or use attention 'auto'") from None
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def xformers_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
        # transformers passes (batch, heads, tokens, head_dim); xformers takes (batch, tokens, heads, head_dim).
        bias = None
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                bias = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device)
                bias = bias.masked_fill(~attention_mask, torch.finfo(query.dtype).min)
            else:
                bias = attention_mask.to(query.dtype)
            bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        out = memory_efficient_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                         attn_bias=bias, p=dropout if module.training else 0.0, scale=scaling)
        return out, None

    AttentionInterface.register(XFORMERS_ATTENTION, xformers_attention)
    # Without a registered mask function transformers hands a custom attention no padding mask at all.
    AttentionMaskInterface.register(XFORMERS_ATTENTION, sdpa_mask)
    return XFORMERS_ATTENTION


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def load_projection(directory: Path, config: dict, device: torch.device) -> torch.Tensor | None:
    """The (out, hidden) matrix of ``genoembed_projection.safetensors`` (written by ``genoembed finetune``).

    Applied to every pooled vector (mean of a linear map = linear map of the
    mean); its bytes are part of the fingerprint like every weight file.
    """
    path = directory / md.PROJECTION_FILE
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weight = load_file(str(path)).get("weight")
    except (SafetensorError, OSError) as err:
        raise ModelError(f"cannot read {path} ({first_line(err)}); copy the model's files again") from None
    hidden = config.get("hidden_size")
    if weight is None or weight.ndim != 2 or (hidden is not None and weight.shape[1] != int(hidden)):
        shape = None if weight is None else tuple(weight.shape)
        raise ModelError(f"{path} must hold a 'weight' matrix of shape (out, {hidden}); found {shape}")
    return weight.to(device=device, dtype=torch.float32)
