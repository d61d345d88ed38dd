"""Causal experiments on heads: removing heads and measuring what changes (`ablation`, `ablation_report`), and
the validation of HI against those effects (`head_effects`, `validation`, `validation_stats`,
`validation_report`).

May import: hi_core.base, hi_core.families, hi_core.model, hi_core.method, hi_core.data, hi_core.figures,
hi_core.tuning.
"""
