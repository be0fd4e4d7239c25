"""genoembed: embed genomes with DNA language models, search them, join hits with annotations."""

__version__ = "0.1.0"

from genoembed.errors import GenoembedError, InputError, ModelError, StoreError  # noqa: E402
from genoembed.pipeline import index  # noqa: E402
from genoembed.store import Store  # noqa: E402
from genoembed.tiles import TilingSpec  # noqa: E402
from genoembed.vector_index import IndexSpec  # noqa: E402

__all__ = ["__version__", "index", "Store", "TilingSpec", "IndexSpec",
           "GenoembedError", "InputError", "ModelError", "StoreError"]
