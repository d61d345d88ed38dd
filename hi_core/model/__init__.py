"""A model and what it reads: finding and sizing a model (`hub`, `model_memory`), loading it with its processor
(`loading`, `processors`, `pixtral_inputs`), sharing loaded models within a memory budget (`model_cache`), images
and their limits (`images`), an image and a prompt as the model's inputs (`inputs`, `batching`), capturing the
attention rows of a forward pass (`capture`), replaying recorded layers (`replay`), and generating text
(`captioning`, with its metrics in `metrics`).

May import: hi_core.base, hi_core.families.
"""
