"""The Explorer's stale banner follows what the person did, not the order the server handles events in.

The handlers are called as Gradio calls them, with a real analysis of the embedded demo model: an edit
counted after Analyze was pressed whose inputs differ marks the results stale; an edit counted before it
(its event reached the server late), or an editor event that carries the image and mask already analyzed
(the editor sends `input` once it has redrawn, possibly after Analyze), does not."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

from hi_core.model.model_cache import ModelCache
from ui.context import AppContext
from ui.explorer import ExplorerTab
from ui.options import DEFAULTS

PRESSED_AT = 3  # the browser's edit count when Analyze was pressed


@pytest.fixture(scope="module")
def tab():
    context = AppContext(cache=ModelCache())
    with gr.Blocks():
        tuned_state = gr.State(None)
        explorer = ExplorerTab(context, tuned_state, "demo")
    return explorer


def _editor(image: np.ndarray, mask: np.ndarray) -> dict:
    strokes = np.zeros(image.shape[:2] + (4,), np.uint8)
    strokes[mask] = (255, 0, 0, 255)
    return {"background": image, "layers": [strokes], "composite": image}


@pytest.fixture(scope="module")
def analyzed(tab):
    """(session, inputs by kind): an analysis of the first example, made from edit number PRESSED_AT."""
    example = tab.context.examples[0]
    editor = _editor(example.image, example.mask)
    inputs = {"image": [editor, None], "text": [example.text, False, example.key_phrase],
              "model": ["demo", "cpu", ""], "options": [DEFAULTS.prompt, DEFAULTS.queries, DEFAULTS.view]}
    scoring = DEFAULTS.scoring
    shown = tab.analyze("demo", "cpu", editor, None, example.text, False, example.key_phrase, DEFAULTS.prompt,
                        DEFAULTS.queries, DEFAULTS.view, scoring.binarize, scoring.quantile, scoring.layer_score, 8, 0, 2, "", None,
                        None, PRESSED_AT)
    assert shown[tab.stale] == "" and tab.state in shown, shown.get(tab.message)
    return shown[tab.state], inputs


def _banner(update) -> str:
    return "" if isinstance(update, dict) and update.get("__type__") == "update" else update[next(iter(update))]


def test_the_analyzed_inputs_are_recorded_with_the_edit_count(analyzed):
    session, inputs = analyzed
    assert session.edits == PRESSED_AT
    assert session.inputs == {what: tuple(values) for what, values in inputs.items() if what != "image"}


@pytest.mark.parametrize("what", ["image", "text", "model", "options"])
def test_an_edit_after_analyze_that_changes_the_inputs_marks_the_results_stale(tab, analyzed, what):
    session, inputs = analyzed
    values = list(inputs[what])
    if what == "image":
        image, mask = values[0]["background"], values[0]["layers"][0][..., 3] > 0
        values[0] = _editor(image, mask | np.roll(mask, 3, axis=1))  # one more stroke
    else:
        values[0] = values[0] + " changed"
    banner = _banner(tab.inputs_changed(what, session, PRESSED_AT + 1, *values))
    assert "the results below are for the previous inputs" in banner
    # the same edit counted before Analyze was pressed (its event arrived late) leaves the results as they are
    assert _banner(tab.inputs_changed(what, session, PRESSED_AT, *values)) == ""


@pytest.mark.parametrize("what", ["image", "text", "model", "options"])
def test_an_edit_event_carrying_the_analyzed_inputs_does_not_mark_them_stale(tab, analyzed, what):
    session, inputs = analyzed
    assert _banner(tab.inputs_changed(what, session, PRESSED_AT + 1, *inputs[what])) == ""


def test_after_analyze_the_banner_comes_back_only_if_an_input_changed_after_it_was_pressed(tab, analyzed):
    session, inputs = analyzed
    everything = [value for values in inputs.values() for value in values]
    assert _banner(tab.changed_during_analysis(session, PRESSED_AT + 2, *everything)) == ""
    edited = [*everything]
    edited[2] = "a different description"  # the text box: image (2 values) first
    assert "The description changed" in _banner(tab.changed_during_analysis(session, PRESSED_AT + 2, *edited))
    assert _banner(tab.changed_during_analysis(session, PRESSED_AT, *edited)) == ""


def test_picking_an_example_after_analyze_marks_the_results_stale(tab, analyzed):
    session, _ = analyzed
    assert "The image or the mask changed" in _banner(tab.example_picked(session, PRESSED_AT + 1))
    assert _banner(tab.example_picked(None, PRESSED_AT + 1)) == ""  # nothing analyzed: no banner
