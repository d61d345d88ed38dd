"""How long "Analyze" and a heatmap click take, and how much of it is drawing: matplotlib (before) against
the NumPy/PIL pictures of `hi_core.figures.heatmap`, `hi_core.figures.overlays` and `hi_core.figures.bars` (after), side by side in one run.

On the example images (`hi_core/assets/examples/`), for the demo model (3 layers x 4 heads) and a
random-weight LLaVA with 28 text layers x 12 heads (built in a temporary folder, loaded through
`hi_core.model.loading`), every repetition times, per image:
  analyze     hi_core.method.analysis.analyze_image (inputs, capture, mask on the grid, HI of every head)
  views old   what the explorer's Analyze handler drew before: three matplotlib `overlay_grid`s (the
              selected head + object patches, the top-N heads, every head of a layer) through
              `figure_to_array`, the fixed-cell heatmap and matplotlib layer bars (both kept below)
  views new   the same pictures with `overlay_panels`, `draw_heatmap`, `draw_layer_bars`
  JSON + CSV  the score downloads (scores JSON + heads CSV), written before and now
  3 PNG files the figure PNGs the handler also wrote before (PIL's default compression, level 6); now
              each picture's own download button serves it
  click old   a heatmap click before: every view drawn again
  click new   a click now: `draw_heatmap` with the new selection and the selected head's two panels
The handler is analyze + views + files (summed per repetition; old: with the three PNG files, new:
without). Reported: medians, their ratio to analyze_image, and each picture timed alone. The drawing
code of each path is here (the app may change around it). Beside them, the app's own handlers, called
as Gradio calls them (no browser, no encoding of the returned pictures): `ExplorerTab.analyze`
(per-token maps kept), `select_head` (a click) and `choose_tokens` (a token ticked: every view
redrawn, no forward pass).

Run: python bench/analysis.py [--models demo wide] [--reps 3] [--threads N] [--top-n 8] [--top-k 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # hi_core from this checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from hi_core.method.analysis import AnalysisConfig, analyze_image  # noqa: E402
from hi_core.figures.bars import draw_layer_bars  # noqa: E402
from hi_core.data.datasets import read_dataset  # noqa: E402
from hi_core.figures.heatmap import draw_heatmap  # noqa: E402
from hi_core.model.loading import ASSETS_DIR, LoadConfig, load_model  # noqa: E402
from hi_core.figures.overlays import overlay_panels  # noqa: E402
from hi_core.figures.plots import figure_to_array, overlay_grid  # noqa: E402

EXAMPLES_DIR = ASSETS_DIR / "examples"
WIDE_LAYERS, WIDE_HEADS = 28, 12


def build_wide(folder: Path) -> Path:
    """A LLaVA with the demo's vision tower, processor and tokenizer and a random Llama of 28 layers x 12
    heads (hidden 192: small, so the forward stays cheap and the drawing of 336 heads shows)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from hi_core.demo.build import build_config, build_processor

    processor = build_processor()
    tokenizer = processor.tokenizer
    demo = build_config(tokenizer)
    text = dict(model_type="llama", hidden_size=16 * WIDE_HEADS, intermediate_size=384, num_hidden_layers=WIDE_LAYERS,
                num_attention_heads=WIDE_HEADS, num_key_value_heads=WIDE_HEADS, vocab_size=len(tokenizer),
                max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=demo.vision_config.to_dict(), text_config=text, image_token_id=demo.image_token_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():  # larger-than-init weights: attention far from uniform, as in tests/tiny_models.py
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# --- the app's drawing before (matplotlib bars, fixed-cell heatmap), kept here to time it against ---

def old_hi_cells(hi: np.ndarray, cell: int = 24, selected: tuple[int, int] | None = None) -> np.ndarray:
    """The (layers, heads) HI matrix as an image of `cell`-px squares (viridis, 0..max), layers on
    rows from the top, heads on columns; a clicked pixel (x, y) is head x // cell, layer y // cell.
    The selected head is outlined in white. (The app's heatmap before `draw_heatmap`.)"""
    from matplotlib import colormaps

    scaled = hi / max(1e-6, float(hi.max()))
    colours = (colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)  # (layers, heads, 3)
    image = np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)
    image[::cell, :] = 255 - (255 - image[::cell, :]) // 2  # faint grid lines
    image[:, ::cell] = 255 - (255 - image[:, ::cell]) // 2
    if selected is not None:
        layer, head = selected
        y0, x0 = layer * cell, head * cell
        image[y0 : y0 + cell, x0 : x0 + 2] = image[y0 : y0 + cell, x0 + cell - 2 : x0 + cell] = 255
        image[y0 : y0 + 2, x0 : x0 + cell] = image[y0 + cell - 2 : y0 + cell, x0 : x0 + cell] = 255
    return image


def old_layer_bars(scores: np.ndarray, top_k: int = 4, ax: Axes | None = None, title: str = "Layer scores") -> Figure:
    """Bar chart of the layer scores. The top-k layers (those LoRA would tune) are red only when k is
    smaller than the number of layers: k >= layers would paint every bar "top", so then none is
    highlighted and the title says why. Fixed margins in pixels (a layout engine doubled the drawing time)."""
    layers = int(scores.size)
    top_k = int(top_k)
    highlight = 0 < top_k < layers
    if ax is None:
        width = max(3.8, 0.3 * layers + 1.5)  # inches at 100 dpi: margins of 50 px left, 12 px right
        figure = Figure(figsize=(width, 2.6))
        ax = figure.subplots()
        figure.subplots_adjust(left=0.5 / width, right=1 - 0.12 / width, bottom=0.19, top=0.86)
    else:
        figure = ax.figure
    top = set(np.argsort(-scores, kind="stable")[:top_k].tolist()) if highlight else set()
    colours = ["#d62728" if layer in top else "#8c8c8c" for layer in range(layers)]
    ax.bar(np.arange(layers), scores, color=colours)
    if layers <= 32:
        ax.set_xticks(np.arange(layers))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.6, layers - 0.4)
    ax.set_xlabel("layer", fontsize=8)
    ax.set_ylabel("score", fontsize=8)
    ax.tick_params(labelsize=8)
    if highlight:
        ax.set_title(f"{title}: top {top_k} of {layers} layers in red", fontsize=9)
    else:
        ax.set_title(f"{title} (k={top_k} ≥ {layers} layers: none marked)" if top_k >= layers
                     else f"{title} (none highlighted)", fontsize=9)
    return figure


def titles_and_maps(analysis, selected, top_n, layer):
    """What the explorer shows: (images' maps, titles, suptitle) of the selected head, the top heads, a layer."""
    layers, heads = analysis.hi.shape
    l0, h0 = selected
    head = ([analysis.maps[l0, h0], analysis.mask.object_patches.astype(float)],
            [f"layer {l0} head {h0}: HI {analysis.hi[l0, h0]:.3f}, mass {analysis.mass[l0, h0]:.3f}", "object patches on the grid"], "")
    top = analysis.ranked_heads()[:top_n]
    best = ([analysis.maps[l, h] for l, h in top], [f"L{l} H{h}: {analysis.hi[l, h]:.2f}" for l, h in top], f"top {len(top)} heads by HI")
    layer = int(np.clip(layer, 0, layers - 1))
    every = ([analysis.maps[layer, h] for h in range(heads)], [f"H{h}: {analysis.hi[layer, h]:.2f}" for h in range(heads)], f"layer {layer}")
    return head, best, every


def views_old(analysis, image, mask, selected, top_n, layer, top_k, only_head=False):
    head, best, every = titles_and_maps(analysis, selected, top_n, layer)
    layers, heads = analysis.hi.shape
    cell = int(np.clip(min(320 // heads, 260 // layers), 8, 48))  # the app's heatmap_cell_px, before
    out = {"heatmap": old_hi_cells(analysis.hi, cell, selected)}
    out["head"] = figure_to_array(overlay_grid([image] * 2, head[0], [mask] * 2, head[1], columns=2))
    if only_head:
        return out
    out["top"] = figure_to_array(overlay_grid([image] * len(best[0]), best[0], [mask] * len(best[0]), best[1], suptitle=best[2]))
    out["layer"] = figure_to_array(overlay_grid([image] * heads, every[0], [mask] * heads, every[1], suptitle=every[2]))
    out["bars"] = figure_to_array(old_layer_bars(analysis.layer_scores, top_k=min(top_k, layers)))
    return out


def views_new(analysis, image, mask, selected, top_n, layer, top_k, only_head=False):
    head, best, every = titles_and_maps(analysis, selected, top_n, layer)
    heads = analysis.hi.shape[1]
    out = {"heatmap": draw_heatmap(analysis.hi, selected)}
    out["head"] = overlay_panels([image] * 2, head[0], [mask] * 2, head[1], columns=2)
    if only_head:
        return out
    out["top"] = overlay_panels([image] * len(best[0]), best[0], [mask] * len(best[0]), best[1], columns=4, title=best[2])
    out["layer"] = overlay_panels([image] * heads, every[0], [mask] * heads, every[1], columns=4, title=every[2])
    out["bars"] = draw_layer_bars(analysis.layer_scores, top_k=top_k)
    return out


def score_files(analysis, folder: Path) -> None:
    (folder / "scores.json").write_text(json.dumps(analysis.to_json(), indent=2))
    (folder / "heads.csv").write_text(analysis.to_csv())


def picture_files(views, folder: Path) -> None:
    """The figure PNGs the handler wrote before (since, each picture's own download button serves it)."""
    for name in ("head", "top", "bars"):
        Image.fromarray(views[name]).save(folder / f"{name}.png")  # PIL's default compress_level 6


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def explorer_tab(model: str):
    """The app's Explorer tab (components built in a Blocks that is never served), for its handlers."""
    import gradio as gr

    from ui.context import AppContext
    from ui.explorer import ExplorerTab

    with gr.Blocks():
        return ExplorerTab(AppContext(), gr.State(None), model)


def app_handlers(tab, model: str, record, args: argparse.Namespace, previous):
    """(session, {row: seconds}) of the app's Analyze handler, a head click and a token choice on one record."""
    from ui.options import DEFAULTS

    image = np.asarray(record.image.convert("RGB"))
    strokes = np.zeros(image.shape[:2] + (4,), np.uint8)
    strokes[record.mask] = (255, 0, 0, 255)
    editor = {"background": image, "layers": [strokes], "composite": image}
    scoring = DEFAULTS.scoring
    shown, analyze_s = timed(tab.analyze, model, "cpu", editor, None, record.text, False, record.key_phrase, DEFAULTS.prompt,
                             DEFAULTS.queries, DEFAULTS.view, scoring.binarize, scoring.quantile, scoring.layer_score, args.top_n, 0,
                             args.top_k, previous=previous, progress=lambda *_, **__: None)
    session = shown[tab.state]
    other = session.analysis.ranked_heads()[-1]
    _, click_s = timed(tab.select_head, session, other[0], other[1], args.top_n, 0, args.top_k)
    _, tokens_s = timed(tab.choose_tokens, session, [0, *session.whole.key_tokens], args.top_n, 0, args.top_k)
    return session, {"app: Analyze": analyze_s, "app: click": click_s, "app: token": tokens_s}


def bench_model(name: str, model: str, records: list, args: argparse.Namespace, folder: Path, parts: bool) -> dict[str, float]:
    loaded = load_model(LoadConfig(model, device="cpu"))
    tab, session = explorer_tab(model), None
    timings: dict[str, list[float]] = {key: [] for key in
                                       ("analyze", "views old", "views new", "JSON + CSV", "3 PNG files", "click old", "click new",
                                        "handler old", "handler new", "app: Analyze", "app: click", "app: token")}
    pieces: dict[str, list[float]] = {}
    for rep in range(args.reps + 1):  # the first round warms up (fonts, colormaps, matplotlib's caches)
        for record in records:
            analysis, analyze_s = timed(analyze_image, loaded, record.image, record.mask, record.text,
                                        AnalysisConfig(key_phrase=record.key_phrase))
            image, mask = np.asarray(record.image.convert("RGB")), record.mask
            selected = analysis.ranked_heads()[0]
            other = analysis.ranked_heads()[-1]  # the click selects another head
            old, old_s = timed(views_old, analysis, image, mask, selected, args.top_n, 0, args.top_k)
            new, new_s = timed(views_new, analysis, image, mask, selected, args.top_n, 0, args.top_k)
            _, scores_s = timed(score_files, analysis, folder)
            _, pictures_s = timed(picture_files, new, folder)
            _, click_old_s = timed(views_old, analysis, image, mask, other, args.top_n, 0, args.top_k)
            _, click_new_s = timed(views_new, analysis, image, mask, other, args.top_n, 0, args.top_k, only_head=True)
            session, app_s = app_handlers(tab, model, record, args, session)
            if parts:  # each new picture alone
                head, best, every = titles_and_maps(analysis, other, args.top_n, 0)
                for piece, function in (
                    ("heatmap", lambda: draw_heatmap(analysis.hi, other)),
                    ("head panels (2)", lambda: overlay_panels([image] * 2, head[0], [mask] * 2, head[1], columns=2)),
                    (f"top panels ({len(best[0])})", lambda: overlay_panels([image] * len(best[0]), best[0], [mask] * len(best[0]), best[1], title=best[2])),
                    (f"layer panels ({len(every[0])})", lambda: overlay_panels([image] * len(every[0]), every[0], [mask] * len(every[0]), every[1], title=every[2])),
                    ("bars (matplotlib, before)", lambda: figure_to_array(old_layer_bars(analysis.layer_scores, top_k=args.top_k))),
                    ("bars (draw_layer_bars)", lambda: draw_layer_bars(analysis.layer_scores, top_k=args.top_k)),
                    ("3 PNGs, compress_level 6", lambda: [Image.fromarray(new[n]).save(folder / "x.png") for n in ("head", "top", "bars")]),
                ):
                    seconds = timed(function)[1]
                    if rep:
                        pieces.setdefault(piece, []).append(seconds)
            if rep == 0:
                continue
            for key, value in (("analyze", analyze_s), ("views old", old_s), ("views new", new_s), ("JSON + CSV", scores_s),
                               ("3 PNG files", pictures_s), ("click old", click_old_s), ("click new", click_new_s),
                               ("handler old", analyze_s + old_s + scores_s + pictures_s),
                               ("handler new", analyze_s + new_s + scores_s), *app_s.items()):
                timings[key].append(value)
    session.remove_files()
    layers, heads = analysis.hi.shape
    median = {key: statistics.median(values) for key, values in timings.items()}
    print(f"\n{name}: {layers} layers x {heads} heads, {len(records)} images x {args.reps} reps "
          f"(top-N {args.top_n}, top-k {args.top_k}; the layer view has {heads} panels)")
    for key in timings:
        print(f"  {key:>12}: median {median[key] * 1000:7.1f} ms   ({median[key] / median['analyze']:.2f}x analyze)")
    for piece, values in pieces.items():
        print(f"  {piece:>26}: median {statistics.median(values) * 1000:6.1f} ms")
    print(f"  {'':>12}  drawing: views {median['views old'] / median['views new']:.1f}x faster, "
          f"click {median['click old'] / median['click new']:.1f}x faster")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("demo", "wide"), default=["demo", "wide"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--top-n", type=int, default=8, help="heads in the top-heads grid (the app's default)")
    parser.add_argument("--top-k", type=int, default=4, help="layers marked on the layer bars (the app's default)")
    parser.add_argument("--no-parts", action="store_true", help="skip timing each new picture alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    records = list(read_dataset(EXAMPLES_DIR))
    print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="hi-bench-") as temp:
        temp = Path(temp)
        for name in args.models:
            model = "demo" if name == "demo" else str(build_wide(temp / "wide"))
            (temp / f"{name}-downloads").mkdir()
            label = "demo model" if name == "demo" else f"random LLaVA {WIDE_LAYERS} x {WIDE_HEADS}"
            bench_model(label, model, records, args, temp / f"{name}-downloads", parts=not args.no_parts)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
