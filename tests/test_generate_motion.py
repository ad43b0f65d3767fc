"""20 rank-up events -> 20 mp4s from the shipped base + rank-up LoRA; the reader finds the asked motion.

Slow (about a minute on 2 idle cores): `make test-slow`.
"""

import json

import numpy as np
import pytest

from tests.conftest import ROOT, load_script
from wan2.data.reader import judge_meta
from wan2.data.video import decode_mp4

BASE = ROOT / "pretrained" / "wan_tiny_base"
LORA = ROOT / "pretrained" / "lora_rankup"
COLOURS = ["green", "gold", "blue", "red", "purple", "orange"]


@pytest.mark.slow
def test_twenty_events_show_the_asked_climb(tmp_path):
    if not (BASE.is_dir() and LORA.is_dir()):
        pytest.skip("needs pretrained/wan_tiny_base and pretrained/lora_rankup")
    generate = load_script("scripts/generate.py", "generate_script")
    pairs = [(old, new) for old in range(2, 6) for new in range(1, old)]
    events = [
        {
            "event": "rank_up",
            "user": f"user{i}",
            "old_rank": pairs[i % len(pairs)][0],
            "new_rank": pairs[i % len(pairs)][1],
            "color": COLOURS[(5 * i) % 6],
        }
        for i in range(20)
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    out = tmp_path / "videos"
    rc = generate.main(
        [
            "--model",
            str(BASE),
            "--lora",
            str(LORA),
            "--events",
            str(tmp_path / "events.jsonl"),
            "--out",
            str(out),
            "--batch",
            "10",
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    ok = []
    for row in rows:
        e = events[row["line"] - 1]
        frames = decode_mp4(row["path"])  # (F, H, W, 3) uint8, through PyAV
        meta = {
            "event": "rank_up",
            "old_rank": e["old_rank"],
            "new_rank": e["new_rank"],
            "colour": e["color"],
            "rows": 5,
            "height": frames.shape[1],
            "width": frames.shape[2],
        }
        v = judge_meta(frames, meta)
        ok.append(v["trajectory_ok"] and v["colour_ok"])
    assert np.mean(ok) >= 0.9, f"{np.mean(ok):.0%} of the 20 videos show the asked climb in the asked colour"
