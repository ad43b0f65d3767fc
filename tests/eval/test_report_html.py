"""report.html is safe to open: every string from file names, manifests and prompts is escaped, and a video
is linked only by a relative path inside the report folder (``javascript:alert(1).mp4`` is never a live link).
The HTML is parsed, not searched for substrings."""

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from hydra import compose, initialize_config_dir

import wan2.config_resolvers  # noqa: F401
from tests.conftest import ROOT
from wan2.data.rankjump import RankJump, RankJumpConfig
from wan2.data.video import write_mp4
from wan2.eval.report import render_html
from wan2.eval.run import main

EVIL_PROMPT = '<script>alert("prompt")</script>'


class Page(HTMLParser):
    """Every element, its attributes, and the text of the page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def hrefs(self) -> list[str]:
        return [a["href"] for t, a in self.tags if t == "a" and "href" in a]


def _assert_safe(page: Page, out: Path) -> None:
    assert not [t for t, _ in page.tags if t in ("script", "iframe", "object", "embed")]
    assert not [(t, k) for t, a in page.tags for k in a if k.lower().startswith("on")]  # no event handlers
    for href in page.hrefs():
        url = urlparse(href)
        assert not url.scheme and not url.netloc and href.startswith("./"), href
        target = (out / unquote(url.path)).resolve()
        assert target.is_relative_to(out.resolve()), href


def test_render_html_escapes_names_and_links_only_inside_the_report_folder(tmp_path):
    out = tmp_path / "out"
    (out / "videos").mkdir(parents=True)
    rows = [
        {
            "file": "videos/javascript:alert(1).mp4",
            "prompt": EVIL_PROMPT,
            "seed": "<b>7</b>",
            "event": "<i>e</i>",
        },
        {"file": "javascript:alert(2).mp4", "prompt": "p", "seed": 1, "event": None},
        {"file": "../elsewhere/00.mp4", "prompt": "p", "seed": 2, "event": None},
        {"file": "/abs/01.mp4", "prompt": "p", "seed": 3, "event": None},
        {"file": "videos/ok 1.mp4", "prompt": "p", "seed": 4, "event": None},
    ]
    report = {
        "mode": "videos",
        "seconds": 0.1,
        "summary": {"flicker/score": 0.9},
        "per_event": {},
        "protocol": {"source": '<img src=x onerror="alert(3)">'},
        "metrics": {"flicker": {"kind": "<svg onload=alert(4)>"}},
        "skipped": {"nfe_time": "<script>x</script>"},
        "contact_sheets": {},
        "videos": [r | {"flicker/score": 0.9} for r in rows],
    }
    text = render_html(report, out)
    page = Page(text)
    _assert_safe(page, out)
    hrefs = page.hrefs()
    assert hrefs == [
        "./videos/javascript%3Aalert%281%29.mp4",
        "./javascript%3Aalert%282%29.mp4",
        "./videos/ok%201.mp4",
    ]
    shown = "".join(page.text)
    assert EVIL_PROMPT in shown and "<b>7</b>" in shown and "<i>e</i>" in shown  # shown as text, not markup
    assert "00.mp4" in shown and "01.mp4" in shown  # outside the folder: the name, without a link


def test_evaluate_videos_named_like_scripts_give_a_safe_report(tmp_path):
    """End to end: the report written into the folder of the videos it scores (so a video's relative path is
    its bare name), one named javascript:alert(1).mp4, with a manifest whose prompt is a script tag."""
    out = d = tmp_path / "clips"
    d.mkdir()
    rj = RankJump(RankJumpConfig(), "test", 2)
    names = ["javascript:alert(1).mp4", "<img src=x onerror=alert(1)>.mp4"]
    for name, i in zip(names, range(2)):
        write_mp4(rj[i].frames, d / name, fps=8)
    rows = [{"file": n, "prompt": EVIL_PROMPT, "meta": rj[i].meta} for i, n in enumerate(names)]
    (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "eval", overrides=[f"out={out}", "logger=none", f"videos={d}", "metrics.names=[rank_trajectory]"]
        )
    assert main(cfg) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["rank_trajectory/accuracy"] == 1.0
    page = Page((out / "report.html").read_text())
    _assert_safe(page, out)
    # both clips are small: embedded as data URIs, no link left, and the page says it is self-contained
    assert page.hrefs() == []
    srcs = [a["src"] for t, a in page.tags if t == "video"]
    assert len(srcs) == 2 and all(s.startswith("data:video/mp4;base64,") for s in srcs)
    assert "javascript:alert(1).mp4" in "".join(page.text)  # the name as text
    assert "Self-contained" in "".join(page.text)
    # over the embedding cap they are linked, relative and inside the folder, and the page says so
    linked = Page(render_html(report, out, embed_limit=0))
    _assert_safe(linked, out)
    links = linked.hrefs()
    assert len(links) == 2 and all((out / unquote(h)).is_file() for h in links)
    assert "./javascript%3Aalert%281%29.mp4" in links
    assert "Not self-contained" in "".join(linked.text)
    assert EVIL_PROMPT in "".join(page.text)
    assert np.isfinite(report["summary"]["rank_trajectory/row_error"])
