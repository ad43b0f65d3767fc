"""Video files and tensors: mp4 encode/decode with PyAV, probing, GIFs, and uint8 <-> [-1, 1] tensors.

Encoding defaults to H.264 (libx264) in ``yuv444p`` at ``crf=10``: no chroma subsampling, so thin saturated
bars keep their colour, and odd frame sizes work as they are. ``pix_fmt="yuv420p"`` (for players that
need it) halves the chroma and needs even sizes: odd frames are padded by repeating the last row/column, so
the decoded video is then one pixel larger on that side.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
from einops import rearrange

_SUBSAMPLED = ("yuv420p", "yuv422p", "nv12")  # pixel formats that need even sizes
_DECODE_ERRORS = (av.FFmpegError, ValueError, OSError, EOFError, IndexError, RuntimeError)


class VideoDecodeError(ValueError):
    """The input could not be read as a video; the message is one line."""


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frames: int
    height: int
    width: int
    duration: float  # seconds; frames / fps when the container does not say


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(
            f"frames: expected uint8 (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}"
        )
    return frames


def _rate(fps: float) -> Fraction:
    if fps <= 0:
        raise ValueError(f"fps: {fps} is not positive")
    return Fraction(fps).limit_denominator(1001)


def write_mp4(
    frames, dst, fps: float, *, crf: int = 10, pix_fmt: str = "yuv444p", preset: str = "medium"
) -> None:
    """Encode uint8 frames (F, H, W, 3) as H.264 mp4 to a path or a writable binary file object."""
    frames = _check_frames(frames)
    if pix_fmt in _SUBSAMPLED:
        ph, pw = frames.shape[1] % 2, frames.shape[2] % 2
        if ph or pw:
            frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    if isinstance(dst, os.PathLike):
        dst = os.fspath(dst)
    with av.open(dst, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_rate(fps))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = pix_fmt
        stream.options = {"crf": str(crf), "preset": preset}
        for img in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed frames
            container.mux(packet)


def encode_mp4(frames, fps: float, **kwargs) -> bytes:
    """``write_mp4`` into memory; returns the mp4 bytes."""
    buf = io.BytesIO()
    write_mp4(frames, buf, fps, **kwargs)
    return buf.getvalue()


def _open(src):
    """Open a path, bytes or binary file object for reading; errors become ``VideoDecodeError``."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise VideoDecodeError("empty input (0 bytes)")
        src = io.BytesIO(bytes(src))
    elif isinstance(src, os.PathLike):
        src = os.fspath(src)
    try:
        return av.open(src, mode="r")
    except _DECODE_ERRORS as err:
        raise VideoDecodeError(f"cannot open video: {_one_line(err)}") from err


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def iter_frames(src) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(time_seconds, uint8 (H, W, 3))`` for each decoded frame of the first video stream."""
    container = _open(src)
    try:
        if not container.streams.video:
            raise VideoDecodeError("no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        index = 0
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else (index / rate if rate else float(index))
                yield float(t), frame.to_ndarray(format="rgb24")
                index += 1
        except _DECODE_ERRORS as err:
            raise VideoDecodeError(f"decoding failed after {index} frames: {_one_line(err)}") from err
        if index == 0:
            raise VideoDecodeError("no decodable frames")
    finally:
        container.close()


def decode_mp4(src) -> np.ndarray:
    """Decode every frame of a video (bytes, path or file object) to uint8 (F, H, W, 3)."""
    frames = [img for _, img in iter_frames(src)]
    if len({f.shape for f in frames}) != 1:
        raise VideoDecodeError(f"frame sizes change within the video: {sorted({f.shape for f in frames})}")
    return np.stack(frames)  # (F, H, W, 3)


def probe(src) -> VideoInfo:
    """Frame rate, frame count, size and duration of the first video stream (counts packets if needed)."""
    container = _open(src)
    try:
        if not container.streams.video:
            raise VideoDecodeError("no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = int(stream.frames or 0)
        if frames == 0:
            try:
                frames = sum(1 for p in container.demux(stream) if p.size > 0)
            except _DECODE_ERRORS as err:
                raise VideoDecodeError(f"cannot count frames: {_one_line(err)}") from err
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = frames / fps if fps else 0.0
        ctx = stream.codec_context
        return VideoInfo(fps=fps, frames=frames, height=ctx.height, width=ctx.width, duration=duration)
    finally:
        container.close()


def save_gif(frames, path, fps: float) -> None:
    """Write uint8 frames (F, H, W, 3) as a looping GIF (PIL; 256 colours per frame)."""
    from PIL import Image

    frames = _check_frames(frames)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        os.fspath(path),
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
        optimize=False,
    )


def frames_to_tensor(frames) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (C, F, H, W) in [-1, 1]."""
    frames = _check_frames(frames)
    x = torch.from_numpy(np.ascontiguousarray(frames))  # (F, H, W, C) uint8
    x = rearrange(x, "f h w c -> c f h w").float()
    return x / 127.5 - 1.0


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """float (..., C, F, H, W) in [-1, 1] -> uint8 (..., F, H, W, 3); values outside [-1, 1] are clipped."""
    x = ((video.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    x = rearrange(x, "... c f h w -> ... f h w c")
    return x.cpu().numpy()
