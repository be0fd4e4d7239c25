"""Training genoembed's models: masked-LM pretraining, contrastive fine-tuning, and their shared loop.

Apart from the product core (nothing in it imports this package), and the only part besides
transformer models that needs the ``lm`` extra; importing it without torch says so in one line.
"""

from importlib.util import find_spec

from genoembed.errors import missing_extra

if find_spec("torch") is None or find_spec("transformers") is None:
    raise missing_extra("training", "lm", "torch and transformers")
