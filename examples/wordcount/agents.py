"""The demo organism: names, prose words and public APIs of Python's standard library.

    scanner ──send─────────────────────────────────────────────▶ tally
       └──broadcast on 'files'──▶ counter (x4) ──emit──▶ tally
                             └──▶ sizer ────────emit──▶ tally
    tally ──request──▶ counter     (its totals)
    tally ──request──▶ classifier  (which names are keywords, builtins...)
    tally ──emit──▶ reporter

Every machine with Python has this data, and it is big enough (about 1,800 files,
30 MB) to make the organism do real work. Each agent measures the CPU time of its own
handler calls (``time.thread_time``: its thread's, not the other agents' running
meanwhile) and says it in what it sends, so that the report shows who did what.

The folder is the scanner's boot knowledge (``root``; ``stdlib`` is the running
Python's standard library), or the environment variable ``WORDCOUNT_ROOT``.
"""

from __future__ import annotations

import asyncio
import builtins
import heapq
import keyword
import os
import sys
import sysconfig
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sporeflow.pipeline import Context, Spore

from .report import render
from .text import prose_words, read_python

ROOT_VARIABLE = "WORDCOUNT_ROOT"
ASKED = 200  # the most common names tally asks the classifier about
TOP = 10
CONVENTIONS = frozenset({"self", "cls"})


def top(counts: Mapping[str, int], n: int) -> list[tuple[str, int]]:
    """The ``n`` largest, ties by name: the same on every run, whatever came first."""
    return heapq.nsmallest(n, counts.items(), key=lambda item: (-item[1], item[0]))


# -- scanner -----------------------------------------------------------------------------


def _root(knowledge: Mapping[str, Any]) -> tuple[Path, str]:
    """The folder to read and how to name it in the report."""
    name = os.environ.get(ROOT_VARIABLE) or knowledge.get("root", "stdlib")
    if name == "stdlib":
        version = sys.version.split()[0]
        return Path(sysconfig.get_paths()["stdlib"]), f"Python {version} standard library"
    return Path(name).expanduser().resolve(), "Python files"


def _is_test(parts: tuple[str, ...]) -> bool:
    """Test code: under a folder test, tests or *_test (idle_test), or named test_*.py."""
    return parts[-1].startswith("test_") or any(
        part in ("test", "tests") or part.endswith("_test") for part in parts[:-1])


def _walk(root: Path, skip: set[str]) -> tuple[list[dict[str, Any]], float]:
    """The .py files under ``root``, sorted, not looking into folders named in ``skip``;
    and the CPU time it took."""
    clock = time.thread_time()
    found = []
    for folder, folders, names in os.walk(root):
        folders[:] = [name for name in folders if name not in skip]  # not walked at all
        found += [os.path.join(folder, name) for name in names if name.endswith(".py")]
    files = []
    for path in sorted(found):
        parts = Path(path).relative_to(root).parts
        module = [*parts[:-1], parts[-1].removesuffix(".py")]
        if module[-1] == "__init__" and len(module) > 1:
            module.pop()
        files.append({"path": path, "module": ".".join(module), "package": module[0],
                      "test": _is_test(parts)})
    return files, time.thread_time() - clock


async def scan(spore: Spore, ctx: Context) -> Iterator[dict[str, Any]]:
    """Find the Python files under the root; announce each one on 'files' (the flatmap)."""
    started, clock = time.time(), time.thread_time()
    root, title = _root(spore.knowledge)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {str(root)!r} to read (the scanner's boot root, "
                                f"or ${ROOT_VARIABLE})")
    skip = set(spore.knowledge.get("skip", ["site-packages"]))
    seconds = time.thread_time() - clock
    files, walking = await asyncio.to_thread(_walk, root, skip)  # a walk blocks: off the loop
    # tally needs to know when it has seen everything.
    await ctx.send("tally", {"expected_files": len(files), "root": str(root), "title": title,
                             "started": started, "seconds": seconds + walking})
    return iter(files)


# -- counter and sizer: they hear each file ------------------------------------------------


class WordCounter:
    """The counter: one instance, whose totals its threads (``concurrency``) share.

    Each file's names and words go straight into the totals (``Counter.update`` over a
    list counts in C), and only a small result goes to tally: merging every file's
    counts in tally took a third of the run's CPU time. Tally asks for the totals at the
    end (a request: the answer comes back to it alone).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.names: Counter[str] = Counter()
        self.words: Counter[str] = Counter()  # as written: prose_words() when asked
        self.counted: set[str] = set()  # paths: a retry after a timeout counts nothing twice
        self.handled = 0
        self.seconds = 0.0

    def handle(self, spore: Spore, ctx: Context) -> dict[str, Any]:
        """A plain method: it runs on the agent's threads, off the loop."""
        clock = time.thread_time()
        k = spore.knowledge
        if "path" not in k:
            return self._totals(k, clock)
        pieces = read_python(Path(k["path"]).read_text(encoding="utf-8", errors="replace"))
        with self._lock:
            if k["path"] not in self.counted:
                self.counted.add(k["path"])
                self.names.update(pieces.names)
                self.words.update(pieces.words)
            self.handled += 1
            self.seconds += time.thread_time() - clock
        return {"kind": "counts", "module": k["module"], "channel": spore.channel,
                "public": None if k["test"] else len(pieces.public)}

    def _totals(self, k: Mapping[str, Any], clock: float) -> dict[str, Any]:
        """Answer tally's request: the most common names and prose words."""
        with self._lock:
            words = prose_words(self.words)
            answer = {"names": top(self.names, k.get("names", ASKED)),
                      "words": top(words, k.get("words", TOP)),
                      "distinct_names": len(self.names), "distinct_words": len(words)}
            self.handled += 1
            self.seconds += time.thread_time() - clock
            return {**answer, "handled": self.handled, "seconds": self.seconds}

    def save_state(self) -> dict[str, Any]:
        return {"names": dict(self.names), "words": dict(self.words),
                "counted": sorted(self.counted)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.names, self.words = Counter(state["names"]), Counter(state["words"])
        self.counted = set(state["counted"])


def measure(spore: Spore, ctx: Context) -> dict[str, Any]:
    """Measure one file in lines and bytes, filed under its top-level package."""
    clock = time.thread_time()
    k = spore.knowledge
    data = Path(k["path"]).read_bytes()
    return {"kind": "size", "package": k["package"], "test": k["test"],
            "lines": data.count(b"\n"), "bytes": len(data),
            "channel": spore.channel, "seconds": time.thread_time() - clock}


# -- tally ----------------------------------------------------------------------------------

_BOOKS = ("lines", "public", "heard", "busy", "totals", "kinds")


def _books(state: dict[str, Any]) -> dict[str, Any]:
    """tally's books, in its ``ctx.state``: all JSON (a Counter is a dict), so that
    ``sporeflow run --state`` can save them."""
    for key in _BOOKS:
        if not isinstance(state.get(key), Counter):
            state[key] = Counter(state.get(key) or {})
    state.setdefault("channels", {})  # channel -> who heard the files announced there
    state.setdefault("kind_of", {})  # agent -> the kind of result it sends
    return state


def _add(books: dict[str, Any], sender: str, k: Mapping[str, Any]) -> None:
    """Merge one spore's knowledge into the books."""
    books["busy"][sender] += k.get("seconds", 0.0)
    if "expected_files" in k:
        books["expected"], books["scanner"] = dict(k), sender
        return
    books["kinds"][k["kind"]] += 1
    books["heard"][sender] += 1
    books["kind_of"][sender] = k["kind"]
    hearers = books["channels"].setdefault(k["channel"], {})
    hearers[sender] = hearers.get(sender, 0) + 1
    if k["kind"] == "counts":
        # Public modules only: a module with a private part (_pydecimal, x._impl) is not.
        if k["public"] is not None and not any(
                part.startswith("_") for part in k["module"].split(".")):
            books["public"][k["module"]] = k["public"]
        return
    part = "tests" if k["test"] else "library"
    books["lines"][k["package"]] += k["lines"]
    books["totals"].update({"files": 1, "lines": k["lines"], "bytes": k["bytes"],
                            f"{part} files": 1, f"{part} lines": k["lines"]})


def _complete(books: dict[str, Any]) -> bool:
    """Every file announced was counted and measured."""
    expected = books.get("expected")
    return expected is not None and all(
        books["kinds"][kind] == expected["expected_files"] for kind in ("counts", "size"))


async def _ask(ctx: Context, to: str, knowledge: dict[str, Any]) -> dict[str, Any]:
    """A request, with its answer and how long the answer took (wall clock)."""
    clock = time.perf_counter()
    answer = await ctx.request(to, knowledge, timeout=30)
    return {"to": answer.from_agent, "asked": knowledge, "answer": dict(answer.knowledge),
            "seconds": time.perf_counter() - clock}


async def tally(spore: Spore, ctx: Context) -> dict[str, Any] | None:
    """Merge the results; once every file is in, ask the counter for its totals and the
    classifier about the names, then send the report on."""
    clock = time.thread_time()
    books = _books(ctx.state)
    books["handled"] = books.get("handled", 0) + 1
    _add(books, spore.from_agent, spore.knowledge)
    books["busy"][ctx.agent] += time.thread_time() - clock
    if not _complete(books):
        return None
    counter = next((name for name, kind in books["kind_of"].items() if kind == "counts"),
                   "counter")
    totals = await _ask(ctx, counter, {"names": ASKED, "words": TOP})
    asked = [name for name, _ in totals["answer"]["names"]]
    classes = await _ask(ctx, "classifier", {"classify": asked})
    return _result(books, ctx.agent, [totals, classes])


def _did(books: dict[str, Any], me: str, requests: list[dict[str, Any]]) -> dict[str, str]:
    """What each agent did, in words, from what it sent."""
    files = books["totals"]["files"]
    did = {books["scanner"]: f"found {files:,} files, announced each one"}
    for name, kind in books["kind_of"].items():
        did[name] = ("counted names, prose words, public definitions" if kind == "counts"
                     else "measured each file in lines and bytes")
    asked = " and ".join(request["to"] for request in requests)
    did[me] = f"merged {sum(books['heard'].values()):,} results, asked {asked}"
    classes = requests[-1]
    did[classes["to"]] = f"classified {len(classes['asked']['classify']):,} names for {me}"
    return did


def _result(books: dict[str, Any], me: str, requests: list[dict[str, Any]]
            ) -> dict[str, Any]:
    """The knowledge tally sends the reporter: the findings and the agents' own books."""
    expected, busy, scanner = books["expected"], books["busy"], books["scanner"]
    totals, classes = (request["answer"] for request in requests)
    agents = {scanner: {"handled": 1, "seconds": busy[scanner]}}
    for name, count in sorted(books["heard"].items()):
        agents[name] = {"handled": count, "seconds": busy[name]}
    agents[me] = {"handled": books["handled"], "seconds": busy[me]}
    for request in requests:  # who answered a request keeps its own books: it says them
        agents[request["to"]] = {key: request["answer"][key] for key in ("handled",
                                                                         "seconds")}
    for name, did in _did(books, me, requests).items():
        agents[name]["did"] = did
    own = set(classes["own"])
    return {
        "title": expected["title"], "root": expected["root"], "started": expected["started"],
        "scanner": scanner,
        "totals": dict(books["totals"]),
        "packages": top(books["lines"], 5),
        "names": [(name, count) for name, count in totals["names"] if name in own][:TOP],
        "words": totals["words"],
        "public": top(books["public"], TOP),
        "agents": agents,
        "channels": {channel: dict(sorted(hearers.items()))
                     for channel, hearers in sorted(books["channels"].items())},
        "requests": [{"from": me, **request} for request in requests],
    }


# -- classifier and reporter ------------------------------------------------------------------


async def classify(spore: Spore, ctx: Context) -> dict[str, Any]:
    """Answer a request: split names into keywords, builtins, conventions (``self``,
    ``cls``, names of one or two characters) and the library's own."""
    clock = time.thread_time()
    ctx.state["handled"] = ctx.state.get("handled", 0) + 1
    builtin_names = set(dir(builtins))
    split: dict[str, list[str]] = {"keywords": [], "builtins": [], "conventions": [],
                                   "own": []}
    for name in spore.knowledge["classify"]:
        if keyword.iskeyword(name) or keyword.issoftkeyword(name):
            split["keywords"].append(name)
        elif name in builtin_names:
            split["builtins"].append(name)
        elif name in CONVENTIONS or len(name) <= 2:
            split["conventions"].append(name)
        else:
            split["own"].append(name)
    return {**split, "handled": ctx.state["handled"], "seconds": time.thread_time() - clock}


async def report(spore: Spore, ctx: Context) -> None:
    """Print the report, with this agent's own line."""
    clock = time.thread_time()
    k = spore.knowledge
    ctx.state["handled"] = ctx.state.get("handled", 0) + 1
    agents = {**k["agents"], ctx.agent: {"handled": ctx.state["handled"],
                                         "seconds": time.thread_time() - clock,
                                         "did": "printed this report"}}
    elapsed = time.time() - k["started"]
    print(render({**k, "agents": agents}, sender=spore.from_agent, me=ctx.agent,
                 elapsed=elapsed), flush=True)
