"""XML a user sends (``sporeflow send --xml``) is read strictly: only handlers' replies,
as LLMs write them, are repaired."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sporeflow.pipeline.cli.main import cli
from sporeflow.steps import payload_from_xml
from sporeflow.steps.xmlrepair import XmlPayloadError

from .test_envelope import SCHEMAS_ORGANISM

MALFORMED = [
    ("<order><id>1</order>", "line 1"),           # a closing tag missing
    ("<order><id>1</id>", "line 1"),              # the root never closed
    ('<order id="1>\n<x/></order>', "line"),      # an attribute's quote never closed
    ("<order>\n  <id>1 & 2</id>\n</order>", "line 2"),  # a bare ampersand
]


@pytest.mark.parametrize(("text", "where"), MALFORMED)
def test_strict_reading_refuses_malformed_xml_saying_where(text: str, where: str) -> None:
    with pytest.raises(XmlPayloadError, match="not well-formed") as caught:
        payload_from_xml(text, strict=True)
    assert where in str(caught.value)
    assert "only handlers' replies are repaired" in str(caught.value)
    payload_from_xml(text)  # a reply's reading still repairs it


def test_strict_reading_accepts_well_formed_xml() -> None:
    text = '<?xml version="1.0" encoding="UTF-8"?>\n<order id="1"><sku>a</sku></order>'
    assert payload_from_xml(text, strict=True) == payload_from_xml(text)


@pytest.mark.parametrize(("text", "where"), MALFORMED)
def test_send_xml_refuses_malformed_xml_in_one_line(text: str, where: str) -> None:
    result = CliRunner().invoke(cli, ["send", str(SCHEMAS_ORGANISM), "--start", "--to",
                                      "echo", "--xml", text])
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("XmlPayloadError: not well-formed XML: ")
    assert where in line
    assert result.stdout == ""  # nothing was sent
