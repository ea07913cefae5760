"""The demo organism: word and identifier counts over Python's own standard library.

    scanner ──files (broadcast)──▶ counter (x4) ──emit──▶ tally ──request──▶ classifier
                         └───────▶ sizer ───────emit──▶ tally ──emit──▶ reporter

Every machine with Python has this data, and it is big enough (hundreds of files,
megabytes of source) to make the organism do real work.
"""

from __future__ import annotations

import builtins
import keyword
import re
import sysconfig
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sporeflow.pipeline import Context, Spore

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
WORD = re.compile(r"[A-Za-z]{3,}")
COMMENT = re.compile(r"#([^\n]*)")
DOCSTRING = re.compile(r'"""(.*?)"""', re.S)
TOP = 15


def stdlib_root(name: str) -> Path:
    return Path(sysconfig.get_paths()["stdlib"]) if name == "stdlib" else Path(name)


async def scan(spore: Spore, ctx: Context) -> Iterator[dict[str, Any]]:
    """Announce every Python source file under the root, one spore each (the flatmap)."""
    root = stdlib_root(spore.knowledge.get("root", "stdlib"))
    skip = set(spore.knowledge.get("skip", ["site-packages"]))
    files = sorted(p for p in root.rglob("*.py") if not skip & set(p.parts))
    # tally needs to know when it has seen everything: one count per subscriber.
    await ctx.send("tally", {"expected_files": len(files)})
    return ({"path": str(path), "package": _package(root, path)} for path in files)


def _package(root: Path, path: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0].removesuffix(".py") if parts else "?"


def count_words(spore: Spore, ctx: Context) -> dict[str, Any]:
    """Count identifiers in the code and words in comments and docstrings of one file.

    A plain function: it reads a file, so it runs on a worker thread, off the loop.
    """
    text = Path(spore.knowledge["path"]).read_text(encoding="utf-8", errors="replace")
    prose = " ".join(COMMENT.findall(text) + DOCSTRING.findall(text))
    code = COMMENT.sub("", DOCSTRING.sub("", text))
    identifiers = Counter(IDENTIFIER.findall(code))
    words = Counter(w.lower() for w in WORD.findall(prose))
    return {
        "kind": "counts",
        "identifiers": dict(identifiers.most_common(200)),
        "words": dict(words.most_common(200)),
    }


def measure(spore: Spore, ctx: Context) -> dict[str, Any]:
    """Measure one file's size in lines and bytes, filed under its top-level package."""
    data = Path(spore.knowledge["path"]).read_bytes()
    return {"kind": "size", "package": spore.knowledge["package"], "bytes": len(data),
            "lines": data.count(b"\n")}


async def tally(spore: Spore, ctx: Context) -> dict[str, Any] | None:
    """Reduce the per-file results; once every file is in, classify and report."""
    state = ctx.state
    state.setdefault("identifiers", Counter())
    state.setdefault("words", Counter())
    state.setdefault("packages", Counter())
    knowledge = spore.knowledge
    if "expected_files" in knowledge:
        state["expected"] = knowledge["expected_files"]
    elif knowledge.get("kind") == "counts":
        state["identifiers"].update(knowledge["identifiers"])
        state["words"].update(knowledge["words"])
        state["counted"] = state.get("counted", 0) + 1
    elif knowledge.get("kind") == "size":
        state["packages"][knowledge["package"]] += knowledge["lines"]
        state["lines"] = state.get("lines", 0) + knowledge["lines"]
        state["bytes"] = state.get("bytes", 0) + knowledge["bytes"]
        state["sized"] = state.get("sized", 0) + 1
    expected = state.get("expected")
    if expected is None or state.get("counted") != expected or state.get("sized") != expected:
        return None
    top = [name for name, _ in state["identifiers"].most_common(60)]
    answer = await ctx.request("classifier", {"names": top}, timeout=10)
    return {
        "files": expected,
        "lines": state["lines"],
        "megabytes": round(state["bytes"] / 1e6, 1),
        "top_words": state["words"].most_common(TOP),
        "top_identifiers": [(n, state["identifiers"][n]) for n in answer.knowledge["own"]][:TOP],
        "top_keywords": [(n, state["identifiers"][n]) for n in answer.knowledge["keywords"]][:8],
        "largest_packages": state["packages"].most_common(5),
    }


async def classify(spore: Spore, ctx: Context) -> dict[str, Any]:
    """Answer a request: split names into keywords, builtins and the library's own."""
    names = spore.knowledge["names"]
    builtin_names = set(dir(builtins))
    return {
        "keywords": [n for n in names if keyword.iskeyword(n)],
        "builtins": [n for n in names if n in builtin_names],
        "own": [n for n in names if not keyword.iskeyword(n) and n not in builtin_names],
    }


async def report(spore: Spore, ctx: Context) -> None:
    """Print the result."""
    k = spore.knowledge
    lines = [
        f"Python standard library: {k['files']} files, {k['lines']:,} lines, "
        f"{k['megabytes']} MB",
        "  top words in comments and docstrings: "
        + ", ".join(f"{w} {n:,}" for w, n in k["top_words"]),
        "  top identifiers: " + ", ".join(f"{w} {n:,}" for w, n in k["top_identifiers"]),
        "  top keywords: " + ", ".join(f"{w} {n:,}" for w, n in k["top_keywords"]),
        "  largest packages (lines): "
        + ", ".join(f"{p} {n:,}" for p, n in k["largest_packages"]),
    ]
    print("\n".join(lines), flush=True)
