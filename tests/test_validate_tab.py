"""The Validate tab through the app's API: a validation of the demo model end to end, the time limit, Cancel."""

from __future__ import annotations

import json
import socket
import tempfile
import time
from pathlib import Path

import pytest
from gradio_client import Client

from ui.settings import Settings

from .app_api import outputs

SMALL = {"model_name": "demo", "device": "cpu", "source": "synthetic", "archive": None, "task": "caption", "heads": 4, "orders": 5,
         "held_out": 8, "modes": ["zero"]}


def _serve(settings: Settings):
    from hi_core.model.model_cache import ModelCache
    from ui.app import build_demo, launch_options

    demo = build_demo("demo", ModelCache(), settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options(settings))
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def server():
    demo, url = _serve(Settings(public=True, max_validation_minutes=30))
    yield url
    demo.close()


def test_a_validation_of_the_demo_shows_the_rankings_the_curves_and_the_downloads(server):
    client = Client(server, verbose=False)
    shown = outputs(client, "/validate", client.predict(api_name="/validate", **SMALL))
    assert shown["val-status"].startswith("**Finished**")
    assert "**4 heads removed one at a time**" in shown["val-summary"]
    for name in ("HI", "attention mass on the object", "gradient importance"):
        assert f"| {name} |" in shown["val-summary"]
    assert tempfile.gettempdir() not in shown["val-summary"]
    files = {Path(item["path"] if isinstance(item, dict) else item).name: item for item in shown["val-downloads"]}
    assert set(files) == {"validation.json", "report.md"}
    path = files["validation.json"]
    data = json.loads(Path(path["path"] if isinstance(path, dict) else path).read_text())
    assert len(data["heads_removed"]) == 4 and data["dose_response"]["orders"]["random"] == 5
    assert tempfile.gettempdir() not in json.dumps(data)  # no server path in what a visitor downloads


def test_a_run_over_the_time_limit_is_refused_with_its_estimate():
    demo, url = _serve(Settings(public=True, max_validation_minutes=1e-4))
    try:
        client = Client(url, verbose=False)
        shown = outputs(client, "/validate", client.predict(api_name="/validate", **SMALL))
        assert "this validation would take about" in shown["val-status"] and "this deployment allows" in shown["val-status"]
        assert shown["val-summary"] in ("", None) or "heads removed" not in shown["val-summary"]
    finally:
        demo.close()


def test_cancel_stops_a_validation_and_the_page_keeps_serving(server):
    client = Client(server, verbose=False)
    job = client.submit(api_name="/validate", **(SMALL | {"heads": 0, "orders": 100, "modes": ["zero", "mean"]}))
    started = time.monotonic()
    while not job.done():
        client.predict(api_name="/cancel_validation")
        time.sleep(0.5)
        assert time.monotonic() - started < 120
    shown = outputs(client, "/validate", job.result(timeout=10))
    assert "Cancelled" in shown["val-status"]
    assert time.monotonic() - started < 60  # far less than the run would take
