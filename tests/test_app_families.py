"""The explorer serves every 2026 family from a Hub-like folder: the Analyze handler (as Gradio calls it) loads
the saved tiny model by its folder, scores it and draws every view; a head click and a token choice follow."""

from __future__ import annotations

import re

import gradio as gr
import numpy as np
import pytest

from ui.components import file_name
from ui.context import AppContext
from ui.explorer import ExplorerTab
from ui.options import DEFAULTS

from .family_checks import TEXT, two_scenes
from .tiny_gemma3 import build_gemma3
from .tiny_internvl import build_internvl
from .tiny_llava_onevision import build_llava_onevision
from .tiny_mistral3 import build_mistral3
from .tiny_paligemma import build_paligemma2
from .tiny_qwen3_5 import build_qwen3_5
from .tiny_qwen3_vl import build_qwen3_vl

BUILDERS = {
    "qwen3_vl": build_qwen3_vl, "qwen3_5": build_qwen3_5, "gemma3": build_gemma3, "paligemma": build_paligemma2,
    "internvl": build_internvl, "llava_onevision": build_llava_onevision, "mistral3": build_mistral3,
}


@pytest.fixture(scope="module")
def tab():
    with gr.Blocks():
        return ExplorerTab(AppContext(), gr.State(None), "demo")


@pytest.mark.parametrize("family", BUILDERS)
def test_the_explorer_analyzes_a_saved_folder_of_each_new_family(tab, tmp_path, family):
    folder = str(BUILDERS[family](tmp_path / family))
    image, _, mask = two_scenes((120, 90), (20, 15, 70, 60))
    image = np.asarray(image)
    strokes = np.zeros(image.shape[:2] + (4,), np.uint8)
    strokes[mask] = (255, 0, 0, 255)
    editor = {"background": image, "layers": [strokes], "composite": image}
    scoring = DEFAULTS.scoring
    shown = tab.analyze(folder, "cpu", editor, None, TEXT, False, "red square", DEFAULTS.prompt, DEFAULTS.queries, DEFAULTS.view,
                        scoring.binarize, scoring.quantile, scoring.layer_score, 8, 0, 2, progress=lambda *_, **__: None)
    assert shown.get(tab.message, "") == "", shown.get(tab.message)
    session = shown[tab.state]
    analysis = session.analysis
    assert analysis.family == family and f"({family}, " in shown[tab.summary] and "**Best head:**" in shown[tab.summary]
    scored = np.isfinite(analysis.hi).all(axis=1)
    assert len(shown[tab.ranking]) == int(scored.sum()) * analysis.hi.shape[1]  # every scored head ranked
    pictures = [shown[view] for view in (tab.heatmap, tab.bars, tab.top_view)]
    assert all(picture.pixels.ndim == 3 and picture.name.endswith(file_name(analysis.model)) for picture in pictures)
    layer = int(np.flatnonzero(scored)[-1])
    clicked = tab.select_head(session, layer, 1, 8, 0, 2)
    assert (clicked[tab.selected_layer], clicked[tab.selected_head]) == (layer, 1)
    assert f"Layer {layer}, head 1" in clicked[tab.head_info]
    tokens = tab.choose_tokens(session, [0], 8, 0, 2)  # the first token's rows alone, no forward pass
    assert tokens.get(tab.token_message, "") == "" and tokens[tab.state].chosen == (0,)


def test_a_tiled_image_is_shown_on_its_stitched_tiles_with_its_views_and_the_global_view_on_request(tab, tmp_path):
    """SmolVLM with splitting: the Explorer scores every image token by default (the stitched 2 x 3 tiles of
    6 x 6 cells), names the views and their tokens, gives the selected head's share of each; 'global' is the
    global view's 6 x 6 grid alone."""
    from .tiny_idefics3 import build_smolvlm

    folder = str(build_smolvlm(tmp_path, split=True))
    image, _, mask = two_scenes((120, 60), (20, 30, 80, 50))
    strokes = np.zeros((60, 120, 4), np.uint8)
    strokes[mask] = (255, 0, 0, 255)
    editor = {"background": np.asarray(image), "layers": [strokes], "composite": np.asarray(image)}
    scoring = DEFAULTS.scoring
    grids = {}
    for view in ("combined", "global"):
        shown = tab.analyze(folder, "cpu", editor, None, TEXT, False, "blue circle", DEFAULTS.prompt, DEFAULTS.queries, view,
                            scoring.binarize, scoring.quantile, scoring.layer_score, 8, 0, 1, progress=lambda *_, **__: None)
        assert shown.get(tab.message, "") == "", shown.get(tab.message)
        grids[view] = shown[tab.state].analysis.grid
        assert "**Views of the image:** tiles 12×18, 216 tokens; global view 6×6, 36 tokens" in shown[tab.summary]
        assert re.search(r"its image attention: tiles \*\*0\.\d\d\*\*, global view \*\*0\.\d\d\*\*", shown[tab.head_info])
    assert grids == {"combined": (12, 18), "global": (6, 6)}
    assert "(scored: 6 tiles + global view)" not in shown[tab.summary] and "(scored: global view)" in shown[tab.summary]
