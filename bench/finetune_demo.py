"""Wall time of the Fine-tune tab's runs on the demo model, stage by stage, as the app runs them.

Each run is `ui.finetune_run.finetune_job` (what the tab's Launch runs in its worker thread: the generated
scenes in reading order, a private copy of the demo model, the layer ranking, the untuned captions, LoRA,
the tuned captions) with a preset of `hi_core.tuning.finetune_presets`, in one process with `--threads` torch
threads. The ranking cache is the app's (`RankingCache`): the first quick run ranks the layers, the second
reuses that ranking, as a second launch in the app does. Stages are timed by watching the run's live stage
(every 20 ms). Printed: seconds per stage and in all, the ratio of each run to the quick preset's first,
and the per-unit rates (`RunRates`) the tab estimates from (hi_core.tuning.finetune_presets.DEMO_RATES holds them).

    python bench/finetune_demo.py                  # quick twice, then full: ~2-3 min on 2 cores
    python bench/finetune_demo.py --presets quick  # the quick preset alone (twice)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # hi_core and ui from this checkout

import torch  # noqa: E402

from hi_core.tuning.finetune_presets import RANK_LIMIT, finetune_preset  # noqa: E402
from hi_core.model.loading import LoadConfig  # noqa: E402
from ui.finetune_run import Live, RankingCache, finetune_job  # noqa: E402
from ui.sources import SYNTHETIC, synthetic_set  # noqa: E402


def timed_run(preset: str, rankings: RankingCache, meteor: bool) -> tuple[dict[str, float], object]:
    """One run of `preset` as the app launches it; (seconds per stage in order, the FinetuneSession)."""
    config = finetune_preset(preset)
    if not meteor:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, meteor=False))
    load = LoadConfig(model="demo", device="cpu")
    live, stop, stages = Live(config.steps), threading.Event(), {}
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as run_folder:
        def work() -> None:
            result["session"] = finetune_job(load, config, SYNTHETIC, None, Path(run_folder), None, live, stop,
                                             RANK_LIMIT[preset], rankings)

        worker = threading.Thread(target=work)
        started = last = time.perf_counter()
        stage = live.progress.stage
        worker.start()
        while worker.is_alive():
            worker.join(0.02)
            if live.progress.stage != stage or not worker.is_alive():
                now = time.perf_counter()
                stages[stage] = stages.get(stage, 0.0) + now - last
                stage, last = live.progress.stage, now
        stages["total"] = time.perf_counter() - started
    return stages, result.get("session")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2: a free CPU Space)")
    parser.add_argument("--presets", nargs="+", default=["quick", "quick", "full"], help="runs, in order")
    parser.add_argument("--meteor", action="store_true", help="keep METEOR where the preset has it (needs Java)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    synthetic_set()  # generated once, as the app does before its first run
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs; demo model; "
          f"METEOR {'as the preset says' if args.meteor else 'off'}\n")
    rankings, first = RankingCache(), None
    for index, preset in enumerate(args.presets):
        stages, session = timed_run(preset, rankings, args.meteor)
        first = first or stages["total"]
        print(f"run {index + 1}: preset {preset}: {stages['total']:.1f} s in all ({stages['total'] / first:.2f} x the first run)")
        for stage, seconds in stages.items():
            if stage != "total":
                print(f"    {seconds:7.1f} s  {stage}")
        after, before, work = session.after, session.before, session.ranking_work
        captioned = max(1, int(after.split["held_out"]))
        batch = int(after.settings["config"]["batch_size"])
        print(f"    rates: {after.timings['seconds_per_step'] / batch:.4f} s per training sample, "
              f"{(before.timings['eval_seconds'] + after.timings['eval_seconds']) / (2 * captioned):.4f} s per record "
              f"captioned, " + (f"{work.seconds / work.ranked:.4f} s per record ranked" if work.ranked else "ranking reused")
              + "\n    metrics before -> after: " + ", ".join(f"{key} {before.metrics[key]:.3f} -> {value:.3f}"
                                                     for key, value in after.metrics.items()) + "\n")


if __name__ == "__main__":
    main()
