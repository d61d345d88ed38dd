"""Round trips in the browser, as a person feels them: the explorer served as `python app.py` serves it (theme,
layout), driven by Playwright in Debian's Chromium, on the demo model.

Measured, `--reps` times each, from the action to the first frame that shows its result:
  click      a heatmap cell clicked -> the head's line names it and its picture is replaced;
  token      a token ticked -> the summary names it (every view redrawn on the chosen rows);
  analyze    Analyze pressed (the model already loaded, the example's mask) -> the summary shows the new analysis.
Times are wall-clock from the action's call to the frame (Playwright polls every animation frame) where the
result shows, so they include Playwright's own round trips to the browser (a few ms); between actions the page is left 0.5-1 s to settle
(the editor uploads its layers after a redraw). Printed: the median and every time, in ms, beside the
goals of the first-run issue (a click < 300 ms, Analyze < 1.5 s, on an idle 2-core machine).

    python bench/browser.py              # ~1 min
    python bench/browser.py --reps 20
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # hi_core and ui from this checkout

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from hi_core.figures.heatmap import HeatmapLayout  # noqa: E402
from ui.app import build_demo, launch_options  # noqa: E402
from ui.context import EXAMPLES_DIR  # noqa: E402
from ui.settings import Settings  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
GOALS_MS = {"click": 300, "token": None, "analyze": 1500}  # the goals; a token tick has none
def timed(page: Page, action, condition: str, timeout_ms: int = 60_000) -> float:
    """Milliseconds from `action()` until the JS expression `condition` holds in the page (checked every frame)."""
    started = time.perf_counter()
    action()
    page.wait_for_function(condition, polling="raf", timeout=timeout_ms)
    return (time.perf_counter() - started) * 1000


def src(elem_id: str) -> str:
    return f"(document.querySelector('#{elem_id} img') || {{}}).src || ''"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds between picking an example and pressing Analyze (the editor uploads its layers meanwhile)")
    args = parser.parse_args()
    records = [json.loads(line) for line in (EXAMPLES_DIR / "data.jsonl").read_text().splitlines()[:2]]
    settings = Settings()
    demo = build_demo(settings=settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options(settings))
    times: dict[str, list[float]] = {name: [] for name in GOALS_MS}
    summary = "document.querySelector('#summary').innerText"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#analyze").click()  # loads the model once (an error: nothing to analyze yet); not measured
            page.locator("#analyze-message").get_by_text("upload an image").wait_for(timeout=120_000)
            for rep in range(args.reps + 1):  # round 0 warms up (the first analysis of each example); not kept
                index = rep % 2  # the two examples in turn: each Analyze shows a summary the page did not show before
                record = records[index]
                words, key = record["text"].split(), record["key_phrase"].split()  # the demo's tokenizer is word-level
                page.locator("#examples button.thumbnail-item").nth(index).click()
                page.wait_for_function(f"document.querySelector('#description textarea').value === {json.dumps(record['text'])}")
                page.wait_for_function("document.querySelector('#mask-view img')")  # the example's mask has arrived
                page.wait_for_timeout(args.settle * 1000)  # a person's pause; the editor uploads its new layers after a redraw
                analyze = timed(page, lambda: page.locator("#analyze").click(),
                                f"{summary}.includes({json.dumps(record['text'])}) && {summary}.includes('Best head')")

                heatmap = page.locator("#heatmap img")
                heatmap.scroll_into_view_if_needed()
                width, height = heatmap.evaluate("image => image.decode().then(() => [image.naturalWidth, image.naturalHeight])")
                box = heatmap.bounding_box()
                scale = min(box["width"] / width, box["height"] / height, 1.0)
                left, top = box["x"] + (box["width"] - width * scale) / 2, box["y"] + (box["height"] - height * scale) / 2
                selected = (int(page.locator("#selected-layer input").input_value()), int(page.locator("#selected-head input").input_value()))
                target = (5, 7) if selected != (5, 7) else (0, 0)
                x, y = HeatmapLayout.fit(6, 8).cell_centre(*target)  # the demo model: 6 layers of 8 heads
                page.wait_for_timeout(500)  # the analysis's pictures have loaded
                before = page.evaluate(src("head-view"))  # the reply names the head and brings its picture
                click = timed(page, lambda: page.mouse.click(left + x * scale, top + y * scale),
                              f"document.querySelector('#head-info').innerText.includes('Layer {target[0]}, head {target[1]} ') "
                              f"&& {src('head-view')} !== {json.dumps(before)}")

                page.wait_for_timeout(500)
                position = next(i for i, word in enumerate(words) if word not in key)
                box = page.locator("#tokens").get_by_label(f"{position}: {words[position]}", exact=True)
                token = timed(page, lambda: box.check(), f"{summary}.includes('{position}: {words[position]},')")
                if rep:
                    for name, value in (("analyze", analyze), ("click", click), ("token", token)):
                        times[name].append(value)
            browser.close()
    finally:
        demo.close()
    print(f"{args.reps} rounds on the demo model, 1280 x 1000, {os.cpu_count()} CPUs\n")
    print("| action | median ms | goal ms | every time ms |\n|---|---|---|---|")
    for name, values in times.items():
        goal = f"< {GOALS_MS[name]}" if GOALS_MS[name] else "-"
        print(f"| {name} | {statistics.median(values):.0f} | {goal} | {' '.join(f'{v:.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
