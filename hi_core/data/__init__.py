"""Datasets: the folder format and its records (`datasets`), their sources (`synth`, `synth_vqa` for synthetic
scenes and questions, `coco` with `coco_captions` for the object a caption names, `archives` for uploaded zips), and a
whole dataset scored (`dataset_scoring`, its settings and result in `dataset_analysis`, resumed from `score_cache`).

May import: hi_core.base, hi_core.families, hi_core.model, hi_core.method.
"""
