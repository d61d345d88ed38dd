"""The command line (`python -m hi_core ...`, DESIGN 4): the parser and `main` (`main`), the commands by layer
(`scoring_commands`: score, dataset; `tuning_commands`: finetune, compare; `causal_commands`: ablate, validate),
what they share (`common`), and how an error ends the process (`exits`: one line on stderr, exit code 2).

May import: hi_core.base, hi_core.families, hi_core.model, hi_core.method, hi_core.data, hi_core.figures,
hi_core.tuning, hi_core.causal.
"""
