"""`probe report`: run folders into one self-contained HTML page."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from probe.cli import main
from probe.report import ReportError, build_report, detect_kind, frame_html, load_run, readable

PNG = base64.b64decode(  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
    "AAAABJRU5ErkJggg==")


class _Refs(HTMLParser):
    """Every src/href in a page, and the text of its table cells."""

    def __init__(self):
        super().__init__()
        self.refs, self.cells, self._in = [], [], False

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        self._in = tag in ("td", "th")

    def handle_endtag(self, tag):
        self._in = False

    def handle_data(self, data):
        if self._in:
            self.cells.append(data)


def _fake_run(path, command, n=300, extra=None):
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"site": "hook_resid_post", "layer": np.arange(n) % 30,
                       "pooling": ["last", "content-mean"] * (n // 2),
                       "estimator": "probe", "metric": ["accuracy", "auroc", "macro_f1"] * (n // 3),
                       "value": rng.uniform(size=n), "ci_low": 0.1, "ci_high": 0.9,
                       "empty": None})
    df.to_csv(path / "results.csv", index=False)
    (path / "layerwise_last.png").write_bytes(PNG)
    for name, content in (extra or {}).items():
        (path / name).write_bytes(content) if isinstance(content, bytes) else \
            (path / name).write_text(content)
    (path / "run.json").write_text(json.dumps({"command": command, "provenance": {
        "model": "smollm2-135m", "n_layers": 30}, "seconds": 12.5}))
    return path


def test_page_is_self_contained_and_readable(tmp_path):
    sweep = _fake_run(tmp_path / "runs" / "sweep-a", "probe sweep --limit 84")
    behave = _fake_run(tmp_path / "runs" / "behave-b", "probe behave --limit 84",
                       extra={"items_recognition.csv": "id,answer\na,joy\nb,fear\n"})
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(sweep), str(behave), "--out", str(out), "--max-rows", "12"]) == 0
    page = out.read_text()
    refs = _Refs()
    refs.feed(page)
    # no network: images are data URIs, links are relative files or in-page anchors
    assert refs.refs and all(r.startswith(("data:image/png;base64,", "#", "../"))
                             for r in refs.refs), refs.refs
    assert not re.search(r"https?://", page)
    assert page.count("data:image/png;base64,") == 2
    # the full CSV is linked relative to the report and resolves
    links = [r for r in refs.refs if r.endswith(".csv")]
    assert (out.parent / links[0]).resolve() == (sweep / "results.csv").resolve()
    assert "probe sweep --limit 84" in page and "smollm2-135m" in page
    assert "first 12 of 100 rows shown (300 in the file)" in page  # headline metric: accuracy
    assert "empty" not in refs.cells  # an all-empty column is dropped
    assert "items_recognition.csv" in page and "joy" in refs.cells


def test_tables_are_sorted_best_first_and_rounded():
    df = pd.DataFrame({"estimator": ["probe"] * 4, "pooling": ["a", "a", "b", "b"],
                       "layer": [0.0, 1.0, 0.0, None], "metric": "accuracy",
                       "value": [0.5, 0.91234, 0.7, 0.6]})
    shown, note = readable(df, kind="sweep", max_rows=3)
    assert shown["value"].tolist() == [0.91234, 0.7, 0.6]
    assert note.startswith("metric accuracy; first 3 of 4 rows")
    # several experiments: each keeps its own headline metric
    two = pd.concat([df.assign(experiment="compare"),
                     df.assign(experiment="persistence", metric="p_true")])
    shown, note = readable(two, kind="behave", max_rows=40)
    assert set(shown["metric"]) == {"accuracy", "p_true"} and "accuracy, p_true" in note
    # a table of values without a metric column (circuits): highest value first
    shown, note = readable(df.drop(columns="metric"), kind="circuits", max_rows=2)
    assert shown["value"].tolist() == [0.91234, 0.7] and note.startswith("highest value")
    page_cells = re.findall(r"<td[^>]*>([^<]*)</td>",
                            frame_html(shown))
    assert "0.912" in page_cells and "1" in page_cells  # layer stays an integer


def test_kinds_are_detected(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "cosine.png").write_bytes(PNG)
    assert detect_kind(d, {}) == "directions"
    assert detect_kind(d, {"command": "probe steer-eval --x"}) == "steer-eval"
    c = tmp_path / "c"
    c.mkdir()
    (c / "circuit_happiness.json").write_text("{}")
    assert detect_kind(c, {"command": "python x.py"}) == "circuits"


def test_bad_folders_are_refused(tmp_path, capsys):
    with pytest.raises(ReportError, match="does not exist"):
        load_run(tmp_path / "nope")
    half = tmp_path / "half"
    half.mkdir()
    (half / "results.csv").write_text("a\n1\n")
    with pytest.raises(ReportError, match="did not finish"):
        load_run(half)
    with pytest.raises(ReportError, match="at least one"):
        build_report([])
    assert main(["report", str(half), "--out", str(tmp_path / "r.html")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "r.html").exists()


def test_a_real_tiny_sweep(capsys, tiny_dir, tmp_path, one_thread):
    rows = [(f"a {['sunny', 'grey', 'loud'][i % 3]} story {i}", ["joy", "sadness", "anger"][i % 3],
             f"s{i // 3}") for i in range(36)]
    data = tmp_path / "toy.csv"
    data.write_text("text,label,story\n" + "".join(",".join(r) + "\n" for r in rows))
    run = tmp_path / "sweep"
    assert main(["sweep", "--model", str(tiny_dir / "llama"), "--dataset", str(data),
                 "--group-column", "story", "--folds", "3", "--bootstrap", "20", "--quiet",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(run)]) == 0
    capsys.readouterr()
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert "report:" in capsys.readouterr().out
    page = out.read_text()
    assert '<span class="kind">sweep</span>' in page
    n_png = len(list(run.rglob("*.png")))
    assert n_png >= 1 and page.count("data:image/png;base64,") == n_png
    assert "metric accuracy" in page
    # figures say what they show, and the sweep's summary is there as the sweep printed it
    assert "Probe score against layer, pooling last" in page
    assert "<h3>summary</h3>" in page and "selectivity" in page and "lexical" in page
    # run.json says truthfully how the task was chosen (the labels are text: inferred)
    assert json.loads((run / "run.json").read_text())["task_reason"].startswith("inferred")


@pytest.mark.parametrize("content, message", [
    (b"[1, 2, 3]", "not an object"),
    (b'"probe sweep"', "not an object"),
    ('{"command": "probe sweep caf\xe9"}'.encode("latin-1"), "not UTF-8"),
    (b"{\"command\": ", "not valid JSON"),
])
def test_a_damaged_run_json_is_an_error_line(tmp_path, capsys, content, message):
    run = _fake_run(tmp_path / "run", "probe sweep")
    (run / "run.json").write_bytes(content)
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err, err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("content, message", [
    (b'[{"site": "hook_resid_post", "val', "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"42", "not a table"),
])
def test_a_corrupt_results_json_is_an_error_line(tmp_path, capsys, content, message):
    run = _fake_run(tmp_path / "run", "probe sweep", extra={"results.json": content})
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "rerun" in err, err
    assert "Traceback" not in err and not (tmp_path / "r.html").exists()


def test_figures_are_captioned_with_what_they_show():
    from probe.report_captions import caption

    assert caption("layerwise_content-mean.png").startswith("Probe score against layer, pooling "
                                                            "content-mean")
    assert "Held-out AUROC" in caption("heldout_auroc.png")
    assert "happiness" in caption("heads_happiness.png")
    assert caption("my_own_plot.png") == "My own plot."  # unknown: the name in words
