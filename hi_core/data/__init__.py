"""Datasets: the folder format and its records (`datasets`), their sources (`synth`, `synth_vqa` for synthetic
scenes and questions, `coco`, `archives` for uploaded zips), and a whole dataset scored (`dataset_scoring`).

May import: hi_core.base, hi_core.families, hi_core.model, hi_core.method.
"""
