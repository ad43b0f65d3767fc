"""report.html is readable: A/B pairs side by side per prompt, n per metric and side, CI whiskers on one axis
per metric family, BCa intervals (checked against a direct scipy call), caveats at small n and across many
metrics, notes as prose, wide tables in scroll containers, and a self-contained claim that matches the page.
The HTML is parsed (html.parser), not searched for substrings."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from scipy.stats import bootstrap

from tests.test_evaluate import BASE, _perturbed_copy, config
from wan2.eval.ab import holm
from wan2.eval.report import family_spans, render_html, svg_ci
from wan2.eval.run import main
from wan2.metrics.stats import bca_paired


class Tree(HTMLParser):
    """Elements as nested dicts (tag, attrs, children, text), enough to walk tables and rows."""

    VOID = {"img", "br", "meta", "line", "circle", "rect", "input", "source"}

    def __init__(self, text: str):
        super().__init__()
        self.root = {"tag": "root", "attrs": {}, "children": [], "text": ""}
        self.stack = [self.root]
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        node = {"tag": tag, "attrs": dict(attrs), "children": [], "text": ""}
        self.stack[-1]["children"].append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1]["children"].append({"tag": tag, "attrs": dict(attrs), "children": [], "text": ""})

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i]["tag"] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        for node in self.stack:
            node["text"] += data

    def all(self, tag=None, cls=None, node=None):
        node = node or self.root
        found = []
        for c in node["children"]:
            if (tag is None or c["tag"] == tag) and (
                cls is None or cls in c["attrs"].get("class", "").split()
            ):
                found.append(c)
            found += self.all(tag, cls, c)
        return found


@pytest.fixture(scope="module")
def ab(tmp_path_factory):
    """One small end-to-end A/B run (4 prompts, the shipped base against a perturbed copy)."""
    root = tmp_path_factory.mktemp("readable")
    other = _perturbed_copy(root / "perturbed")
    out = root / "ab"
    cfg = config(
        out,
        f"compare=[{BASE},{other}]",
        "prompts=test",
        "num_videos=4",
        "num_inference_steps=3",
        "batch_size=4",
        "threads=1",
        "bootstrap.num_samples=500",
    )
    assert main(cfg) == 0
    report = json.loads((out / "report.json").read_text())
    return report, out, Tree((out / "report.html").read_text()), int(cfg.seed)


def test_pairs_are_side_by_side_per_prompt(ab):
    report, _, page, _ = ab
    rows = page.all("tr", "pair")
    expected = [
        report["a"]["videos"][i]["prompt"]
        for s in report["a"]["contact_sheets"].values()
        for i in s["videos"]
    ]
    assert len(rows) == len(expected) == 4
    for row, prompt in zip(rows, expected):
        cells = [c for c in row["children"] if c["tag"] == "td"]
        assert [c["attrs"]["class"] for c in cells] == ["l prompt", "a", "b"]  # prompt | A | B in one row
        assert cells[0]["text"].startswith(prompt)
        for cell in cells[1:]:
            (img,) = page.all("img", node=cell)
            assert img["attrs"]["src"].startswith("data:image/png;base64,")
    assert "Contact sheets" not in [h["text"] for h in page.all("h3")]  # pairs replace the per-side sheets


def test_n_is_shown_per_metric_and_side(ab):
    report, _, page, _ = ab
    comp_table = page.all("table")[0]
    header = [th["text"] for th in page.all("th", node=comp_table)]
    assert "n pairs" in header
    for tr in page.all("tr", node=comp_table)[1:]:
        cells = [td["text"] for td in page.all("td", node=tr)]
        c = report["comparison"][cells[0]]
        assert cells[3].endswith(f"(n={c['n_a']})") and cells[4].endswith(f"(n={c['n_b']})"), cells
        assert c["n_a"] == report["a"]["n"][cells[0]] and c["n_b"] == report["b"]["n"][cells[0]]
        if "num_pairs" in c:
            assert cells[2] == str(c["num_pairs"])
    metric_tables = [
        t for t in page.all("table") if [th["text"] for th in page.all("th", node=t)][:2] == ["metric", "n"]
    ]
    assert len(metric_tables) == 2  # one per side
    for side, table in zip(("a", "b"), metric_tables):
        for tr in page.all("tr", node=table)[1:]:
            key, n = [td["text"] for td in page.all("td", node=tr)][:2]
            assert n == str(report[side]["n"][key])


def test_ci_whiskers_share_one_axis_per_family(ab):
    report, _, page, _ = ab
    spans = {}
    for tr in page.all("tr"):
        svg = page.all("svg", "ci", node=tr)
        if svg:
            key = page.all("td", node=tr)[0]["text"]
            spans.setdefault(
                key.rsplit("/", 1)[-1] if key.endswith("accuracy") else key.split("/")[0], set()
            ).add(svg[0]["attrs"]["data-span"])
            ticks = [t["text"] for t in page.all("text", node=svg[0])]
            assert ticks[1] == "0" and float(ticks[2]) == -float(ticks[0]) == float(
                svg[0]["attrs"]["data-span"]
            )
    assert spans and all(len(v) == 1 for v in spans.values()), spans
    accuracy_spans = {s for k, v in spans.items() if k.endswith("accuracy") for s in v}
    assert accuracy_spans == {"1"}


def test_a_small_change_looks_small_next_to_a_large_one():
    comparison = {
        "colour/accuracy": {"diff": 0.002, "ci_low": 0.001, "ci_high": 0.003},
        "rank_trajectory/accuracy": {"diff": 0.375, "ci_low": 0.25, "ci_high": 0.5},
        "flicker/score": {"diff": 0.03, "ci_low": 0.01, "ci_high": 0.04},
        "flicker/p90": {"diff": -0.2, "ci_low": -0.3, "ci_high": -0.1},
    }
    spans = family_spans(comparison)
    assert spans["accuracy"] == 1.0 and spans["flicker"] == 0.5  # max |bound| 0.3, rounded up to 0.5

    def length(c, span):
        svg = Tree(svg_ci(c["diff"], c["ci_low"], c["ci_high"], span))
        (whisker,) = [n for n in svg.all("line") if n["attrs"].get("stroke-width") == "2"]
        return float(whisker["attrs"]["x2"]) - float(whisker["attrs"]["x1"])

    small = length(comparison["colour/accuracy"], spans["accuracy"])
    large = length(comparison["rank_trajectory/accuracy"], spans["accuracy"])
    assert large / max(small, 1e-9) > 50  # 0.25 wide vs 0.002 wide on the same axis


def test_intervals_are_bca_as_scipy_computes_them(ab):
    report, _, _, seed = ab
    key = "rank_trajectory/accuracy"
    a = np.array([v[key] for v in report["a"]["videos"]], dtype=float)
    b = np.array([v[key] for v in report["b"]["videos"]], dtype=float)
    c = report["comparison"][key]
    d = b - a
    if np.ptp(d) == 0:  # degenerate: the interval is the point
        assert c["ci_low"] == c["ci_high"] == c["diff"]
    else:
        ref = bootstrap((d,), np.mean, n_resamples=500, method="BCa", rng=np.random.default_rng(seed))
        assert c["ci_low"] == pytest.approx(ref.confidence_interval.low)
        assert c["ci_high"] == pytest.approx(ref.confidence_interval.high)
    assert all(c["method"] == "BCa" for c in report["comparison"].values() if "ci_low" in c)
    # a spread case, direct: the same numbers as scipy with the same generator
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=40), rng.normal(size=40) + 0.3
    res = bca_paired(x, y, num_samples=999, seed=5)
    ref = bootstrap((y - x,), np.mean, n_resamples=999, method="BCa", rng=np.random.default_rng(5))
    assert (res["ci_low"], res["ci_high"]) == pytest.approx(
        (ref.confidence_interval.low, ref.confidence_interval.high)
    )
    pct = bootstrap((y - x,), np.mean, n_resamples=999, method="percentile", rng=np.random.default_rng(5))
    assert res["ci_low"] != pytest.approx(
        pct.confidence_interval.low, abs=1e-12
    )  # not the percentile interval


def test_caveats_at_small_n_and_across_many_metrics(ab):
    report, _, page, _ = ab
    caveats = " ".join(p["text"] for p in page.all("p", "caveat"))
    tested = [k for k, c in report["comparison"].items() if "p_value" in c]
    assert "Small sample" in caveats and "n = 4 pairs" in caveats
    assert f"{len(tested)} metrics were compared" in caveats and "Holm" in caveats
    expected = holm({k: report["comparison"][k]["p_value"] for k in tested})
    assert {k: report["comparison"][k]["p_holm"] for k in tested} == pytest.approx(expected)


def test_holm_steps_down():
    assert holm({"x": 0.01, "y": 0.04, "z": 0.03}) == pytest.approx({"x": 0.03, "z": 0.06, "y": 0.06})


def test_no_python_reprs_notes_as_prose_and_a_page_that_fits(ab, tmp_path):
    report, out, page, _ = ab
    report = dict(report, notes=["A and B use different VAEs", {"vae_a": "x", "vae_b": "y"}])
    report["a"] = dict(report["a"], metrics={"flicker": {"kind": "temporal", "frames": [1, 2]}})
    tree = Tree(render_html(report, out))
    text = tree.root["text"]
    assert not re.search(r"\{'|'\}|\['|'\]|\{\"", text), re.search(r".{40}\{'.{40}", text)
    notes = [li["text"] for ul in tree.all("ul") for li in tree.all("li", node=ul)]
    assert "A and B use different VAEs" in notes and "vae a: x; vae b: y" in notes
    assert "kind: temporal; frames: 1, 2" in text
    for table in tree.all("table"):  # every table sits in a scroll container
        assert any(table in tree.all("table", node=d) for d in tree.all("div", "scroll")), (
            "a table outside .scroll"
        )
    style = tree.all("style")[0]["text"]
    assert "max-width" in style and "overflow-x:auto" in style


def test_self_contained_claim_matches_the_page(ab):
    report, out, page, _ = ab
    for tree, limit in ((page, None), (Tree(render_html(report, out, embed_limit=0)), 0)):
        claim = tree.all("p")[0]
        assert claim["attrs"].get("id") == "claim"
        hrefs = [n["attrs"]["href"] for n in tree.all("a") if "href" in n["attrs"]]
        srcs = [n["attrs"]["src"] for n in tree.all() if "src" in n["attrs"]]
        if claim["text"].startswith("Self-contained"):
            assert limit is None and not hrefs and srcs and all(s.startswith("data:") for s in srcs)
            assert len(tree.all("video")) == len(report["a"]["videos"]) + len(report["b"]["videos"])
        else:
            assert limit == 0 and claim["text"].startswith("Not self-contained") and hrefs
            assert all(h.startswith("./") and (out / h[2:]).is_file() for h in hrefs)
