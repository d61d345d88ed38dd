"""Causal experiments on heads: removing heads (`head_ablation`: the hook, the heads' means, one image) and
measuring what changes over a dataset (`ablation`, `ablation_report`), and the validation of HI against those
effects (`head_effects`, `validation`, `validation_stats`, `validation_report`).

May import: hi_core.base, hi_core.families, hi_core.model, hi_core.method, hi_core.data, hi_core.figures,
hi_core.tuning.
"""
