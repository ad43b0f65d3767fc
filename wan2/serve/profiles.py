"""Generation profiles and the load-aware choice between them (``scripts/generate.py --deadline``).

A profile is one way to make a video: which model (the base or its few-step student), frames, size, steps and
guidance. Under a deadline each batch takes the best profile of the ladder that the throughput measured on this
run says finishes the remaining queue in time. Standard library only (models are passed in).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# Quality order of the ladder, best first: the base as exported; the student at the same frames and size (a full
# clip in few steps); the base's "fast" profile (half the frames and steps); the student at the fast frames/size.
LADDER = ("standard", "student", "fast", "student-fast")
EMA_WEIGHT = 0.5  # weight of the newest batch in the running seconds-per-unit estimate (load changes quickly)


@dataclass(frozen=True)
class Profile:
    """One way to make a video; ``model`` is "base" or "student"."""

    name: str
    model: str
    num_frames: int
    height: int
    width: int
    steps: int
    guidance_scale: float

    @property
    def kwargs(self) -> dict:
        """``Wan2T2V.generate`` keyword arguments."""
        return {
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance_scale,
        }

    @property
    def units(self) -> float:
        """Work per video in megapixel-passes: pixels x (transformer passes + 1 for the VAE decode and text
        encode). Guidance above 1 runs the transformer twice a step (conditional and unconditional)."""
        passes = self.steps * (2 if self.guidance_scale > 1.0 else 1)
        return self.num_frames * self.height * self.width * (passes + 1) / 1e6


def _profile(name: str, model: str, kwargs: dict) -> Profile:
    return Profile(
        name=name,
        model=model,
        num_frames=int(kwargs["num_frames"]),
        height=int(kwargs["height"]),
        width=int(kwargs["width"]),
        steps=int(kwargs["num_inference_steps"]),
        guidance_scale=float(kwargs["guidance_scale"]),
    )


def ladder(base, student=None, steps: int | None = None) -> list[Profile]:
    """The profiles of ``LADDER`` that exist for ``base`` (and ``student``; both ``Wan2T2V``), best first.

    The student keeps its own steps and guidance (it was distilled for them) in both of its profiles;
    ``steps`` overrides every profile's steps (``--steps``)."""
    std, fast = base.profile("standard"), base.profile("fast")
    out = [_profile("standard", "base", std), _profile("fast", "base", fast)]
    if student is not None:
        own = student.profile("standard")
        out.insert(1, _profile("student", "student", own))
        fast_student = {**fast, **{k: own[k] for k in ("num_inference_steps", "guidance_scale")}}
        out.append(_profile("student-fast", "student", fast_student))
    if steps is not None:
        out = [_profile(p.name, p.model, {**p.kwargs, "num_inference_steps": steps}) for p in out]
    return out


def choose_profile(
    profiles: list[Profile],
    seconds_per_unit: float | None,
    videos_left: int,
    seconds_left: float,
    overhead: float = 0.0,
) -> Profile:
    """The first (best) profile whose predicted time for all ``videos_left`` videos, each ``overhead`` +
    ``units x seconds_per_unit`` seconds, fits in ``seconds_left``.

    Without a measurement yet, or when nothing fits, the cheapest profile (least work per video)."""
    cheapest = min(profiles, key=lambda p: p.units)
    if seconds_per_unit is None:
        return cheapest
    for p in profiles:
        if videos_left * (overhead + p.units * seconds_per_unit) <= seconds_left:
            return p
    return cheapest


class Throughput:
    """How long a video takes on this run, measured: ``overhead`` seconds a video plus ``seconds_per_unit``
    per unit of work (``Profile.units``). Each batch gives a rate r = seconds / units at x = videos / units;
    r = seconds_per_unit + overhead * x is fitted by least squares, each older batch weighted ``1 - weight``
    times the next (the estimate follows load changes within a few batches).

    Until batches of different profiles are seen (or when the fit is not physical), the overhead is 0 and the
    rate is the weighted mean rate: cheap profiles' overhead then counts as work, which overestimates dearer
    profiles (safe for a deadline)."""

    def __init__(self, weight: float = EMA_WEIGHT):
        self.weight = weight
        self.sums = [0.0] * 5  # decayed sums of w, w*x, w*x*x, w*r, w*x*r
        self.seconds_per_unit: float | None = None
        self.overhead = 0.0
        self.batches = 0

    def add(self, seconds: float, units: float, videos: int = 1) -> None:
        """One batch: ``videos`` videos of ``units`` work in all took ``seconds``."""
        if units <= 0 or seconds < 0 or videos < 1:
            return
        x, r = videos / units, seconds / units
        keep = 1.0 - self.weight
        self.sums = [keep * a + b for a, b in zip(self.sums, (1.0, x, x * x, r, x * r))]
        self.batches += 1
        w, sx, sxx, sr, sxr = self.sums
        det = w * sxx - sx * sx
        if det > 1e-9 * w * sxx:  # batches of different work per video: both terms
            overhead, spu = (w * sxr - sx * sr) / det, (sxx * sr - sx * sxr) / det
            if overhead >= 0 and spu > 0:
                self.overhead, self.seconds_per_unit = overhead, spu
                return
        self.overhead, self.seconds_per_unit = 0.0, sr / w


@dataclass
class Pick:
    """What one batch runs: the profile, its model (``Wan2T2V``) and folder, and how many videos."""

    profile: Profile
    model: object
    model_dir: str
    batch: int
    note: str = ""

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def kwargs(self) -> dict:
        return self.profile.kwargs


class Planner:
    """Per batch, the profile to run: the fixed ``profile`` (``--profile``), or with ``deadline`` (a
    ``time.monotonic()`` instant) the best one ``choose_profile`` allows at the measured throughput.

    ``models`` maps "base" / "student" to ``(folder, Wan2T2V)``. Each batch is timed from one ``next`` call to
    the following one (generation and saving: what the queue waits for). Under a deadline the first batch is
    one video with the cheapest profile: it measures the throughput without risking the deadline."""

    def __init__(
        self,
        profiles: list[Profile],
        models: dict,
        batch: int,
        profile: str | None = None,
        deadline: float | None = None,
        throughput: Throughput | None = None,
        clock=time.monotonic,
    ):
        self.profiles = profiles
        self.models = models
        self.batch = batch
        self.fixed = None if deadline is not None else next(p for p in profiles if p.name == profile)
        self.deadline = deadline
        self.throughput = throughput or Throughput()
        self.clock = clock
        self._last: tuple[float, float, int] | None = None  # (start, units, videos) of the batch in flight

    def finish(self) -> None:
        """Measure the batch in flight now (the queue is empty: no ``next`` call will follow)."""
        if self._last is not None:
            start, units, videos = self._last
            self.throughput.add(self.clock() - start, units, videos)
            self._last = None

    def next(self, videos_left: int) -> Pick:
        """The profile and batch size for the next batch (and the measurement of the previous one)."""
        self.finish()
        now = self.clock()
        note = ""
        if self.fixed is not None:
            profile, n = self.fixed, self.batch
        else:
            spu, overhead = self.throughput.seconds_per_unit, self.throughput.overhead
            left = self.deadline - now
            profile = choose_profile(self.profiles, spu, videos_left, left, overhead)
            n = 1 if spu is None else self.batch
            if spu is None:
                note = f"deadline: measuring with one {profile.name} video ({left:.1f} s left)"
            else:
                need = videos_left * (overhead + profile.units * spu)
                late = " (over: the cheapest profile)" if need > left else ""
                note = (
                    f"deadline: {profile.name} for {min(n, videos_left)} videos: {videos_left} left need "
                    f"{need:.1f} s ({overhead:.3g} s a video + {spu:.3g} s a unit), {left:.1f} s left{late}"
                )
        n = min(n, videos_left)
        self._last = (now, n * profile.units, n)
        model_dir, model = self.models[profile.model]
        return Pick(profile=profile, model=model, model_dir=str(model_dir), batch=n, note=note)
