"""The demo organism (./organism.yaml) on a small fixed folder of Python files.

The repository's own organism.yaml runs under the CLI, as a user runs it, pointed at the
folder by ``WORDCOUNT_ROOT``; every number of its report is checked against a recount
made here another way: names and prose with ``tokenize``, public definitions with
``ast``, lines by reading the files, the agents' counts against the runtime's own table.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import os
import re
import subprocess
import sys
import sysconfig
import tokenize
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from examples.wordcount.text import STOPWORDS

ROOT = Path(__file__).parent.parent

# What each file holds is chosen to catch a wrong reading: a '#' and a 'def' inside
# strings, quotes inside comments, string prefixes, ALL CAPS words, stopwords, a `def`
# at column 0 inside a docstring, definitions that are not top-level, hex numbers,
# private modules and names, test code, and a skipped folder.
FILES = {
    "shapes/__init__.py": '''\
"""Shapes and their areas: the package docstring.

Every shape knows its area. LATIN CAPITAL LETTER A is not a word here.
"""

from shapes.core import Circle, Square  # the shapes, re-exported

__all__ = ["Circle", "Square", "area"]


def area(shape):
    """Return the area of a shape."""
    return shape.area()


def _cache():
    return {}
''',
    "shapes/core.py": """\
'''Core shapes. A docstring in single quotes, with a fake definition:
def not_a_function(): pass
class NotAClass: pass
'''

import math

COLOR = "#ff0000"  # a hash inside a string; a "quote" inside a comment
PATTERN = rb"\\d+ # not a comment"
LABEL = f"area of a shape"
MASK = 0x1F


class Shape:
    \"\"\"A shape with an area.\"\"\"

    def area(self):
        raise NotImplementedError("every shape has an area")


class Circle(Shape):
    def __init__(self, radius):
        self.radius = radius

    def area(self):
        # circle area: pi times radius squared
        return math.pi * self.radius ** 2


class Square(Shape):
    def __init__(self, side):
        self.side = side

    def area(self):
        return self.side * self.side


@staticmethod
def scale(shape, factor):
    return shape


async def measure(shape):
    return shape.area()


if MASK:
    def hidden():
        return None
""",
    "shapes/_impl.py": '''\
def helper():
    """A public name in a private module: not ranked."""
    return 1


def other():
    return 2
''',
    "shapes/tests/test_core.py": '''\
from shapes.core import Circle, Square


def test_circle_area():
    """The area of a unit circle is pi."""
    assert Circle(1).area() > 3


def test_square_area():
    assert Square(2).area() == 4
''',
    "tool.py": '''\
#!/usr/bin/env python3
"""A tool that prints areas of shapes."""

import shapes


def main():
    for side in range(3):
        print(shapes.area(shapes.Square(side)))


class Runner:
    pass
''',
    "site-packages/ignored.py": "def ignored():\n    return 'skipped folder'\n",
    "notes.txt": "not python\n",
}
TESTS = {"shapes/tests/test_core.py"}


@dataclass
class Recount:
    """The numbers of the report, counted without the demo's code."""

    files: int
    lines: Counter[str]  # "library" or "tests"
    size: int
    names: Counter[str]
    words: Counter[str]
    packages: Counter[str]  # lines, by top-level package
    public: dict[str, int]  # public definitions, by public library module


def _recount(root: Path) -> Recount:
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    names: Counter[str] = Counter()
    words: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    public: dict[str, int] = {}
    size = 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        source = path.read_bytes()
        size += len(source)
        with path.open("rb") as stream:
            count = sum(1 for _ in stream)
        lines["tests" if rel in TESTS else "library"] += count
        packages[rel.split("/")[0].removesuffix(".py")] += count
        for token in tokenize.tokenize(io.BytesIO(source).readline):
            body = token.string.lstrip("rRbBuUfF")
            if token.type == tokenize.NAME:
                names[token.string] += 1
            elif token.type == tokenize.COMMENT or (
                    token.type == tokenize.STRING and body[:3] in ('"""', "'''")):
                words.update(w.lower() for w in re.findall(r"[A-Za-z][a-z]{2,}", token.string)
                             if w.lower() not in STOPWORDS)
        module = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        if rel not in TESTS and not any(p.startswith("_") for p in module.split(".")):
            public[module] = sum(
                1 for node in ast.parse(source).body
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and not node.name.startswith("_"))
    return Recount(len(files), lines, size, names, words, packages, public)


def _top(counts: dict[str, int], n: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def _listed(pairs: list[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in pairs)


def _kind(name: str) -> str:
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return "keywords"
    if name in vars(builtins):
        return "builtins"
    return "short or conventional" if name in ("self", "cls") or len(name) < 3 else "own"


def _unwrapped(report: str) -> list[str]:
    """The report's lines with their wrapped continuations joined back."""
    joined: list[str] = []
    for line in report.splitlines():
        if line.startswith("      ") and joined and joined[-1]:
            joined[-1] += " " + line.strip()
        else:
            joined.append(line)
    return joined


def _runtime_table(stderr: str, agents: set[str]) -> dict[str, int]:
    """handled, by agent, from the summary table the CLI prints (received, handled, ...)."""
    rows = re.findall(r"^(\w+) +([\d,]+) +([\d,]+) ", stderr, re.M)
    return {name: int(handled.replace(",", "")) for name, _, handled in rows
            if name in agents}


def _run_demo(root: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``sporeflow run --until-idle`` on ./organism.yaml, on ``root`` if given."""
    env = {key: value for key, value in os.environ.items() if key != "WORDCOUNT_ROOT"}
    if root is not None:
        env["WORDCOUNT_ROOT"] = str(root)
    done = subprocess.run(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", "--until-idle"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stderr
    return done


def test_demo_report_matches_an_independent_recount(tmp_path: Path) -> None:
    root = tmp_path / "input"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    done = _run_demo(root)
    assert "0 dead letters" in done.stderr
    report = _unwrapped(done.stdout)
    want = _recount(root)
    n, lines, names = want.files, want.lines, want.names
    assert n == 5

    # What was found.
    assert report[0] == f"Python files: {root.resolve()}"
    assert report[1] == (
        f"  {n} files, {lines.total():,} lines, {want.size / 1e3:.1f} kB: "
        f"{n - 1} library modules ({lines['library']:,} lines), "
        f"1 test files ({lines['tests']:,} lines)")
    assert report[2] == f"  largest packages, in lines: {_listed(_top(want.packages, 5))}"
    asked = [name for name, _ in _top(names, 200)]
    own = [(name, names[name]) for name in asked if _kind(name) == "own"][:10]
    assert report[3] == f"  most common names, the library's own: {_listed(own)}"
    assert report[4] == ("  most common words in comments and docstrings: "
                         + _listed(_top(want.words, 10)))
    assert want.public == {"shapes": 1, "shapes.core": 5, "tool": 2}
    assert report[5] == ("  public modules with the most public functions and classes: "
                         + _listed(_top(want.public, 10)))

    # Which agent did what: the agents' own books, and the runtime's.
    rows = {m[1]: int(m[2].replace(",", "")) for line in report
            if (m := re.match(r"  (\w+) +([\d,]+) +[\d.]+ m?s ", line))}
    # The counter hears each file and answers tally's request for its totals.
    expected = {"scanner": 1, "counter": n + 1, "sizer": n, "tally": 2 * n + 1,
                "classifier": 1, "reporter": 1}
    assert rows == expected
    assert _runtime_table(done.stderr, set(expected)) == expected
    total = sum(expected.values())
    assert any(re.fullmatch(rf"  in all +{total:,} spores in [\d.]+ m?s", line)
               for line in report)

    # What they said to each other.
    assert f"    send       scanner → tally: expect {n} files" in report
    assert (f"    broadcast  scanner → 'files': {n} spores, one per file, heard by "
            f"counter ({n}) and sizer ({n})") in report
    assert f"    emit       counter, sizer → tally: {2 * n} results" in report
    requests = [line for line in report if line.startswith("    request")]
    assert len(requests) == 2
    assert re.fullmatch(
        r"    request    tally → counter: your totals, answered in [\d.]+ m?s: "
        + re.escape(f"{len(names)} distinct names, {len(want.words)} distinct prose words, "
                    f"the {len(asked)} most common names"), requests[0])
    split: dict[str, list[str]] = {}
    for name in asked:
        split.setdefault(_kind(name), []).append(name)
    parts = [f"{len(split[kind])} {label} ({', '.join(split[kind][:4])}"
             f"{', ...' if len(split[kind]) > 4 else ''})"
             for kind, label in (("keywords", "keywords"), ("builtins", "builtins"),
                                 ("short or conventional", "short or conventional"),
                                 ("own", "the library's own")) if kind in split]
    assert re.fullmatch(
        rf"    request    tally → classifier: classify {len(asked)} names, answered in "
        r"[\d.]+ m?s: " + re.escape(", ".join(parts)), requests[1])
    assert report[-1] == "    emit       tally → reporter: this report"
    channels = re.search(r"^files +([\d,]+) +([\d,]+) +0$", done.stderr, re.M)
    assert channels is not None
    assert channels.groups() == (str(n), str(2 * n))


def test_demo_on_the_standard_library_reports_it_without_stopwords_or_unicode_names(
        ) -> None:
    done = _run_demo()
    assert "0 dead letters" in done.stderr
    report = _unwrapped(done.stdout)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert report[0] == f"Python {sys.version.split()[0]} standard library: {stdlib}"
    files = [path for path in stdlib.rglob("*.py") if "site-packages" not in path.parts]
    lines = sum(path.read_bytes().count(b"\n") for path in files)
    assert report[1].startswith(f"  {len(files):,} files, {lines:,} lines, ")
    words = report[4].removeprefix("  most common words in comments and docstrings: ")
    found = set(re.findall(r"[a-z]+", words))
    assert len(found) == 10
    # The Unicode character names of the codec tables (LATIN CAPITAL LETTER...) and the
    # stopwords filled the old list.
    assert not found & ({"latin", "capital", "small", "letter"} | STOPWORDS)
    handled = _runtime_table(done.stderr, {"scanner", "counter", "sizer", "tally",
                                           "classifier", "reporter"})
    total = re.search(r"^  in all +([\d,]+) spores", done.stdout, re.M)
    assert total is not None
    assert int(total[1].replace(",", "")) == sum(handled.values())
    assert handled["counter"] - 1 == handled["sizer"] == len(files)
    classifier = "    request    tally → classifier"
    classified = next(line for line in report if line.startswith(classifier))
    assert "short or conventional (self, " in classified
