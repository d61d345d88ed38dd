"""The app through its API (gradio_client): analysis, head selection, per-session state, errors, the
per-token view (the views on chosen tokens' rows) and the before/after view of a tuned model; the Dataset tab: scoring the demo set or an uploaded zip, best/worst galleries, unsafe and bad zips; the
Fine-tune tab: a run that finishes (metrics, loss curve, a loadable adapter zip, the tuned model back in
the explorer, whose cached model never carries LoRA), a cancelled run, bad input, the VQA task (answer
accuracy; a dataset without questions is refused in the page)."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import socket
import stat
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from hi_core.causal import head_ablation

from hi_core.data import archives
from hi_core.method.analysis import AnalysisConfig, analyze_image
from hi_core.data.datasets import read_dataset
from hi_core.base.errors import InputError
from hi_core.figures.heatmap import HeatmapLayout
from hi_core.model.loading import LoadConfig, load_model
from hi_core.model.model_cache import ModelCache
from hi_core.model.images import load_mask
from hi_core.figures.overlays import map_overlay
from hi_core.method.scoring import ScoringConfig
from ui.app import build_demo, launch_options
from ui.context import EXAMPLES_DIR, UNPACKED
from ui.dataset_views import GALLERY_SIZE
from ui.editor import NO_MASK
from ui.settings import Settings

from .app_api import UNCHANGED, outputs, predict
from .vqa_data import write_vqa_dataset

EXAMPLE_DIR = EXAMPLES_DIR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def explorer_cache():
    """The server's model cache: what the explorer analyzes with."""
    return ModelCache()


@pytest.fixture(scope="module")
def server(llava_dir, explorer_cache):
    settings = Settings()
    demo = build_demo(str(llava_dir), explorer_cache, settings)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options(settings))
    yield f"http://127.0.0.1:{port}/", str(llava_dir)
    demo.close()


def _example():
    record = json.loads((EXAMPLE_DIR / "data.jsonl").read_text().splitlines()[1])
    return str(EXAMPLE_DIR / record["image"]), str(EXAMPLE_DIR / record["mask"]), record


def _editor(image: str) -> dict:
    return {"background": handle_file(image), "layers": [], "composite": handle_file(image)}


def _analyze(client, model, mask_file, text="a small orange cross at the left", key_phrase="", image=None, **options):
    """The analyze event's outputs by elem_id; `options` are its other inputs by name (the page's defaults otherwise)."""
    return predict(client, "/analyze", model_name=model, device="cpu", editor=_editor(image or _example()[0]),
                   uploaded_mask=handle_file(mask_file) if mask_file else None, text=text, key_phrase=key_phrase, **options)


def test_analysis_returns_every_view_and_downloads(server):
    url, model = server
    client = Client(url, verbose=False)
    _, mask, record = _example()
    shown = _analyze(client, model, mask, key_phrase=record["key_phrase"])
    summary, ranking, downloads = shown["summary"], shown["ranking"], shown["downloads"]
    layer, head = shown["selected-layer"], shown["selected-head"]
    assert "grid** 6×6" in summary and "chance IoU" in summary and not shown["analyze-message"]
    assert f"**Layer {layer}, head {head}** · HI **{ranking['data'][0][2]:.3f}**" in shown["head-info"]
    assert "mass on the object" in shown["head-info"] and "× chance" in shown["head-info"]
    assert len(ranking["data"]) == 2 * 4
    his = [row[2] for row in ranking["data"]]
    assert his == sorted(his, reverse=True)
    assert (layer, head) == tuple(ranking["data"][0][:2])
    names = sorted(path.rsplit("/", 1)[-1] for path in downloads)
    assert names == ["heads.csv", "scores.json"]  # the figures: each picture's own download button, as PNG
    for figure in ("heatmap", "head-view", "top-heads", "layer-view", "layer-bars"):
        assert Image.open(shown[figure]).format == "PNG", figure  # not lossy WebP: the small numbers stay sharp
    scores = json.loads(open(next(p for p in downloads if p.endswith("scores.json"))).read())
    assert scores["num_layers"] * scores["num_heads"] == len(scores["heads"]) == 8


def test_sessions_do_not_share_results(server):
    url, model = server
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    _, mask, _ = _example()
    _analyze(first, model, mask)
    selected = predict(first, "/select_head", selected_layer=1, selected_head=2)
    assert (selected["selected-layer"], selected["selected-head"]) == (1, 2)
    assert selected["head-info"].startswith("**Layer 1, head 2**")
    refused = predict(second, "/select_head", selected_layer=1, selected_head=2)
    assert "run an analysis first" in refused["analyze-message"] and refused["summary"] == UNCHANGED


def test_bad_input_is_shown_beside_analyze_and_leaves_the_results_and_the_app_keeps_serving(server, tmp_path, caplog):
    url, model = server
    client = Client(url, verbose=False)
    _, mask, _ = _example()
    assert "grid" in _analyze(client, model, mask)["summary"]
    with caplog.at_level("INFO"):
        refused = _analyze(client, model, None)  # nothing painted, nothing uploaded
    assert NO_MASK in refused["analyze-message"]  # plain words: what to do
    assert {name: value for name, value in refused.items() if name != "analyze-message" and value != UNCHANGED} == {}  # the last results stay
    logged = [record for record in caplog.records if NO_MASK in record.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is None and "\n" not in logged[0].getMessage()  # one line, no traceback
    missing = predict(client, "/load_model", model_name=str(tmp_path / "missing"), device="cpu")
    assert "does not exist" in missing["model-status"]
    assert "grid" in _analyze(client, model, mask)["summary"]


def _ranked_hi(ranking: dict) -> dict[tuple[int, int], float]:
    return {(row[0], row[1]): row[2] for row in ranking["data"]}


def test_the_key_phrases_tokens_are_marked_and_chosen_first_and_choosing_tokens_rescores_on_their_rows(server, explorer_cache):
    url, model = server
    client = Client(url, verbose=False)
    image, mask, _ = _example()
    text, key_phrase = "a small orange cross at the left", "orange cross"
    shown = _analyze(client, model, mask, text=text, key_phrase=key_phrase)
    # the oracle: the library's own per-token analysis of the same inputs
    expected = analyze_image(explorer_cache.get(LoadConfig(model=model, device="cpu")), Image.open(image).convert("RGB"),
                             load_mask(mask), text, AnalysisConfig(key_phrase=key_phrase), per_token=True)
    key = list(expected.key_tokens)
    tokens = shown["tokens"]
    assert tokens["value"] == key and tokens["visible"]  # the key phrase's tokens are the default selection...
    assert [label for label, _ in tokens["choices"]] == [f"{i}: {token.strip()}" + (" ★" if i in key else "")
                                                        for i, token in enumerate(expected.tokens)]  # ...and starred
    assert "orange ★" in str(tokens["choices"]) and "cross ★" in str(tokens["choices"])
    assert "**Scored on tokens:** " in shown["summary"] and "(the key phrase)" in shown["summary"]
    assert _ranked_hi(shown["ranking"]) == pytest.approx({head: round(float(expected.hi[head]), 4) for head in np.ndindex(expected.hi.shape)}, abs=1e-4)

    span = [i for i in range(len(expected.tokens)) if i not in key][:2]  # two tokens outside the key phrase
    chosen = predict(client, "/choose_tokens", tokens=span)
    on_span = expected.for_tokens(span, ScoringConfig())
    assert _ranked_hi(chosen["ranking"]) == pytest.approx({head: round(float(on_span.hi[head]), 4) for head in np.ndindex(on_span.hi.shape)}, abs=1e-4)
    # the boxes are left as the person ticked them (a reply never resets a newer tick); the views follow the choice
    assert chosen["tokens"] == UNCHANGED and "(chosen)" in chosen["summary"]
    assert f"response tokens** {len(span)}" in chosen["summary"]
    best = on_span.ranked_heads()[0]
    assert (chosen["selected-layer"], chosen["selected-head"]) == (shown["selected-layer"], shown["selected-head"])  # the head stays
    assert chosen["heatmap"] != shown["heatmap"] and chosen["top-heads"] != shown["top-heads"]
    assert chosen["ranking"]["data"][0][:2] == list(best)
    scores = json.loads(open(next(p for p in chosen["downloads"] if p.endswith("scores.json"))).read())
    assert [item["index"] for item in scores["scored_tokens"]] == span  # the downloads say which tokens they are on
    assert scores["heads"][0]["hi"] == pytest.approx(float(on_span.hi[best]))

    refused = predict(client, "/choose_tokens", tokens=[])
    assert "choose at least one token" in refused["tokens-message"] and refused["ranking"] == UNCHANGED
    back = predict(client, "/key_phrase_tokens")
    assert back["tokens"]["value"] == key and back["ranking"] == shown["ranking"] and not back["tokens-message"]
    every = predict(client, "/all_tokens")
    assert every["tokens"]["value"] == list(range(len(expected.tokens))) and "(all tokens)" in every["summary"]


@pytest.mark.parametrize("text, limit, off", [
    ("a b c d", None, False),  # no limit
    ("a b c d", 2 * 4 * 4, False),  # 2 layers x 4 heads x 4 tokens: just fits
    ("a b c d", 2 * 4 * 4 - 1, True),
    (None, 2 * 4 * AnalysisConfig().max_new_tokens - 1, True),  # a generated text counts as its longest
])
def test_the_per_token_view_keeps_at_most_the_servers_bound_of_maps(llava, text, limit, off):
    from ui.budget import token_maps_note

    note = token_maps_note(llava, text, AnalysisConfig(), limit)
    assert bool(note) == off
    if off:
        assert note.startswith("per-token view off:") and f"more than the {limit:,} this server keeps" in note


def test_a_text_over_the_token_bound_is_scored_without_the_per_token_view(server, monkeypatch):
    url, model = server
    client = Client(url, verbose=False)
    _, mask, _ = _example()
    from ui import explorer_handlers

    monkeypatch.setattr(explorer_handlers, "token_maps_note", lambda *args: "per-token view off: too many maps")
    shown = _analyze(client, model, mask, key_phrase="orange cross")
    assert not shown["tokens"]["visible"] and "too many maps" in shown["summary"] and "Best head" in shown["summary"]
    assert "kept no per-token maps" in predict(client, "/all_tokens")["tokens-message"]


def test_examples_are_a_valid_dataset():
    records = list(read_dataset(EXAMPLE_DIR))
    assert len(records) >= 4 and all(r.key_phrase for r in records)


# --- the Dataset tab -------------------------------------------------------------------------------


def _score(client, model, source="demo", archive=None, limit=0):
    """The score_dataset event's outputs by elem_id."""
    return predict(client, "/score_dataset", model_name=model, device="cpu", source=source,
                   archive=handle_file(str(archive)) if archive else None, batch_size=4, limit=limit)


def _per_image_hi(csv_path: str, layer: int, head: int) -> list[tuple[str, float]]:
    """(id, HI) of every image for one head, in dataset order, from the per-image CSV download."""
    with open(csv_path, newline="") as rows:
        return [(row["id"], float(row["hi"])) for row in csv.DictReader(rows) if (int(row["layer"]), int(row["head"])) == (layer, head)]


def _zip_of(folder: Path, archive: Path, top: str = "", records: int | None = None, extra: dict[str, bytes] | None = None) -> Path:
    """A dataset zip of `folder` (its first `records` records), under the top folder `top`, plus `extra` members."""
    lines = (folder / "data.jsonl").read_text().splitlines()[:records]
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(f"{top}data.jsonl", "\n".join(lines) + "\n")
        files = {json.loads(line)[key] for line in lines for key in ("image", "mask")}
        for name in sorted(files):
            if (folder / name).is_file():  # a record may name a missing file on purpose
                bundle.write(folder / name, f"{top}{name}")
        for name, data in (extra or {}).items():
            bundle.writestr(name, data)
    return archive


def test_scoring_the_demo_set_ranks_heads_with_intervals(server):
    url, model = server
    client = Client(url, verbose=False)
    shown = _score(client, model)
    summary, ranking, skipped, heatmap, head_summary = (shown[name] for name in ("ds-summary", "ds-ranking", "ds-skipped",
                                                                                "ds-heatmap", "ds-head"))
    layer, head, downloads = shown["ds-layer"], shown["ds-head-number"], shown["ds-downloads"]
    layers, heads = 2, 4
    assert summary.startswith(f"**{len(list(read_dataset(EXAMPLE_DIR)))} images scored** from the demo set") and not skipped
    rows = ranking["data"]
    assert ranking["headers"] == ["layer", "head", "mean HI", "HI low", "HI high", "mass"]
    assert sorted((row[0], row[1]) for row in rows) == [(l, h) for l in range(layers) for h in range(heads)]
    assert [row[2] for row in rows] == sorted((row[2] for row in rows), reverse=True)
    assert all(low <= hi <= high for _, _, hi, low, high, _ in rows)
    assert (layer, head) == tuple(rows[0][:2])  # the best head is selected first
    scores = json.loads(open(next(p for p in downloads if p.endswith(".json"))).read())
    top = scores["heads"][0]
    assert rows[0] == [top["layer"], top["head"], *(round(top[key], 4) for key in ("hi", "hi_low", "hi_high", "mass"))]
    # the mean HI of a head is the mean of its per-image HI in the CSV download
    per_image = _per_image_hi(next(p for p in downloads if p.endswith(".csv")), layer, head)
    assert rows[0][2] == pytest.approx(np.mean([hi for _, hi in per_image]), abs=1e-4)
    layout = HeatmapLayout.fit(layers, heads)  # the drawing's own geometry, which a click is mapped back with
    assert Image.open(heatmap).size == (layout.width, layout.height)
    assert f"Layer {layer}, head {head}:** mean HI {rows[0][2]:.3f}" in head_summary


@pytest.mark.parametrize("layer, head", [(0, 0), (1, 2)])
def test_a_chosen_heads_best_and_worst_images_are_ordered_by_its_hi(server, layer, head):
    url, model = server
    client = Client(url, verbose=False)
    downloads = _score(client, model)["ds-downloads"]
    per_image = _per_image_hi(next(p for p in downloads if p.endswith(".csv")), layer, head)
    shown = predict(client, "/select_dataset_head", selected_layer=layer, selected_head=head, overlay=True)
    best, worst = shown["ds-best"], shown["ds-worst"]
    assert (shown["ds-layer"], shown["ds-head-number"]) == (layer, head)
    by_hi = sorted(per_image, key=lambda item: -item[1])  # stable: ties keep dataset order
    assert [item["caption"] for item in best] == [f"HI {hi:.2f} · {rid}" for rid, hi in by_hi[: GALLERY_SIZE]]
    by_low = sorted(per_image, key=lambda item: item[1])
    assert [item["caption"] for item in worst] == [f"HI {hi:.2f} · {rid}" for rid, hi in by_low[: GALLERY_SIZE]]
    picture = np.asarray(Image.open(best[0]["image"]).convert("RGB"))
    assert min(picture.shape[:2]) >= 192  # small images are enlarged for the gallery


def _run_folders() -> set[Path]:
    return set(UNPACKED.glob("run-*"))


def test_a_dataset_zip_is_scored_and_its_bad_records_listed(server, tmp_path):
    url, model = server
    client = Client(url, verbose=False)
    folder = tmp_path / "set"
    shutil.copytree(EXAMPLE_DIR, folder)
    with open(folder / "data.jsonl", "a") as index:  # a record whose mask file is missing
        index.write(json.dumps({"id": "lost", "image": "images/synth-2026-00000.png", "mask": "masks/lost.png", "text": "a thing"}) + "\n")
    archive = _zip_of(folder, tmp_path / "scenes.zip", top="scenes/", extra={"__MACOSX/scenes/._data.jsonl": b"\0"})
    before = _run_folders()
    shown = _score(client, model, "zip", archive)
    summary, skipped, downloads = shown["ds-summary"], shown["ds-skipped"], shown["ds-downloads"]
    assert "from `scenes.zip` (1 skipped)" in summary
    assert "line 9 (lost)" in skipped and "lost.png" in skipped
    assert json.loads(open(next(p for p in downloads if p.endswith(".json"))).read())["images"] == 8
    (first_run,) = _run_folders() - before
    limited = _score(client, model, "zip", archive, limit=3)
    assert limited["ds-summary"].startswith("**3 images scored** from `scenes.zip`")
    assert not first_run.exists()  # the session's next run replaced it


def _evil_member(archive: Path) -> Path:
    _zip_of(EXAMPLE_DIR, archive, records=2, extra={"../evil.txt": b"outside"})
    return archive


def _no_index(archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(EXAMPLE_DIR / "images" / "synth-2026-00000.png", "images/synth-2026-00000.png")
    return archive


def _outside_path(archive: Path) -> Path:
    record = {"id": "a", "image": "../../../etc/hostname", "mask": "masks/a.png", "text": "a cat"}
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("data.jsonl", json.dumps(record) + "\n")
    return archive


def _all_bad(archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("data.jsonl", json.dumps({"id": "a", "image": "missing.png", "mask": "missing.png", "text": "a cat"}) + "\n")
    return archive


def _not_a_zip(archive: Path) -> Path:
    archive.write_text("just text")
    return archive


@pytest.mark.parametrize("make, message", [
    (_evil_member, "unsafe path '../evil.txt'"),
    (_no_index, "no data.jsonl at its root or in one top folder"),
    (_outside_path, "is not a path inside the dataset"),
    (_all_bad, "could be scored"),
    (_not_a_zip, "not a readable zip"),
])
def test_a_bad_zip_is_shown_and_the_app_keeps_serving(server, tmp_path, make, message):
    url, model = server
    client = Client(url, verbose=False)
    before = _run_folders()
    refused = _score(client, model, "zip", make(tmp_path / "upload.zip"))
    assert message in refused["ds-message"] and refused["ds-summary"] == UNCHANGED
    assert _run_folders() <= before  # a failed run leaves no files behind
    assert not (UNPACKED / "evil.txt").exists()
    assert _score(client, model)["ds-summary"].startswith("**8 images scored**")


def test_scoring_a_zip_needs_an_upload_and_selecting_needs_a_score(server):
    url, model = server
    client = Client(url, verbose=False)
    assert "upload a dataset .zip first" in _score(client, model, "zip")["ds-message"]
    refused = predict(client, "/select_dataset_head", selected_layer=0, selected_head=0, overlay=True)
    assert "score a dataset first" in refused["ds-message"]


def _link(archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        link = zipfile.ZipInfo("data.jsonl")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(link, "/etc/passwd")
    return archive


def _absolute(archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(zipfile.ZipInfo("/tmp/evil.txt"), "x")  # ZipInfo keeps the leading slash; writestr(str) strips it
    return archive


@pytest.mark.parametrize("make, limits, message", [
    (_evil_member, {}, "unsafe path"),
    (_absolute, {}, "unsafe path '/tmp/evil.txt'"),
    (_link, {}, "symbolic link"),
    (lambda archive: _zip_of(EXAMPLE_DIR, archive), {"MAX_ZIP_MEMBERS": 10}, "holds 17 files; at most 10"),
    (lambda archive: _zip_of(EXAMPLE_DIR, archive), {"MAX_ZIP_BYTES": 2**20 // 100}, "at most 0.0 MiB are accepted"),
])
def test_extracting_refuses_unsafe_or_oversized_zips_before_writing(tmp_path, monkeypatch, make, limits, message):
    for name, value in limits.items():
        monkeypatch.setattr(archives, name, value)
    into = tmp_path / "into"
    with pytest.raises(InputError, match=re.escape(message)):
        archives.extract_dataset_zip(make(tmp_path / "upload.zip"), into)
    assert not into.exists() or not any(into.rglob("*"))
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("top", ["", "my-scenes/"])
def test_extracting_finds_the_dataset_at_the_root_or_in_one_top_folder(tmp_path, top):
    folder = archives.extract_dataset_zip(_zip_of(EXAMPLE_DIR, tmp_path / "set.zip", top=top, records=2), tmp_path / "into")
    assert folder == tmp_path / "into" / top
    assert [r.id for r in read_dataset(folder)] == [r.id for r in read_dataset(EXAMPLE_DIR, limit=2)]


def test_gallery_overlay_puts_the_map_on_its_cells_and_outlines_the_mask():
    image = np.full((8, 8, 3), 128, np.uint8)
    head_map = np.array([[1.0, 0.0], [0.0, 0.0]])  # the top-left quarter
    mask = np.zeros((8, 8), bool)
    mask[4:, 4:] = True
    shown = map_overlay(image, head_map, mask, min_side=16).astype(int)
    assert shown.shape == (16, 16, 3)
    assert (shown[:8, :8].sum(-1) > shown[:8, 8:].sum(-1)).all()  # the hot cell is brighter (inferno)
    assert (shown[8:10, 8:] == (0, 255, 255)).all() and (shown[12, 12] != (0, 255, 255)).any()  # outline only


# --- the Fine-tune tab -----------------------------------------------------------------------------


def _finetune_job(client, model, source="demo", archive=None, strategy="top", layers="", k=1, steps=3, meteor=False, lr=1e-3,
                  task=None, **options):
    """`task`: None leaves the page's default (captioning); `options`: the event's other inputs by name."""
    return client.submit(model_name=model, device="cpu", source=source, archive=handle_file(str(archive)) if archive else None,
                         strategy=strategy, layer_list=layers, k=k, rank=4, steps=steps, lr=lr, batch_size=2, seed=0,
                         meteor=meteor, **({"task": task} if task else {}), **options, api_name="/finetune")


def _finetune(client, model, **options):
    """The finetune event's last outputs by elem_id."""
    return outputs(client, "/finetune", _finetune_job(client, model, **options).result(timeout=300))


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft asks transformers
def test_a_finetune_finishes_with_metrics_a_loss_curve_and_a_loadable_adapter(server, explorer_cache, tmp_path):
    from peft import PeftModel

    url, model = server
    client = Client(url, verbose=False)
    client.predict(model_name=model, device="cpu", api_name="/load_model")  # the explorer's model, cached before the run
    explorer = explorer_cache.get(LoadConfig(model=model, device="cpu"))
    weights = {name: value.clone() for name, value in explorer.model.state_dict().items()}
    layer_scores = json.loads(open(next(p for p in _score(client, model)["ds-downloads"] if p.endswith(".json"))).read())["layers"]

    shown = _finetune(client, model, steps=3, meteor=True)
    status, loss, metrics, summary = shown["ft-status"], shown["ft-loss"], shown["ft-metrics"], shown["ft-summary"]
    layers_figure, samples, archive = shown["ft-layers"], shown["ft-samples"], shown["ft-download"]
    assert status.startswith("**Finished:** 3 steps")
    assert [row[0] for row in loss["data"]] == [1, 2, 3]
    meteor = ["METEOR"] if shutil.which("java") else []  # METEOR runs on Java, where it is installed
    assert [row[0] for row in metrics["data"]] == ["BLEU-4", "ROUGE-L", "CIDEr", *meteor, "exact match"]
    assert all(after == pytest.approx(before + change, abs=2e-4) for _, before, after, change in metrics["data"])
    # top-1: the best layer of the Dataset tab's scores of the same set, which this session made just before
    assert f"on layer(s) {layer_scores[0]['layer']} of 2 (the top 1 by HI)" in summary
    assert "the Dataset tab's scores of the demo set (8 images)" in summary
    assert re.search(r"trainable parameters\*\* [\d,]+ of [\d,]+ \(\d", summary)
    assert samples["headers"] == ["id", "reference", "before", "after"] and samples["data"]
    assert Image.open(layers_figure).size[0] > 100

    with zipfile.ZipFile(archive) as bundle:
        assert {"adapter_config.json", "adapter_model.safetensors", "run.json"} <= set(bundle.namelist())
        bundle.extractall(tmp_path / "adapter")
    run = json.loads((tmp_path / "adapter" / "run.json").read_text())
    assert len(run["losses"]) == 3 and run["layers"] == [layer_scores[0]["layer"]]
    tuned = PeftModel.from_pretrained(load_model(LoadConfig(model=model, device="cpu")).model, str(tmp_path / "adapter"))
    assert sum("lora_A" in name for name, _ in tuned.named_parameters()) == 4  # q, k, v, o of one layer

    # the explorer's cached model was never touched: same weights, no LoRA layers
    assert explorer_cache.get(LoadConfig(model=model, device="cpu")) is explorer
    assert explorer.model.state_dict().keys() == weights.keys()
    assert all(torch.equal(value, weights[name]) for name, value in explorer.model.state_dict().items())

    # the tuned model, back in the explorer
    used = predict(client, "/use_tuned_model")
    shown_model, device, lora, loaded = used["model"], used["device"], used["lora"], used["model-status"]
    assert (shown_model, device) == (model, "cpu") and lora.startswith("fine-tune: run-")  # the run's name, not its path
    assert "+ LoRA" in loaded and "2 language-model layers" in loaded
    _, mask, _ = _example()
    summary = _analyze(client, model, mask, lora=lora)["summary"]
    assert f"`{model} + LoRA adapter`" in summary and str(UNPACKED) not in summary  # the app's own folders are not shown


def test_the_ablation_view_describes_again_without_the_top_heads_and_shows_how_the_others_change(server, explorer_cache):
    url, model = server
    client = Client(url, verbose=False)
    image, mask_file, _ = _example()
    ablate = dict(model_name=model, device="cpu")
    assert "run an analysis first" in predict(client, "/ablate", **ablate)["ablate-message"]
    analyzed = _analyze(client, model, mask_file, key_phrase="orange cross")
    ranked = list(_ranked_hi(analyzed["ranking"]))  # by HI, as the page ranks them
    shown = predict(client, "/ablate", which="top-k heads by HI", k=2, **ablate)
    assert not shown["ablate-message"]
    # the oracle: hi_core's own ablation of the same two heads on the server's model, image and text
    loaded = explorer_cache.get(LoadConfig(model=model, device="cpu"))
    mask = load_mask(mask_file)
    config = AnalysisConfig(key_phrase="orange cross")
    expected = head_ablation.ablate_image(loaded, Image.open(image).convert("RGB"), mask, "a small orange cross at the left",
                                          ranked[:2], config)
    intact = analyze_image(loaded, Image.open(image).convert("RGB"), mask, "a small orange cross at the left", config)
    removed = ", ".join(f"{l}:{h}" for l, h in sorted(ranked[:2]))
    assert f"Without heads {removed} (zero)" in shown["ablate-texts"]
    for text in (expected.intact_text, expected.ablated_text):
        assert (html.escape(" ".join(text.split())) if text else "(nothing: the model ended at once)") in shown["ablate-texts"]
    difference = expected.ablated.hi - intact.hi
    layer, head = map(int, re.search(r"\*\*Layer (\d+), head (\d+)\*\*", shown["ablate-info"]).groups())
    assert abs(difference[layer, head]) == pytest.approx(np.abs(difference).max(), abs=2e-4)  # the largest change first
    change = float(re.search(r"\(ΔHI \*\*(\S+)\*\*\)", shown["ablate-info"]).group(1))
    assert change == pytest.approx(difference[layer, head], abs=1e-3)
    assert "HI every head" in shown["ablate-info"] and "heads removed" in shown["ablate-info"]
    layout = HeatmapLayout.fit(*intact.hi.shape)
    assert Image.open(shown["ablate-heatmap"]).size == (layout.width, layout.height)
    # a bad list: told beside the button, the results stay
    for listed, message in (("9:0", "layer 9 is not a scored layer"), ("top", "layer:head pairs")):
        refused = predict(client, "/ablate", which="heads listed", listed=listed, **ablate)
        assert message in refused["ablate-message"] and refused["ablate-heatmap"] == UNCHANGED
    selected = predict(client, "/ablate", which="the selected head", **ablate)
    top_layer, top_head = ranked[0]  # an analysis selects its best head
    assert f"Without heads {top_layer}:{top_head} (zero)" in selected["ablate-texts"]


def test_the_before_after_view_shows_tuned_minus_base_hi_of_the_last_analysis(server):
    url, model = server
    client = Client(url, verbose=False)
    _, mask, _ = _example()
    assert "run an analysis first" in predict(client, "/before_after", model_name=model, device="cpu", lora="fine-tune: x")["compare-message"]
    base = _analyze(client, model, mask, key_phrase="orange cross")
    assert "set a LoRA adapter first" in predict(client, "/before_after", model_name=model, device="cpu", lora="")["compare-message"]
    refused = predict(client, "/before_after", model_name=model, device="cpu", lora="fine-tune: run-none")
    assert "not this session's latest fine-tune" in refused["compare-message"] and refused["diff-heatmap"] == UNCHANGED
    assert _finetune(client, model, strategy="all", steps=3, lr=0.05)["ft-status"].startswith("**Finished:** 3 steps")
    lora = predict(client, "/use_tuned_model")["lora"]
    tuned = _analyze(client, model, mask, key_phrase="orange cross", lora=lora)  # the oracle: each model's own analysis
    expected = {head: tuned_hi - _ranked_hi(base["ranking"])[head] for head, tuned_hi in _ranked_hi(tuned["ranking"]).items()}
    assert any(abs(change) > 1e-3 for change in expected.values())  # the tuning moved some head

    shown = predict(client, "/before_after", model_name=model, device="cpu", lora=lora)
    assert not shown["compare-message"]
    info = shown["diff-info"]
    layer, head = map(int, re.search(r"\*\*Layer (\d+), head (\d+)\*\*", info).groups())
    assert abs(expected[layer, head]) == pytest.approx(max(abs(change) for change in expected.values()), abs=2e-4)  # the largest change first
    before, after, change = (float(x) for x in re.search(r"HI base \*\*(\S+)\*\* → tuned \*\*(\S+)\*\* \(ΔHI \*\*(\S+)\*\*\)", info).groups())
    assert before == pytest.approx(_ranked_hi(base["ranking"])[layer, head], abs=1e-3)
    assert after == pytest.approx(_ranked_hi(tuned["ranking"])[layer, head], abs=1e-3)
    assert change == pytest.approx(expected[layer, head], abs=1e-3)
    rise = max(expected, key=expected.get)
    assert f"Largest rise: layer {rise[0]}, head {rise[1]} ({expected[rise]:+.3f})" in info
    assert f"tuned `{model} + LoRA" in info and f"base `{model}`" in info
    layers, heads = (max(l for l, _ in expected) + 1, max(h for _, h in expected) + 1)
    layout = HeatmapLayout.fit(layers, heads)  # the HI heatmap's geometry: a click maps back the same way
    assert Image.open(shown["diff-heatmap"]).size == (layout.width, layout.height)
    picture = np.asarray(Image.open(shown["diff-head"]).convert("RGB"))
    assert picture.shape[1] > picture.shape[0]  # two panels side by side
    # a new analysis clears the comparison
    assert _analyze(client, model, mask, lora=lora)["diff-heatmap"] is None


def _wait_for(client, job, pattern: str, timeout: float = 120) -> None:
    """Until the status a running job streams matches `pattern`."""
    deadline = time.monotonic() + timeout
    while not any(re.search(pattern, outputs(client, "/finetune", output)["ft-status"] or "") for output in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), f"no {pattern!r} in the status: {str(job.outputs()[-1:])[:300]}"
        time.sleep(0.1)


def test_a_second_run_on_the_same_data_reuses_the_ranking_and_the_estimate_follows_the_measured_rates(server):
    url, model = server
    client = Client(url, verbose=False)  # no Dataset tab scores in this session: the run ranks, or reuses a run's ranking
    first = _finetune(client, model, preset="full")
    assert "**Finished:** 3 steps" in first["ft-status"]
    assert re.search(r"Dataset HI of the demo set, scored for (this|an earlier) run", first["ft-summary"])
    second = _finetune(client, model, preset="full")
    assert "Dataset HI of the demo set, scored for an earlier run" in second["ft-summary"]
    estimate = second["ft-estimate"]  # what the next launch of these settings will take, from this run's rates
    assert re.search(r"\*\*About \d+ s\*\* to run: training \d+ s, captioning \d+ held-out records twice", estimate)
    assert "ranking: reused" in estimate and "measured by this server's last run of this model" in estimate


def test_cancelling_a_finetune_stops_it_and_leaves_no_files(server):
    url, model = server
    client = Client(url, verbose=False)
    before = _run_folders()
    job = _finetune_job(client, model, strategy="random", steps=100_000)
    _wait_for(client, job, r"step \d+ of 100000 · loss \d\.\d{3} · \d+ s elapsed")
    client.predict(api_name="/cancel_finetune")
    shown = outputs(client, "/finetune", job.result(timeout=60))
    status, loss = shown["ft-status"], shown["ft-loss"]
    steps = re.match(r"\*\*Cancelled at step (\d+) of 100000\*\*: nothing was saved", status)
    assert steps and loss["data"][-1][0] == int(steps.group(1)) - 1  # the plot ends at the last step done
    assert _run_folders() == before
    assert "fine-tune a model first" in predict(client, "/use_tuned_model")["ft-status"]  # nothing was kept for this session
    assert _finetune(client, model, strategy="all", steps=1)["ft-status"].startswith("**Finished:** 1 steps")  # and it keeps serving


def test_a_zip_can_be_fine_tuned_on(server, tmp_path):
    url, model = server
    client = Client(url, verbose=False)
    archive = _zip_of(EXAMPLE_DIR, tmp_path / "scenes.zip", top="scenes/")
    shown = _finetune(client, model, source="zip", archive=archive, strategy="list", layers="1", steps=2)
    status, summary = shown["ft-status"], shown["ft-summary"]
    assert status.startswith("**Finished:** 2 steps") and "on `scenes.zip`: LoRA rank 4 on layer(s) 1 of 2 (chosen by hand)" in summary


@pytest.mark.parametrize("options, message", [
    ({"k": 3}, "k must be between 1 and the language model's 2 layers, got 3"),
    ({"strategy": "list", "layers": "0,7"}, "layer 7 does not exist"),
    ({"strategy": "list", "layers": "0,x"}, "layers must be one of top, bottom, random, all or indices"),
    ({"strategy": "list", "layers": " "}, "type the layers to tune"),
    ({"steps": 0}, "Steps: Value 0 is less than minimum value 1"),  # Gradio's own check, told in the status too
    ({"source": "zip"}, "upload a dataset .zip first"),
    ({"source": "zip", "archive": "not-a-zip"}, "not a readable zip"),
    ({"source": "zip", "archive": "outside"}, "is not a path inside the dataset"),
])
def test_bad_finetune_input_is_shown_and_leaves_no_files(server, tmp_path, options, message):
    url, model = server
    client = Client(url, verbose=False)
    makers = {"not-a-zip": _not_a_zip, "outside": _outside_path}
    if "archive" in options:
        options["archive"] = makers[options["archive"]](tmp_path / "upload.zip")
    before = _run_folders()
    shown = _finetune(client, model, **options)
    assert message in shown["ft-status"] and shown["ft-summary"] == UNCHANGED
    assert _run_folders() <= before


def test_the_vqa_task_answers_each_records_question_and_shows_answer_accuracy(server, tmp_path):
    url, model = server
    client = Client(url, verbose=False)
    archive = _zip_of(write_vqa_dataset(tmp_path / "vqa", n=10, prompts="some"), tmp_path / "vqa.zip")
    shown = _finetune(client, model, source="zip", archive=archive, strategy="list", layers="1", steps=2, task="vqa")
    status, metrics, summary, samples = shown["ft-status"], shown["ft-metrics"], shown["ft-summary"], shown["ft-samples"]
    assert status.startswith("**Finished:** 2 steps")
    assert [row[0] for row in metrics["data"]] == ["answer accuracy"]  # instead of the caption metrics
    before, after, change = metrics["data"][0][1:]
    assert 0 <= before <= 1 and 0 <= after <= 1 and change == pytest.approx(after - before, abs=2e-4)
    shown_before, shown_after = (float(x) for x in re.search(r"before \*\*(\S+)\*\* \[\S+, \S+\] → after \*\*(\S+)\*\* \[", summary).groups())
    assert (shown_before, shown_after) == (pytest.approx(before, abs=1e-3), pytest.approx(after, abs=1e-3))
    assert "**Questions answered before and after:**" in summary and "normalized exact match" in summary
    assert samples["headers"] == ["id", "question", "answer", "before", "after"] and samples["data"]
    questions = {json.loads(line)["id"]: json.loads(line).get("prompt", "") for line in (tmp_path / "vqa" / "data.jsonl").read_text().splitlines()}
    assert all(row[1] == questions[row[0]] for row in samples["data"]) and all(row[4][-1] in "✓✗" for row in samples["data"])


@pytest.mark.parametrize("source", ["demo", "zip"])
def test_the_vqa_task_on_a_dataset_without_questions_says_so_in_the_page(server, tmp_path, source):
    url, model = server
    client = Client(url, verbose=False)
    archive = _zip_of(write_vqa_dataset(tmp_path / "plain", n=4, prompts="none"), tmp_path / "plain.zip") if source == "zip" else None
    before = _run_folders()
    shown = _finetune(client, model, source=source, archive=archive, strategy="all", steps=1, task="vqa")
    name = "the demo set" if source == "demo" else "`plain.zip`"
    assert f"the VQA task needs records whose `prompt` is the question (and `text` its answer); no record of {name} has a prompt" in shown["ft-status"]
    assert shown["ft-summary"] == UNCHANGED and str(tmp_path) not in shown["ft-status"] and _run_folders() <= before


def test_a_cancel_with_nothing_running_does_not_stop_the_next_run(server):
    url, model = server
    client = Client(url, verbose=False)
    client.predict(api_name="/cancel_finetune")  # only a warning in the page
    assert _finetune(client, model, strategy="random", steps=2)["ft-status"].startswith("**Finished:** 2 steps")


def test_a_tiny_image_and_grabcut_on_it_show_a_message_and_the_app_keeps_serving(server, tmp_path):
    url, model = server
    client = Client(url, verbose=False)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tiny)
    Image.new("L", (1, 1), 255).save(tmp_path / "tiny-mask.png")
    refused = _analyze(client, model, str(tmp_path / "tiny-mask.png"), "a red dot", image=str(tiny))
    assert "1x1 px: it must be at least 8 px on each side" in refused["analyze-message"]
    brush = tmp_path / "brush.png"
    Image.new("RGBA", (1, 1), (255, 0, 0, 255)).save(brush)
    proposed = predict(client, "/propose_mask", editor={"background": handle_file(str(tiny)), "layers": [handle_file(str(brush))],
                                                        "composite": handle_file(str(tiny))})
    assert "at least 8 px" in proposed["analyze-message"]
    _, mask, _ = _example()
    assert "Best head" in _analyze(client, model, mask)["summary"]


def test_the_editor_gets_an_examples_pixels_as_they_are():
    """What the server puts in the editor (an example, a GrabCut mask) comes back as those pixels: the explorer
    scores an example's own image, not a lossy copy (Gradio's editor sends WebP unless told otherwise)."""
    from ui.components import BoundedImageEditor
    from ui.editor import editor_value

    image = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)  # noise: what a lossy codec alters most
    mask = np.zeros((50, 60), bool)
    mask[10:30, 20:40] = True
    editor = BoundedImageEditor(max_pixels=10**6, max_side=1536, type="numpy")
    sent = editor.postprocess(editor_value(image, mask))
    back = editor.preprocess(sent)  # as the page sends the files back, unchanged
    np.testing.assert_array_equal(back["background"][..., :3], image)
    np.testing.assert_array_equal(back["layers"][0][..., 3] > 0, mask)


def test_a_new_image_gets_a_contrasting_brush_and_the_same_image_again_leaves_the_editor_alone():
    """The editor says `upload` also when it redraws a value it was sent; an update to it then makes it reload its
    value and send its layers again (Gradio 6.31), which delays the next event by ~1 s. So the handler updates
    the editor only when the brush colour changes."""
    import gradio as gr

    demo = build_demo()
    uploaded = next(f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "image_uploaded")
    editor, colour_state = uploaded.inputs
    magenta = np.full((40, 40, 3), (255, 0, 255), np.uint8)  # the default brush's colour: the brush must change
    value = {"background": magenta, "layers": [], "composite": magenta}
    update = uploaded.fn(value, "#ff00ff")
    colour = update[colour_state]
    assert colour != "#ff00ff" and update[editor].brush.default_color == colour
    assert uploaded.fn(value, colour) == gr.skip()  # the same image redrawn: nothing sent to the editor
