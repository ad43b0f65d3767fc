"""Resume keeps the logs (issue 14, item 3): a run killed (SIGKILL) and preempted (SIGTERM / SIGUSR1), each time
resumed with ``ckpt_path=last``, ends with the same ``metrics.csv`` rows as an uninterrupted run (every step once,
the same losses) and one W&B run id across all attempts (W&B offline). The runs are those of
tests/test_faults.py's kill-and-resume test, which calls ``assert_logs_continue``; the CSV reader is tested here.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from wandb.sdk.lib.service import service_token

from wan2.lightning.loggers import RUN_ID_FILE, CSVLogger, read_rows

LOGGING = ["logger=wandb", "trainer.log_every_n_steps=1"]
# A W&B service token as a parent process that used W&B passes to its children (here pointing to no service): a
# run inheriting a real one could be refused 'run ID ... is in use' after a killed attempt; train.py drops it.
STALE_SERVICE = {"WANDB_SERVICE": f"{service_token._CURRENT_VERSION}-1-unix-/nonexistent/wandb-service.sock"}


def metrics_rows(out: Path) -> list[dict]:
    path = out / "csv" / "metrics.csv"
    assert path.is_file(), f"no {path}"
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def logged(rows: list[dict]) -> Counter:
    """(key, step) -> how often a value was logged."""
    return Counter((k, r["step"]) for r in rows for k, v in r.items() if v not in ("", None) and k != "step")


def wandb_ids(out: Path) -> set[str]:
    """Run ids of the offline W&B run folders (``offline-run-<time>-<id>``)."""
    return {p.name.rsplit("-", 1)[1] for p in (out / "wandb").glob("offline-run-*")}


def assert_logs_continue(
    out: Path, ref_out: Path, killed_at: list[int], first_id: str, attempts: int
) -> None:
    """``out`` (interrupted ``attempts - 1`` times, SIGKILLed right after the checkpoints of steps ``killed_at``)
    logged what the uninterrupted ``ref_out`` logged, under the W&B run id ``first_id`` of its first attempt."""
    rows, ref = metrics_rows(out), metrics_rows(ref_out)
    got, want = logged(rows), logged(ref)
    # every (key, step) as often as in the uninterrupted run: none lost, none twice. One exception: a validation
    # that a SIGKILL interrupted (the one after the checkpoint it resumed from) is not run again on resume.
    assert not got - want, sorted((got - want).items())[:10]
    missing = want - got
    val_keys = ("epoch", *(k for k in ref[0] if k.startswith("val")))
    val_after_kill = {(k, str(step)) for step in killed_at for k in val_keys}
    assert set(missing) <= val_after_kill, sorted(missing.items())[:10]
    assert logged([r for r in ref if r.get("train/loss")]) <= got  # every training row
    # the same training: the same losses at the same steps (bitwise resume)
    loss = {(r["step"], r["train/loss"]) for r in rows if r.get("train/loss")}
    assert loss == {(r["step"], r["train/loss"]) for r in ref if r.get("train/loss")}
    # one W&B run across the attempts: an offline run folder each, one id
    assert (out / RUN_ID_FILE).read_text().strip() == first_id
    assert wandb_ids(out) == {first_id} and len(list((out / "wandb").glob("offline-run-*"))) == attempts
    # a fresh run in a new folder gets a new id
    assert wandb_ids(ref_out) == {(ref_out / RUN_ID_FILE).read_text().strip()} != {first_id}


def test_a_row_cut_short_by_a_kill_is_dropped_and_history_kept(tmp_path):
    """Read back after a kill mid-append: the cut row is dropped; a resumed writer replaces rows from its
    first step on and keeps the rest; new keys rewrite the file through a temp file."""
    log_dir = tmp_path / "csv"
    log_dir.mkdir()
    (log_dir / "metrics.csv").write_text("step,train/loss\r\n0,1.0\r\n1,0.9\r\n2,0.8\r\n3,0.")
    assert [r["step"] for r in read_rows(log_dir / "metrics.csv")[1]] == ["0", "1", "2"]
    logger = CSVLogger(tmp_path, name="csv", version="")
    logger.log_metrics({"train/loss": 0.85}, step=2)
    logger.log_metrics({"val/x": 3.0}, step=3)
    logger.save()
    _, rows = read_rows(log_dir / "metrics.csv")
    assert [(r["step"], r["train/loss"], r["val/x"]) for r in rows] == [
        ("0", "1.0", ""),
        ("1", "0.9", ""),
        ("2", "0.85", ""),
        ("3", "", "3.0"),
    ]
    assert not [p for p in log_dir.iterdir() if ".tmp-" in p.name]
