"""Fine-tuning: LoRA on chosen layers (`finetune`, with named presets in `finetune_presets`) or heads
(`head_lora`), run folders and before/after comparisons (`runs`), and strategies compared over seeds
(`compare`).

May import: hi_core.base, hi_core.families, hi_core.model, hi_core.method, hi_core.data, hi_core.figures.
"""
