"""The method of DESIGN 1: an object's mask on the image-token grid (`masks`), the heads' attention maps
(`maps`), Head Impact and the other scores (`scoring`), one image scored (`image_scoring`) and analyzed with
its generated description (`analysis`), and the rankings of layers and heads it gives (`layer_selection`,
`head_selection`).

May import: hi_core.base, hi_core.families, hi_core.model.
"""
