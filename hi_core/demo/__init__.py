"""The embedded demo model: a tiny LLaVA trained by `python -m hi_core.demo train` on synthetic scenes.

`build.py` defines its tokenizer, processor and architecture; `train.py` trains and saves it; `evaluation.py`
evaluates it and writes its model card (`run`: train, save, evaluate). The shipped weights live in
`hi_core/assets/demo-model/`.

May import: hi_core.base, hi_core.families, hi_core.model, hi_core.method, hi_core.data, hi_core.figures.
"""
