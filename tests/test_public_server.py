"""The public resource budget, round two (ui/budget.py, ui/components.py, ui/explorer_handlers.py): every byte a
visitor can make the Explorer's server hold has a bound. Each test sets a small cap through `Settings(...)`.

- the image editor refuses more brush layers than allowed before decoding any (300 copies of one layer: refused in
  milliseconds, no memory);
- a description, key phrase or prompt is measured before it is tokenized, and never echoed whole;
- per-token maps are bounded for the whole server (all sessions), and freed when a session ends or idles;
- Gradio's upload cache is swept by size;
- numbers and other values of the wrong type sent through the API get one message, never an error without one;
- no output of any Explorer endpoint names a server path, for normal and hostile input;
- a request body over the cap, or of unstated length, is refused before any of it is read (uploads excepted).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio.components.image_editor import AcceptBlobs, EditorData, EditorDataBlobs
from gradio.data_classes import FileData
from gradio_client import Client, handle_file
from PIL import Image

from hi_core.base.errors import InputError
from hi_core.model.inputs import MAX_CHARS_PER_TOKEN, build_inputs, check_text_length, context_length
from hi_core.model.loading import LoadConfig
from hi_core.model.model_cache import ModelCache
from ui import budget
from ui.app import build_demo, launch_options
from ui.budget import TokenMaps, TokenMapBudget, UploadCacheSweep, forget
from ui.components import BoundedImageEditor, BoundedTextbox, refuse_in_handler
from ui.context import EXAMPLES_DIR, UNPACKED, AppContext
from ui.explorer import ExplorerTab
from ui.feedback import Refused
from ui.options import DEFAULTS
from ui.settings import Settings

from .app_api import output_ids

BIG_TEXT = 20_000_000  # characters: the description that took 96 s and +2.7 GB before the text was measured first
MESSAGE_CHARS = 400  # a refusal quotes at most a head of the text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _layer_png(folder: Path, side: int = 1536) -> Path:
    """A brush layer: a few KB on disk, side x side RGBA once decoded (9 MB at 1536 px)."""
    path = folder / "layer.png"
    Image.new("RGBA", (side, side), (0, 0, 0, 0)).save(path)
    return path


def _editor(max_layers: int | None) -> BoundedImageEditor:
    with gr.Blocks():
        return BoundedImageEditor(max_pixels=24_000_000, max_side=1536, max_layers=max_layers, type="numpy")


# --- 1. the editor's layers --------------------------------------------------------------------------------------


def test_the_editor_refuses_300_layers_from_the_payloads_length_before_decoding_any(tmp_path):
    layer = _layer_png(tmp_path)
    assert layer.stat().st_size < 20_000
    payload = EditorData(background=FileData(path=str(layer)), layers=[FileData(path=str(layer))] * 300,
                         composite=FileData(path=str(layer)))
    editor = _editor(max_layers=4)
    tracemalloc.start()
    started = time.perf_counter()
    refused = editor.preprocess(payload)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(refused, Refused) and "300 brush layers were sent; at most 4 are accepted" in refused.message
    assert elapsed < 0.5 and peak < 1_000_000  # nothing decoded (one layer alone: 9 MB of RGBA)
    kept = editor.preprocess(payload.model_copy(update={"layers": payload.layers[:2]}))  # within the limit: decoded as before
    assert isinstance(kept, dict) and len(kept["layers"]) == 2 and kept["layers"][0].shape == (1536, 1536, 4)


def test_the_editor_refuses_layers_sent_as_blobs_and_a_blob_index_past_the_limit(tmp_path):
    editor = _editor(max_layers=4)
    data = _layer_png(tmp_path, side=64).read_bytes()
    editor.blob_storage["edit-1"] = EditorDataBlobs(background=data, layers=[data] * 300, composite=data)
    refused = editor.preprocess(EditorData(id="edit-1"))
    assert isinstance(refused, Refused) and "300 brush layers" in refused.message and "edit-1" not in editor.blob_storage
    for index in ("4", "1000000000", "abc"):  # Gradio's own accept_blobs grows a list to any index it is sent
        with pytest.raises(gr.Error, match="index must be below 4"):
            editor.accept_blobs(_blob(index, data))
    editor.accept_blobs(_blob("0", data))
    assert len(editor.blob_storage["x"].layers) == 1


def _blob(index: str, data: bytes) -> AcceptBlobs:
    """What the page's editor posts for one layer (built as the route hands it over: the fields as sent)."""
    return AcceptBlobs.model_construct(data={"type": "layer", "index": index, "id": "x", "file": data}, files=[("blob", data)])


def test_the_explorers_editor_takes_its_layer_limit_from_the_settings():
    context = AppContext(settings=Settings(max_editor_layers=3), cache=ModelCache())
    with gr.Blocks():
        tab = ExplorerTab(context, gr.State(None), "demo")
    assert tab.editor.max_layers == 3
    copy = type(tab.editor)(**{**tab.editor.constructor_args, "render": False})  # Gradio's session copy keeps it
    assert copy.max_layers == 3


# --- 2. text measured before tokenizing ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tab():
    """The Explorer's handlers on the embedded demo model, public text limit, a small per-token budget set per test."""
    context = AppContext(settings=replace(Settings(), max_text_chars=2_000), cache=ModelCache())
    with gr.Blocks():
        explorer = ExplorerTab(context, gr.State(None), "demo")
    return explorer


def _strokes(image: np.ndarray, mask: np.ndarray) -> dict:
    strokes = np.zeros(image.shape[:2] + (4,), np.uint8)
    strokes[mask] = (255, 0, 0, 255)
    return {"background": image, "layers": [strokes], "composite": image}


def _analyze(tab, text=None, key_phrase=None, prompt=DEFAULTS.prompt, previous=None) -> dict:
    example = tab.context.examples[0]
    scoring = DEFAULTS.scoring
    return tab.analyze("demo", "cpu", _strokes(example.image, example.mask), None, example.text if text is None else text,
                       False, example.key_phrase if key_phrase is None else key_phrase, prompt, DEFAULTS.queries, DEFAULTS.view,
                       scoring.binarize, scoring.quantile, scoring.layer_score, 8, 0, 2, "", previous, None, 1)


@pytest.mark.parametrize("field", ["text", "key_phrase", "prompt"])
def test_a_20_mb_text_is_refused_in_under_a_second_without_growing_memory_and_is_not_echoed(tab, field, caplog):
    huge = "a" * BIG_TEXT
    tracemalloc.start()
    started = time.perf_counter()
    with caplog.at_level(logging.INFO):
        shown = _analyze(tab, **{field: huge})
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    message = shown[tab.message]
    assert set(shown) == {tab.message}  # the results stay
    assert f"is {BIG_TEXT:,} characters long, more than the 2,000 allowed" in message and len(message) < MESSAGE_CHARS
    assert elapsed < 1.0 and peak < 1_000_000, (elapsed, peak)  # no copy of the text, no tokens
    assert all(len(record.getMessage()) < MESSAGE_CHARS for record in caplog.records)  # the log is not grown by it


def test_the_text_boxes_refuse_a_long_text_or_another_type_before_the_handler(tab):
    for box in (tab.text, tab.key_phrase, tab.options.prompt):
        refused = box.preprocess("b" * BIG_TEXT)
        assert isinstance(refused, Refused) and len(refused.message) < MESSAGE_CHARS and "2,000 allowed" in refused.message
        assert isinstance(box.preprocess(["a list"]), Refused)
        assert box.preprocess("a red cross") == "a red cross"


def test_a_20_mb_value_for_a_choice_is_refused_with_a_short_message(tab):
    for control in (tab.options.queries, tab.options.view, tab.model.device):  # Gradio's own message quotes the value
        refused = refuse_in_handler(control).preprocess("q" * BIG_TEXT)  # as build_demo makes every choice
        assert isinstance(refused, Refused) and "expected one of the choices" in refused.message
        assert len(refused.message) < MESSAGE_CHARS


def test_the_library_refuses_a_text_that_cannot_fit_the_context_before_tokenizing(tab):
    loaded = tab.context.cache.get(LoadConfig(model="demo", device="cpu"))
    huge = "word " * (context_length(loaded.model) * MAX_CHARS_PER_TOKEN // 5 + 1)
    image = Image.fromarray(tab.context.examples[0].image)
    calls = []
    tokenizer = loaded.processor.tokenizer
    original = type(tokenizer).__call__
    try:
        type(tokenizer).__call__ = lambda self, *args, **kwargs: calls.append(1) or original(self, *args, **kwargs)
        started = time.perf_counter()
        for texts in ({"prompt": "Describe.", "response_text": huge}, {"prompt": huge, "response_text": "a cross"}):
            with pytest.raises(InputError, match="characters long, more than the") as refused:
                build_inputs(loaded.adapter, loaded.model, loaded.processor, image, view="combined", **texts)
            assert len(str(refused.value)) < MESSAGE_CHARS
        assert time.perf_counter() - started < 1.0 and not calls  # never tokenized
    finally:
        type(tokenizer).__call__ = original


def test_a_long_key_phrase_that_does_not_occur_is_named_by_its_head_only(tab):
    phrase = "an orange cross " * 100  # within the 2,000 characters, longer than the description
    message = _analyze(tab, key_phrase=phrase)[tab.message]
    assert "does not occur in the description" in message and len(message) < MESSAGE_CHARS


def test_check_text_length_names_the_length_the_limit_and_a_short_head():
    with pytest.raises(InputError) as refused:
        check_text_length("description", "x" * 5000, 100)
    assert str(refused.value) == ("the description is 5,000 characters long, more than the 100 allowed (it begins "
                                  f"{'x' * 40!r}…): shorten it")
    check_text_length("description", "x" * 100, 100)
    check_text_length("description", "x" * 5000, None)


# --- 3 and 4. per-token maps for the whole server, freed with their session ------------------------------------------


def _maps_of_one_analysis(tab) -> int:
    before = tab.context.token_maps.held
    session = _analyze(tab)[tab.state]
    count = tab.context.token_maps.held - before
    forget(session)
    return count


def test_per_token_maps_never_pass_the_servers_budget_over_many_sessions(tab):
    one = _maps_of_one_analysis(tab)
    assert one > 0 and tab.context.token_maps.held == 0
    tab.context.token_maps = TokenMapBudget(limit=2 * one + one // 2)  # room for two sessions' maps
    try:
        sessions = []
        for _ in range(6):  # six visitors, each their own session
            sessions.append(_analyze(tab)[tab.state])
            assert tab.context.token_maps.held <= 2 * one + one // 2
        assert tab.context.token_maps.sessions == 2
        oldest, newest = sessions[0], sessions[-1]
        told = tab.choose_tokens(oldest, [0], 8, 0, 2)[tab.token_message]
        assert "per-token maps were dropped to make room" in told and "press Analyze again" in told
        assert tab.summary in tab.choose_tokens(newest, [0], 8, 0, 2)  # the newest still chooses tokens
        assert tab.rescore(oldest, "quantile", 0.8, "mean", 8, 0, 2)[tab.message] == ""  # rescoring needs no token maps
        again = _analyze(tab, previous=sessions[-2])[tab.state]  # a session analyzing again replaces its own maps
        assert tab.context.token_maps.sessions == 2 and again.per_token
        for session in (*sessions, again):
            forget(session)  # the state's delete callback
        assert tab.context.token_maps.held == 0 and not any(session.folder.exists() for session in sessions)
    finally:
        tab.context.token_maps = TokenMapBudget(tab.context.settings.max_token_maps)


def test_the_budget_holds_at_most_its_limit_under_concurrent_sessions():
    limit, seen, errors = 1000, [], []
    token_budget = TokenMapBudget(limit)
    sizes = np.random.default_rng(0).integers(1, 200, size=(8, 50))  # 8 visitors, 50 analyses each, 1-199 maps each

    def visitor(row):
        try:
            for tokens in row:
                held = token_budget.hold_maps(TokenMaps(np.zeros((1, 1, int(tokens), 1, 1), np.float32), None))
                seen.append(token_budget.held)
                if tokens % 3 == 0:
                    held.release()
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=visitor, args=(row,)) for row in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(seen) == sizes.size and max(seen) <= limit
    assert token_budget.held == sum(maps.count for maps in token_budget._held.values())  # the accounting adds up


def test_the_explorer_state_is_freed_after_the_idle_time_set_in_the_settings(llava_dir):
    settings = replace(Settings(), session_idle_s=1)
    demo = build_demo(str(llava_dir), ModelCache(), settings)
    states = [block for block in demo.blocks.values() if isinstance(block, gr.State) and block.delete_callback is forget]
    assert len(states) == 3  # the Explorer's and the Dataset tab's results, the Fine-tune tab's last run
    assert {state.time_to_live for state in states} == {1}
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options(settings))
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        image, mask = _example()
        client.predict(api_name="/analyze", model_name=str(llava_dir), device="cpu", editor=_editor_value(image),
                       uploaded_mask=handle_file(mask), text="a small orange cross at the left")
        sessions = [value for state in demo.state_holder.session_data.values() for value in state.state_data.values()
                    if getattr(value, "held", None) is not None]
        assert len(sessions) == 1
        session = sessions[0]
        token_budget = session.held.budget
        assert token_budget.held > 0 and session.folder.is_dir()
        deadline = time.monotonic() + 10
        while token_budget.held and time.monotonic() < deadline:  # Gradio deletes expired state every second
            time.sleep(0.2)
        assert token_budget.held == 0 and not session.folder.exists()
    finally:
        demo.close()


# --- 5. the upload cache ---------------------------------------------------------------------------------------------


def _cache_bytes(folder: Path) -> int:
    return sum(size for _, size, _ in UploadCacheSweep(folder, 0).files())  # a file deleted while walking is skipped


def test_the_upload_cache_stays_within_its_size_over_20_uploads(llava_dir, tmp_path, monkeypatch):
    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    monkeypatch.setattr(budget, "SWEEP_EVERY_S", 0.1)
    settings = replace(Settings(), max_upload_cache_mb=4)
    demo = build_demo(str(llava_dir), ModelCache(), settings)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options(settings))
    rng = np.random.default_rng(0)
    try:
        peak, uploaded = 0, []
        for index in range(20):  # 20 MB in all, 1 MB at a time
            data = rng.integers(0, 256, 1024 * 1024, dtype=np.uint8).tobytes()
            reply = httpx.post(f"http://127.0.0.1:{port}/gradio_api/upload", files={"files": (f"u{index}.bin", data)}, timeout=30)
            uploaded.append(Path(reply.json()[0]))
            deadline = time.monotonic() + 5
            while _cache_bytes(cache) > 4 * 1024 * 1024 and time.monotonic() < deadline:
                time.sleep(0.05)
            peak = max(peak, _cache_bytes(cache))
        assert peak <= 4 * 1024 * 1024
        assert uploaded[-1].is_file() and not uploaded[0].exists()  # the oldest went first
    finally:
        demo.close()


def test_the_sweep_deletes_the_oldest_files_first_and_keeps_those_named(tmp_path):
    now = time.time()
    for index in range(5):
        folder = tmp_path / f"hash{index}"
        folder.mkdir()
        (folder / "f.bin").write_bytes(b"x" * 1000)
        os.utime(folder / "f.bin", (now - 100 + index, now - 100 + index))
    kept = str(tmp_path / "hash1" / "f.bin")
    removed = UploadCacheSweep(tmp_path, max_bytes=2500, kept=lambda: {kept}).sweep()
    assert removed == 3000
    assert sorted(p.parent.name for p in tmp_path.rglob("f.bin")) == ["hash1", "hash4"]
    assert not (tmp_path / "hash0").exists()  # its emptied folder too


def test_launch_options_sweep_the_cache_only_when_it_is_bounded():
    assert "app_kwargs" not in launch_options(Settings())
    assert callable(launch_options(Settings.public_defaults())["app_kwargs"]["lifespan"])


# --- 6 and 7. the API: wrong types, and no server path in any output ---------------------------------------------------


def _example() -> tuple[str, str]:
    record = json.loads((EXAMPLES_DIR / "data.jsonl").read_text().splitlines()[1])
    return str(EXAMPLES_DIR / record["image"]), str(EXAMPLES_DIR / record["mask"])


def _editor_value(image: str) -> dict:
    return {"background": handle_file(image), "layers": [], "composite": handle_file(image)}


@pytest.fixture(scope="module")
def public_server(llava_dir):
    settings = replace(Settings.public_defaults(), allowed_models=("demo", str(llava_dir)))
    demo = build_demo(str(llava_dir), ModelCache(), settings)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options(settings))
    yield f"http://127.0.0.1:{port}/", str(llava_dir)
    demo.close()


ENDPOINTS = ["/load_model", "/propose_mask", "/analyze", "/select_head", "/choose_tokens", "/key_phrase_tokens",
             "/all_tokens", "/ablate", "/before_after"]
MESSAGES = {"model-status", "analyze-message", "tokens-message", "ablate-message", "compare-message"}
WRONG = {"number": ["abc", [1]], "integer": ["abc", True], "string": [12], "boolean": ["abc"], "array": [5]}


def _valid_inputs(model: str) -> dict:
    image, mask = _example()
    return {"model_name": model, "device": "cpu", "editor": _editor_value(image), "uploaded_mask": handle_file(mask),
            "text": "a small orange cross at the left", "lora": ""}


def _wrong_type_cases(client) -> list[tuple[str, str, object]]:
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    cases = []
    for endpoint in ENDPOINTS:
        for parameter in api[endpoint]["parameters"]:
            kind = parameter["type"].get("type")
            for value in WRONG.get(kind, []):
                cases.append((endpoint, parameter["parameter_name"], value))
    return cases


def test_values_of_the_wrong_type_through_the_api_get_one_message_each(public_server):
    url, model = public_server
    client = Client(url, verbose=False)
    client.predict(api_name="/analyze", **_valid_inputs(model))  # a session with results: every endpoint has work
    cases = _wrong_type_cases(client)
    assert {endpoint for endpoint, _, _ in cases} >= {"/analyze", "/select_head", "/ablate", "/choose_tokens"}
    assert ("/analyze", "top_n", "abc") in cases and ("/ablate", "k", "abc") in cases
    for endpoint, name, value in cases:
        inputs = {key: value for key, value in _valid_inputs(model).items() if key in _parameters(client, endpoint)}
        shown = dict(zip(output_ids(client, endpoint), _as_tuple(client.predict(api_name=endpoint, **{**inputs, name: value}))))
        messages = [str(shown[key]) for key in MESSAGES & set(shown) if shown[key] and "⚠" in str(shown[key])]
        assert len(messages) == 1 and ("expected" in messages[0] or "not in the list of choices" in messages[0]), \
            (endpoint, name, value, shown)


def _parameters(client, endpoint: str) -> set[str]:
    if not hasattr(client, "_named_endpoints"):
        client._named_endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    return {parameter["parameter_name"] for parameter in client._named_endpoints[endpoint]["parameters"]}


def _as_tuple(values) -> tuple:
    return values if isinstance(values, tuple) else (values,)


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _strings(item)]
    return []


def _hostile_inputs(model: str, folder: Path) -> list[dict]:
    image, mask = _example()
    (folder / "not-an-image.png").write_bytes(b"not a png")
    Image.new("1", (12000, 12000)).save(folder / "huge.png")
    Image.new("L", (7, 5)).save(folder / "small-mask.png")
    return [
        {},  # the normal case
        {"uploaded_mask": handle_file(str(folder / "not-an-image.png"))},
        {"uploaded_mask": handle_file(str(folder / "small-mask.png"))},
        {"editor": _editor_value(str(folder / "huge.png"))},
        {"model_name": str(folder)},
        {"lora": str(folder / "adapter")},
        {"text": "x" * 5000},
        {"key_phrase": "not in the text"},
        {"text": ""},
        {"editor": None},
        {"selected_layer": 999, "selected_head": -5},
        {"tokens": [999]},
        {"which": "heads listed", "listed": "999:999"},
        {"which": "heads listed", "listed": "/etc/passwd"},
    ]


def test_no_output_of_any_explorer_endpoint_names_a_server_path(public_server, tmp_path):
    url, model = public_server
    client = Client(url, verbose=False)
    components = {component["id"]: component for component in client.config["components"]}
    dependencies = {d["api_name"]: d for d in client.config["dependencies"] if d.get("api_name")}
    server_paths = {tempfile.gettempdir(), str(UNPACKED), str(Path(model).parent)}
    checked = 0
    for hostile in _hostile_inputs(model, tmp_path):
        for endpoint in ENDPOINTS:
            parameters = _parameters(client, endpoint)
            if hostile and not set(hostile) & parameters:
                continue  # the normal case already covered this endpoint
            inputs = {key: value for key, value in {**_valid_inputs(model), **hostile}.items() if key in parameters}
            values = _as_tuple(client.predict(api_name=endpoint, **inputs))
            shown = [components[i] for i in dependencies[endpoint.lstrip("/")]["outputs"] if not components[i].get("skip_api")]
            for component, value in zip(shown, values, strict=True):
                if component["type"] in ("image", "file", "gallery"):  # Gradio's own served files (downloaded by the client)
                    continue
                for text in _strings(value):
                    checked += 1
                    assert not any(path in text for path in server_paths), (endpoint, hostile, text[:300])
    assert checked > 100


# --- 8. request bodies -------------------------------------------------------------------------------------------------


def _raw_post(url: str, path: str, headers: str) -> tuple[str, str]:
    """The status line and body the server answers to a POST of these headers, sending no body at all."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        head, body = answer.split(b"\r\n\r\n", 1)
        lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
        while len(body) < int(lengths[0].split(b":")[1]):
            body += sock.recv(65536)
    return head.split(b"\r\n")[0].decode(), body.decode()


def test_a_body_over_the_cap_is_refused_from_its_stated_length_before_any_byte_is_sent(public_server):
    url, _ = public_server
    started = time.perf_counter()
    status, body = _raw_post(url, "/gradio_api/queue/join", "Content-Type: application/json\r\nContent-Length: 3000000000\r\n")
    assert status.startswith("HTTP/1.1 413")
    assert body == "a request body may hold at most 1,048,576 bytes here, this one holds 3,000,000,000"
    assert time.perf_counter() - started < 5  # answered at once: the 3 GB were never sent, nor waited for


def test_a_body_over_the_cap_is_refused_on_every_route_but_uploads_and_the_app_keeps_serving(public_server):
    url, _ = public_server
    big = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    for path in ("gradio_api/queue/join", "gradio_api/run/analyze", "gradio_api/call/analyze"):
        response = httpx.post(url + path, content=big, headers={"Content-Type": "application/json"}, timeout=30)
        assert response.status_code == 413, path
    uploaded = httpx.post(url + "gradio_api/upload", files={"files": ("big.bin", big)}, timeout=30)
    assert uploaded.status_code == 200  # bounded by max_upload_mb (50 MB) instead
    assert httpx.get(url + "config", timeout=30).status_code == 200


def test_a_body_that_does_not_state_its_length_is_refused(public_server):
    url, _ = public_server

    def streamed():
        yield b'{"data": []}'

    response = httpx.post(url + "gradio_api/queue/join", content=streamed(), timeout=30)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 411
    assert "must state its length" in response.text


def test_launch_options_bound_request_bodies_only_in_public():
    assert "app_kwargs" not in launch_options(Settings())
    (limit,) = launch_options(Settings.public_defaults())["app_kwargs"]["middleware"]
    assert limit.kwargs == {"max_bytes": 1024 * 1024}
