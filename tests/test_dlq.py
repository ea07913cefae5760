"""``sporeflow dlq``: dead letters survive a restart, can be listed, shown, replayed, purged."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sporeflow.pipeline import Organism, Spore, SporeType
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.journal.sqlite import JournalError, lock

BROKEN = '''
from pathlib import Path

def work(spore, ctx):
    n = spore.knowledge["item"]
    if n % 2 == 0:
        raise ValueError(f"even item {n}")
    with (Path(__file__).parent / "out.txt").open("a") as out:
        out.write(f"{n}\\n")
'''
FIXED = '''
from pathlib import Path

def work(spore, ctx):
    with (Path(__file__).parent / "out.txt").open("a") as out:
        out.write(f"{spore.knowledge['item']}\\n")
'''
SOURCE = '''
def spawn(spore, ctx):
    return [{"item": i} for i in range(spore.knowledge["count"])]
'''
ORGANISM = """
organism: {name: dlq-demo, journal: state/journal.db}
agents:
  source: {handler: dlq_source:spawn, boot: {count: 6}, emit: {to: worker}}
  worker: {handler: dlq_worker:work}
"""


def sporeflow(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process: each run imports the handlers afresh."""
    return subprocess.run([sys.executable, "-m", "sporeflow.pipeline.cli", *args],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_dead_letters_survive_a_restart_and_replay_to_a_fixed_handler(tmp_path: Path) -> None:
    (tmp_path / "organism.yaml").write_text(ORGANISM)
    (tmp_path / "dlq_source.py").write_text(SOURCE)
    (tmp_path / "dlq_worker.py").write_text(BROKEN)
    organism = str(tmp_path / "organism.yaml")
    run = sporeflow("run", organism, "--until-idle", "--quiet")
    assert run.returncode == 0, run.stderr
    assert sorted((tmp_path / "out.txt").read_text().split()) == ["1", "3", "5"]

    listed = sporeflow("dlq", "list", organism)  # a new process: read from the journal
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 3
    assert all("worker" in line and "handler failed" in line for line in lines)
    assert [line.split("ValueError: even item ")[1].split()[0] for line in lines] == [
        "0", "2", "4"]

    (tmp_path / "dlq_worker.py").write_text(FIXED)
    replayed = sporeflow("dlq", "replay", organism, "--reason", "handler failed", "--run")
    assert replayed.returncode == 0, replayed.stderr
    assert "3 dead letter(s) moved back" in replayed.stderr
    # Each item handled exactly once overall: the replay did not boot the organism again.
    assert sorted((tmp_path / "out.txt").read_text().split()) == ["0", "1", "2", "3", "4", "5"]
    with JournalFile(tmp_path / "state" / "journal.db") as journal:
        assert journal.dead_letters() == []
        assert journal.pending() == []


@pytest.fixture
async def journal(tmp_path: Path) -> Path:
    """A journal holding four dead letters: picky failed on 1 and 3, grumpy on 10 and 11."""

    def picky(spore: Spore, ctx: Any) -> None:
        if spore.knowledge["n"] % 2:
            raise ValueError(f"odd {spore.knowledge['n']}")

    def grumpy(spore: Spore, ctx: Any) -> None:
        raise KeyError("never")

    spec = Organism.from_dict({"agents": {"picky": {"handler": picky},
                                          "grumpy": {"handler": grumpy}}}).spec
    org = Organism(spec, journal=tmp_path / "j.db")
    async with org.running():
        for n in range(4):
            await org.send("picky", {"n": n})
        await org.idle()  # picky's dead letters first, numbered 1 and 2
        await org.send("grumpy", {"n": 10})
        await org.send("grumpy", {"n": 11})
        await org.idle()
    return tmp_path / "j.db"


def numbers(out: str) -> list[int]:
    return [int(line.split()[0]) for line in out.splitlines()]


def test_list_prints_one_line_per_dead_letter(journal: Path) -> None:
    code, out, err = invoke("dlq", "list", "--journal", str(journal))
    assert code == 0, err
    assert numbers(out) == [1, 2, 3, 4]
    first = out.splitlines()[0]
    assert "picky" in first
    assert "handler failed" in first
    assert "ValueError: odd 1" in first
    assert f"4 dead letter(s) in {journal}" in err


def test_list_filters_by_agent_reason_and_id(journal: Path) -> None:
    def listed(*filters: str) -> list[int]:
        code, out, err = invoke("dlq", "list", "--journal", str(journal), *filters)
        assert code == 0, err
        return numbers(out)

    assert listed("--agent", "grumpy") == [3, 4]
    assert listed("--agent", "grumpy", "--agent", "picky") == [1, 2, 3, 4]
    assert listed("--reason", "handler failed", "--id", "2", "--id", "4") == [2, 4]
    assert listed("--reason", "expired") == []
    with JournalFile(journal) as file:
        spore_id = file.dead_letters()[2].letter.spore.id
    assert listed("--id", spore_id) == [3]


def test_a_reason_may_be_written_with_dashes_and_a_misspelt_one_is_refused(
        journal: Path) -> None:
    # Before: a reason naming none ("handler-failed", "handler faild") listed nothing,
    # exit 0, and a replay or purge with it did nothing, as if no letter had that reason.
    code, out, _ = invoke("dlq", "list", "--journal", str(journal), "--reason",
                          "Handler_Failed")
    assert (code, numbers(out)) == (0, [1, 2, 3, 4])
    for command in ("list", "replay", "purge"):
        code, out, err = invoke("dlq", command, "--journal", str(journal), "--reason",
                                "handler faild")
        assert code == 2, out
        assert ("Invalid value for --reason: no dead-letter reason 'handler faild' (did "
                "you mean 'handler failed'?); the reasons are 'invalid', ") in err
    assert numbers(invoke("dlq", "list", "--journal", str(journal))[1]) == [1, 2, 3, 4]


def test_list_json_gives_each_dead_letter_whole(journal: Path) -> None:
    code, out, _ = invoke("dlq", "list", "--journal", str(journal), "--json", "--id", "3")
    assert code == 0
    [letter] = [json.loads(line) for line in out.splitlines()]
    assert letter["number"] == 3
    assert (letter["agent"], letter["reason"], letter["attempts"]) == (
        "grumpy", "handler failed", 1)
    assert letter["spore"]["knowledge"] == {"n": 10}
    assert "KeyError" in letter["traceback"]


def test_show_prints_the_traceback_and_the_spore(journal: Path) -> None:
    code, out, _ = invoke("dlq", "show", "--journal", str(journal), "--id", "1")
    assert code == 0
    assert out.startswith("dead letter 1\n")
    assert "  error:    ValueError: odd 1" in out
    assert "traceback:\nTraceback (most recent call last):" in out
    assert '"knowledge": {\n    "n": 1\n  }' in out


def test_purge_deletes_only_the_chosen_dead_letters(journal: Path) -> None:
    code, _, err = invoke("dlq", "purge", "--journal", str(journal), "--agent", "grumpy")
    assert code == 0
    assert "2 dead letter(s) purged" in err
    with JournalFile(journal) as file:
        assert [s.number for s in file.dead_letters()] == [1, 2]
        assert file.pending() == []


def test_replay_moves_the_chosen_ones_back_to_pending(journal: Path) -> None:
    code, _, err = invoke("dlq", "replay", "--journal", str(journal), "--id", "1")
    assert code == 0, err
    with JournalFile(journal) as file:
        assert [s.knowledge for s in file.pending()] == [{"n": 1}]
        assert [s.number for s in file.dead_letters()] == [2, 3, 4]


@pytest.mark.parametrize("command", ["replay", "purge"])
def test_replay_and_purge_need_a_choice_or_all(journal: Path, command: str) -> None:
    code, _, err = invoke("dlq", command, "--journal", str(journal))
    assert code == 2
    assert "--all" in err
    code, _, _ = invoke("dlq", command, "--journal", str(journal), "--all")
    assert code == 0
    with JournalFile(journal) as file:
        assert file.dead_letters() == []


def test_an_organism_without_a_journal_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "organism.yaml").write_text("agents:\n  a: {handler: operator:eq}\n")
    code, _, err = invoke("dlq", "list", str(tmp_path / "organism.yaml"))
    assert code == 1
    assert err.startswith("JournalError: ")
    assert "dead letters are only persisted with one" in err
    assert "journal: FILE" in err
    assert "Traceback" not in err


def test_a_journal_that_does_not_exist_yet_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = invoke("dlq", "list", "--journal", str(tmp_path / "none.db"))
    assert code == 1
    assert "no journal here yet" in err
    assert not (tmp_path / "none.db").exists()




async def test_list_sizes_its_columns_to_the_longest_agent_and_reason(tmp_path: Path) -> None:
    def hermit(spore: Spore, ctx: Any) -> Spore:  # a response nobody asked for
        return Spore(knowledge={}, spore_type=SporeType.RESPONSE, to_agent="hermit",
                     reply_to="guess-1")

    def picky(spore: Spore, ctx: Any) -> None:
        raise ValueError("never")

    spec = Organism.from_dict({"agents": {"a_picky_agent_with_a_long_name": {"handler": picky},
                                          "hermit": {"handler": hermit}}}).spec
    org = Organism(spec, journal=tmp_path / "j.db")
    async with org.running():
        await org.send("hermit", {})
        await org.send("a_picky_agent_with_a_long_name", {})
        await org.idle()
    code, out, err = invoke("dlq", "list", "--journal", str(tmp_path / "j.db"))
    assert code == 0, err
    unexpected, failed = out.splitlines()
    # The reason, then the error, start at the same column on both lines, past the
    # longest agent and the longest reason and two spaces.
    reason_at = failed.index("handler failed")
    assert (unexpected.index("unexpected response"), reason_at) == (
        reason_at, failed.index("a_picky_agent_with_a_long_name") + 32)
    error_at = failed.index("ValueError: never")
    assert (unexpected.index("DeliveryError: "), error_at) == (
        error_at, reason_at + len("unexpected response") + 2)


async def test_replies_count_what_handlers_produced_not_what_was_replayed(
        journal: Path) -> None:
    # Two letters moved back and handled by handlers that return None: no reply at all.
    with JournalFile(journal) as file:
        assert file.replay(file.dead_letters(agents=["picky"])) == 2

    def picky(spore: Spore, ctx: Any) -> None:
        return None

    async def twice(spore: Spore, ctx: Any) -> list[dict[str, Any]]:
        await ctx.send("sink", {"sent": 1})
        return [{"a": 1}, {"b": 2}]

    def sink(spore: Spore, ctx: Any) -> None:
        return None

    spec = Organism.from_dict({"agents": {"picky": {"handler": picky},
                                          "grumpy": {"handler": picky},
                                          "twice": {"handler": twice,
                                                    "emit": {"to": "sink"}},
                                          "sink": {"handler": sink}}}).spec
    org = Organism(spec, journal=journal)
    async with org.running():
        await org.idle()
        assert org.stats()["totals"]["handled"] == 2
        assert org.stats()["totals"]["replies"] == 0
        await org.send("twice", {})
        await org.idle()
        # One send and two returned: three produced.
        assert org.stats()["totals"]["replies"] == 3


# -- each letter replayed or refused on its own; an id that is not there is an error --------


def _tamper(journal: Path, number: int, **fields: Any) -> str:
    """Change dead letter ``number``'s spore as anyone with the file could; its spore id."""
    with sqlite3.connect(journal) as conn:
        text, spore_id = conn.execute("SELECT spore, spore_id FROM dead_letters WHERE seq = ?",
                                      (number,)).fetchone()
        conn.execute("UPDATE dead_letters SET spore = ? WHERE seq = ?",
                     (json.dumps({**json.loads(text), **fields}), number))
    conn.close()
    return str(spore_id)


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run where there is no organism.yaml: ``--journal`` is read alone."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("elsewhere")
def test_a_letter_that_cannot_be_replayed_is_refused_alone_and_the_rest_replayed(
        journal: Path) -> None:
    """Found by a fault injector: one letter whose spore had no JSON form (a changed row)
    made `dlq replay --all` fail with a traceback, and no letter was replayed."""
    spore_id = _tamper(journal, 2, created_at="yesterday")
    code, _, err = invoke("dlq", "replay", "--journal", str(journal), "--all")
    assert code == 1
    [refused] = [line for line in err.splitlines() if line.startswith("not replayed: ")]
    assert refused.startswith(f"not replayed: dead letter 2 (spore {spore_id}): SporeError: "
                              f"its spore has no JSON form to put back")
    assert refused.endswith(f"it stays a dead letter: `dlq purge --id {spore_id}` removes it")
    assert "3 dead letter(s) moved back" in err
    with JournalFile(journal) as file:
        assert [s.number for s in file.dead_letters()] == [2]
        assert sorted(s.knowledge["n"] for s in file.pending()) == [1, 10, 11]


@pytest.mark.usefixtures("elsewhere")
async def test_two_deliveries_of_one_broadcast_are_never_replayed_into_one(
        tmp_path: Path) -> None:
    """Found by a fault injector: both subscribers failed on one broadcast; `dlq replay
    --all` put one delivery back among the pending spores, kept by the spore's id, and
    deleted both letters: the other delivery was lost without a word."""

    def fails(spore: Spore, ctx: Any) -> None:
        raise ValueError("no")

    spec = Organism.from_dict({"channels": {"news": {}}, "agents": {
        "a": {"handler": fails, "subscribe": ["news"]},
        "b": {"handler": fails, "subscribe": ["news"]}}}).spec
    org = Organism(spec, journal=tmp_path / "j.db")
    async with org.running():
        await org.broadcast({"x": 1}, channel="news")
        await org.idle()
    code, _, err = invoke("dlq", "replay", "--journal", str(tmp_path / "j.db"), "--all")
    assert code == 1
    assert "not replayed: dead letter 2 (spore " in err
    assert "is pending already" in err
    assert "1 dead letter(s) moved back" in err
    with JournalFile(tmp_path / "j.db") as file:
        assert [(s.number, s.letter.agent) for s in file.dead_letters()] == [(2, "b")]
        assert [s.to_agent for s in file.pending()] == ["a"]


@pytest.mark.usefixtures("elsewhere")
@pytest.mark.parametrize("command", ["show", "replay", "purge"])
def test_an_id_that_names_no_letter_is_an_error_naming_it(journal: Path, command: str) -> None:
    """Found in review: `dlq replay --id 9` (show, purge) of a letter that no longer
    existed said "0 dead letter(s)" and exited 0, as if it had worked."""
    code, _, err = invoke("dlq", "purge", "--journal", str(journal), "--id", "3")
    assert code == 0, err
    for ids in (["3"], ["99"], ["1", "3"]):  # purged, never there; one there, one not
        code, out, err = invoke("dlq", command, "--journal", str(journal),
                                *[part for ident in ids for part in ("--id", ident)])
        assert code == 1
        assert out == ""
        assert err.startswith(f"NoSuchDeadLetter: {journal}: no dead letter '{ids[-1]}': ")
        assert "does not exist, or no longer does" in err
        assert f"`sporeflow dlq list organism.yaml --journal {journal}` lists" in err
    with JournalFile(journal) as file:  # nothing was done
        assert [s.number for s in file.dead_letters()] == [1, 2, 4]
        assert file.pending() == []
    code, out, _ = invoke("dlq", "list", "--journal", str(journal), "--id", "99")
    assert (code, out) == (0, "")  # a listing filters: none is an answer


def test_a_misspelt_agent_is_refused_and_an_agent_only_letters_name_is_not(
        journal: Path) -> None:
    # Found by a new user: `dlq list --agent flakey` printed "0 dead letter(s)", rc 0, on
    # a journal as on a running organism. An agent the organism file no longer has is
    # still named by its letters (this journal's agents are not the file's).
    code, _, err = invoke("dlq", "list", "--journal", str(journal), "--agent", "grumpi")
    assert code == 1
    assert "no agent 'grumpi', nor a dead letter of one (did you mean 'grumpy'?)" in err
    assert listed_journal(journal, "--agent", "grumpy") == [3, 4]


def listed_journal(journal: Path, *filters: str) -> list[int]:
    code, out, err = invoke("dlq", "list", "--journal", str(journal), *filters)
    assert code == 0, err
    return numbers(out)


def test_an_id_filtered_out_by_agent_says_so(journal: Path) -> None:
    code, _, err = invoke("dlq", "replay", "--journal", str(journal), "--agent", "grumpy",
                          "--id", "1")
    assert code == 1
    assert "no dead letter '1' among those of the --agent and --reason given" in err


async def test_another_organisms_journal_is_refused(tmp_path: Path) -> None:
    # Found by a new user: run --journal with another organism's file replayed its
    # pending spores here, to agents this organism does not have, without a word.
    from sporeflow.pipeline import JournalError

    path = tmp_path / "j.db"
    first = Organism.from_dict({"organism": {"name": "one"},
                                "agents": {"a": {"handler": lambda s, c: None}}}, journal=path)
    async with first.running():
        await first.send("a", {})
        await first.idle()
    other = Organism.from_dict({"organism": {"name": "two"},
                                "agents": {"b": {"handler": lambda s, c: None}}}, journal=path)
    with pytest.raises(JournalError, match=r"this journal belongs to organism 'one', not "
                                           r"'two': its spores would be replayed here"):
        await other.start()
    again = Organism.from_dict({"organism": {"name": "one"},
                                "agents": {"a": {"handler": lambda s, c: None}}}, journal=path)
    async with again.running():  # its own organism opens it as before
        await again.idle()


def test_a_listed_letter_shows_unprintable_characters_as_escapes() -> None:
    # Found by an attacker: a broker letter is anyone's; an agent name or error with a
    # right-to-left override or an escape sequence reached the terminal raw, where it can
    # reorder or hide what the line says.
    from sporeflow.pipeline.cli.letters import letter_lines
    from sporeflow.pipeline.core.deadletters import DeadLetter, StoredDeadLetter

    letter = DeadLetter(Spore(knowledge={}, to_agent="bank"), "handler failed",
                        "ValueError: \x1b[2Jcleared", agent="bank\u202eknab")
    [line] = letter_lines(lambda text: text, [StoredDeadLetter(1, letter)])
    assert "bank\\u202eknab  handler failed  ValueError: \\u001b[2Jcleared" in line
    assert line.isprintable()


def test_dlq_of_an_organism_without_journal_names_the_broker_it_may_have_run_on(
        tmp_path: Path) -> None:
    # Found by a new user: a run over RabbitMQ given on the command line (`run --backend
    # URL`, the file saying memory) left its letters on the broker; `dlq list` spoke only
    # of journals, never of the --backend that reads them.
    (tmp_path / "organism.yaml").write_text(
        "organism: {name: plain}\nagents:\n  a: {handler: 'operator:eq'}\n")
    result = CliRunner().invoke(cli, ["dlq", "list", str(tmp_path / "organism.yaml")])
    assert result.exit_code == 1
    assert "has no journal" in result.stderr
    assert "pass the same --backend URL" in result.stderr


@pytest.mark.parametrize("command", ["replay", "purge"])
async def test_a_journal_a_running_organism_holds_is_not_changed_behind_its_back(
        tmp_path: Path, command: str) -> None:
    # Replayed into the file, a letter would be delivered by the next start while the
    # running organism, which still keeps it, could replay it too: handled twice.
    def picky(spore: Spore, ctx: Any) -> None:
        raise ValueError("never")

    org = Organism(Organism.from_dict({"agents": {"picky": {"handler": picky}}}).spec,
                   journal=tmp_path / "j.db")
    async with org.running():
        await org.send("picky", {})
        await org.idle()
        code, _, err = invoke("dlq", command, "--journal", str(tmp_path / "j.db"), "--all")
        assert code != 0
        assert "in use by a running organism" in err
        assert "without --journal" in err
    code, out, _ = invoke("dlq", "list", "--journal", str(tmp_path / "j.db"))
    assert code == 0
    assert len(out.splitlines()) == 1  # the letter is still there


def test_a_replay_from_a_journal_file_holds_its_lock_until_it_is_done(journal: Path) -> None:
    # Found in review: the check took the lock and let it go at once, so an organism
    # starting between the check and the write loaded the letters being replayed.
    with JournalFile(journal) as file:
        file.refuse_if_running("replay")
        with pytest.raises(JournalError, match="in use by another running organism"):
            lock(journal)  # what an organism starting now does first
    os.close(lock(journal))  # let go once the replay is done


@pytest.mark.parametrize("command", ["show", "replay", "purge"])
def test_a_letters_number_given_for_the_organism_says_to_write_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    # Found by a new user: `dlq show 1` (the number `list` shows) said
    # "1:1:1: <root>: cannot read the file", naming no fix.
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke("dlq", command, "1")
    assert code == 2
    assert "to choose dead letter 1, write --id 1" in err


def test_a_journal_no_organism_holds_is_not_said_to_be_in_use(journal: Path) -> None:
    # Found in review: refuse_if_running took every failure to take the lock (a symbolic
    # link, which the lock never opens through; a read-only file) for a running organism
    # holding it, and said so: `dlq purge --journal link.db` told to stop an organism that
    # was not running.
    link = journal.with_name("link.db")
    link.symlink_to(journal)
    code, _, err = invoke("dlq", "purge", "--journal", str(link), "--all")
    assert code == 1
    assert "running organism" not in err
    assert "symbolic link" in err
