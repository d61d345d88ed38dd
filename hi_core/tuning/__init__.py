"""Fine-tuning: a run's configuration and held-out split (`finetune`, with named presets in
`finetune_presets`), LoRA on chosen layers and its training loop (`training`) or on heads (`head_lora`),
runs end to end and before/after (`runs`) written as run folders (`run_folders`) with the rankings they
choose from (`rankings`), and strategies compared over seeds (`compare`, with `intervals` and the
report in `compare_report`).

May import: hi_core.base, hi_core.families, hi_core.model, hi_core.method, hi_core.data, hi_core.figures.
"""
