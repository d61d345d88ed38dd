"""The Fine-tune tab's generated scenes follow the task: reading-order captions, or one question each for VQA."""

from __future__ import annotations

import json

from hi_core.tuning.finetune import check_task
from ui.sources import SYNTHETIC, SYNTHETIC_SCENES, dataset_folder


def _records(folder):
    return [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]


def test_the_synthetic_source_gives_questions_for_vqa_and_captions_otherwise(tmp_path):
    questions, name = dataset_folder(SYNTHETIC, None, tmp_path, "vqa")
    records = _records(questions)
    assert len(records) == SYNTHETIC_SCENES and all(record.get("prompt", "").endswith("?") for record in records)
    assert "one question each" in name and str(tmp_path) not in name
    check_task("vqa", questions)  # the VQA task accepts it (a set without prompts is refused)
    captions, name = dataset_folder(SYNTHETIC, None, tmp_path, "caption")
    assert captions != questions and "reading order" in name
    assert not any("prompt" in record for record in _records(captions))
    assert dataset_folder(SYNTHETIC, None, tmp_path, "vqa")[0] == questions  # written once, shared
