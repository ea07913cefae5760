"""``dlq --agent X`` finds the letters of spores addressed to X that no agent touched
(refused or expired on the way): found by a new user, to whom `--agent notifier` hid
the notifier-bound spores that expired before reaching it (their agent column is `-`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.core.deadletters import LetterChoice


async def test_an_agent_filter_finds_letters_addressed_to_it(tmp_path: Path) -> None:
    def notifier(spore: Spore, ctx: Any) -> None:
        raise RuntimeError("down")

    spec = Organism.from_dict({"agents": {"notifier": {"handler": notifier},
                                          "other": {"handler": notifier}}}).spec
    organism = Organism(spec, journal=tmp_path / "j.db")
    past = datetime.now(UTC) - timedelta(seconds=1)
    async with organism.running():
        await organism.send("notifier", {"n": 1})  # its handler fails: agent notifier
        await organism.submit(Spore(knowledge={"n": 2}, from_agent="cli",
                                    to_agent="notifier", expires_at=past))  # agent -
        await organism.submit(Spore(knowledge={"n": 3}, from_agent="cli",
                                    to_agent="other", expires_at=past))  # not notifier's
        await organism.idle()
    chosen = organism.dead_letters.numbered(LetterChoice(("notifier",)))
    assert sorted(s.letter.spore.knowledge["n"] for s in chosen) == [1, 2]
    [expired] = [s.letter for s in chosen if s.letter.reason == "expired"]
    assert expired.agent is None  # no agent was involved: the filter found its addressee
    result = CliRunner().invoke(cli, ["dlq", "list", "--journal", str(tmp_path / "j.db"),
                                      "--agent", "notifier", "--json"])
    assert result.exit_code == 0, result.stderr
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(letter["spore"]["knowledge"]["n"] for letter in listed) == [1, 2]


def test_an_agent_found_only_as_an_addressee_is_no_unknown_agent() -> None:
    """Found by review: ``LetterChoice.require`` knows an agent by the organism's agents,
    ``seen`` and the found letters' ``agent`` only, not by the addressee ``matches`` now
    chooses letters by. ``dlq list --agent notifier`` after notifier was taken out of the
    file, when its letters are ones it never touched (expired on the way: agent -),
    finds them and then fails 'no agent 'notifier', nor a dead letter of one'."""
    from sporeflow.pipeline.core.deadletters import DeadLetter, DeadLetterStore

    store = DeadLetterStore(10)
    past = datetime.now(UTC) - timedelta(seconds=1)
    store.add(DeadLetter.of(Spore(knowledge={"n": 1}, from_agent="cli", to_agent="notifier",
                                  expires_at=past), "expired", None))
    choice = LetterChoice(("notifier",))
    found = store.numbered(choice)
    assert len(found) == 1  # the filter finds it by its addressee
    choice.require(found, ["other"], "the journal j.db", "sporeflow dlq list")  # no raise
