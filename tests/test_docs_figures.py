"""Every measured figure in README.md and docs/ comes from a committed results file (issue 26.6).

A figure is followed by a marker naming its source, hidden when the Markdown is rendered:

    NF-ResNet-50 trains at **22.0**<!-- r tools/results/x.json train_images_per_sec {:.1f} --> img/s

`PATH KEY SPEC[/DIVISOR]`: KEY is a dotted path into the JSON (list items by index; it may hold
spaces, as in `nf.categories.conv + matmul.seconds`), SPEC a
Python format spec applied to the value (divided by DIVISOR when given, e.g. `{:.2f}/1e9` for GB).
The formatted value must be exactly the text right before the marker (Markdown emphasis aside),
so a figure edited by hand, a missing file or key, or a re-measured file that no longer holds
the quoted number fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!--\s*r\s+(\S+)\s+(.+?)\s+(\{[^}]*\})(?:/(\S+))?\s*-->")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def lookup(data, key: str):
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def check_text(text: str, where: str) -> tuple[int, list[str]]:
    """(markers found, problems) for one document's text."""
    problems, cache = [], {}
    matches = list(MARKER.finditer(text))
    for m in matches:
        path, key, spec, divisor = m.groups()
        line = text.count("\n", 0, m.start()) + 1
        at = f"{where}:{line} ({path} {key})"
        file = REPO / path
        if not file.is_file():
            problems.append(f"{at}: results file missing")
            continue
        data = cache.setdefault(path, json.loads(file.read_text()))
        try:
            value = lookup(data, key)
        except (KeyError, IndexError, TypeError, ValueError):
            problems.append(f"{at}: key not in the file")
            continue
        expected = spec.format(value / float(divisor) if divisor else value)
        before = text[: m.start()].rstrip().rstrip("*_")
        head = before[: len(before) - len(expected)]
        if not before.endswith(expected) or head[-1:].isdigit() or head.endswith((".", ",", "-", "+")):
            problems.append(f"{at}: the file gives {expected!r}, the text says {before[-len(expected) - 8 :]!r}")
    return len(matches), problems


def test_every_cited_figure_matches_its_results_file():
    total, problems = 0, []
    for doc in doc_files():
        found, bad = check_text(doc.read_text(), doc.relative_to(REPO).as_posix())
        total, problems = total + found, problems + bad
    assert not problems, "\n".join(problems)
    assert total >= 20, f"only {total} figure markers in README.md and docs/: were they stripped?"


def test_every_results_file_named_in_the_docs_exists():
    missing = []
    for doc in doc_files():
        for name in re.findall(r"tools/results/[\w.\-]+\.json", doc.read_text()):
            if not (REPO / name).is_file():
                missing.append(f"{doc.name}: {name}")
    assert not missing, "results files cited but not committed:\n" + "\n".join(missing)


def test_the_cited_results_files_say_where_and_when_they_were_measured():
    cited = {m.group(1) for doc in doc_files() for m in MARKER.finditer(doc.read_text())}
    lacking = []
    for path in sorted(cited):
        data = json.loads((REPO / path).read_text())
        absent = [k for k in ("machine", "date", "commit", "command") if k not in data]
        if absent:
            lacking.append(f"{path}: no {absent}")
    assert not lacking, "\n".join(lacking)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("EMA top-1 **99.3%**<!-- r tools/results/quickstart_cpu.json ema_top1 {:.1%} -->", None),
        ("EMA top-1 **99.4%**<!-- r tools/results/quickstart_cpu.json ema_top1 {:.1%} -->", "the file gives"),
        ("EMA top-1 199.3%<!-- r tools/results/quickstart_cpu.json ema_top1 {:.1%} -->", "the file gives"),
        ("EMA top-1 99.3%<!-- r tools/results/quickstart_cpu.json ema_top_1 {:.1%} -->", "key not in the file"),
        ("EMA top-1 99.3%<!-- r tools/results/quickstart_gone.json ema_top1 {:.1%} -->", "results file missing"),
    ],
)
def test_the_check_catches_an_edited_figure_a_wrong_key_and_a_missing_file(text, problem):
    value = json.loads((REPO / "tools/results/quickstart_cpu.json").read_text())["ema_top1"]
    text = text.replace("99.3%", f"{value:.1%}").replace("99.4%", f"{value + 0.001:.1%}")
    found, problems = check_text(text, "example.md")
    assert found == 1
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]


def test_the_tpu_plan_page_is_the_one_its_result_files_make(monkeypatch):
    """docs/tpu_plan.md is generated (`tools/plan_table.py --markdown`): a hand edit, or a result
    file re-measured without regenerating the page, fails here."""
    import importlib.util

    monkeypatch.chdir(REPO)  # the page names its result files relative to the repository
    spec = importlib.util.spec_from_file_location("nf_plan_table", REPO / "tools" / "plan_table.py")
    plan_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plan_table)
    made = plan_table.markdown([plan_table.V3_RESULT, "tools/results/tpu_plan_generations.json"])
    assert (REPO / "docs" / "tpu_plan.md").read_text() == made
