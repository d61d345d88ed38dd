"""The app through its API (gradio_client): analysis, head selection, per-session state, errors."""

from __future__ import annotations

import json
import socket

import pytest
from gradio_client import Client, handle_file

import app
from hi_core.datasets import read_dataset

EXAMPLE_DIR = app.EXAMPLES_DIR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(llava_dir):
    demo = app.build_demo(str(llava_dir))
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", str(llava_dir)
    demo.close()


def _example():
    record = json.loads((EXAMPLE_DIR / "data.jsonl").read_text().splitlines()[1])
    return str(EXAMPLE_DIR / record["image"]), str(EXAMPLE_DIR / record["mask"]), record


def _analyze(client, model, mask_file, text="a small orange cross at the left", key_phrase=""):
    image, _, _ = _example()
    editor = {"background": handle_file(image), "layers": [], "composite": handle_file(image)}
    return client.predict(model, "cpu", editor, handle_file(mask_file) if mask_file else None, text, False, key_phrase,
                          "Describe the image.", "producing", "area", 0.9, "max", 8, 0, 4, api_name="/analyze")


def test_analysis_returns_every_view_and_downloads(server):
    url, model = server
    client = Client(url, verbose=False)
    _, mask, record = _example()
    outputs = _analyze(client, model, mask, key_phrase=record["key_phrase"])
    summary, heatmap, head_view, top_view, layer_view, ranking, bars, layer, head, downloads = outputs[1:]
    assert "grid** 6×6" in summary and "chance IoU" in summary
    assert len(ranking["data"]) == 2 * 4
    his = [row[2] for row in ranking["data"]]
    assert his == sorted(his, reverse=True)
    assert (layer, head) == tuple(ranking["data"][0][:2])
    names = sorted(path.rsplit("/", 1)[-1] for path in downloads)
    assert names == ["head.png", "heads.csv", "layer_scores.png", "scores.json", "top_heads.png"]
    scores = json.loads(open(next(p for p in downloads if p.endswith("scores.json"))).read())
    assert scores["num_layers"] * scores["num_heads"] == len(scores["heads"]) == 8


def test_sessions_do_not_share_results(server):
    url, model = server
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    _, mask, _ = _example()
    _analyze(first, model, mask)
    selected = first.predict(1, 2, 8, 0, 4, api_name="/select_head")
    assert list(selected[-2:]) == [1, 2]
    with pytest.raises(Exception, match="run an analysis first"):
        second.predict(1, 2, 8, 0, 4, api_name="/select_head")


def test_bad_input_is_shown_and_the_app_keeps_serving(server, tmp_path):
    url, model = server
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="mask is empty"):
        _analyze(client, model, None)  # nothing painted, nothing uploaded
    with pytest.raises(Exception, match="does not exist"):
        client.predict(str(tmp_path / "missing"), "cpu", api_name="/load_model")
    _, mask, _ = _example()
    assert "grid" in _analyze(client, model, mask)[1]


def test_examples_are_a_valid_dataset():
    records = list(read_dataset(EXAMPLE_DIR))
    assert len(records) >= 4 and all(r.key_phrase for r in records)
