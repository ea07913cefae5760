"""Schema checks of spores against their recipients' schemas.

An agent may declare a schema (``agents.<name>.schema``; compiled by
:mod:`sporeflow.config.schemas`). Spores addressed to it are checked in the validate
stage :func:`check_schemas`, after ``route``, through the current mapping of agent name
to :func:`schema_check`. A broadcast is checked once per subscriber that has a schema,
and refused to those whose schema it fails only; the other subscribers still get it.
Each refusal is one dead letter, reason
``schema``, naming the agent and the failing field.

The XML form of the knowledge, which an XSD is applied to, is
:func:`knowledge_element`: the document as written when the spore came from an XML
payload whose attributes, text or order the mapping cannot give back and it still reads
as the knowledge (:mod:`sporeflow.steps.xmldocument`); otherwise the knowledge written
by the mapping of :mod:`sporeflow.steps.xmlpayload` under a root element named after
the spore's ``metadata["kind"]`` (the tag of the XML payload it came from) when that is
an XML name, else ``knowledge`` (``DEFAULT_ROOT``). The mapping's scalar type markers
(``type="str"``, ``type="float"``, ...) are left out: XSD types the text itself, so
the string ``"42"`` is checked as the text ``42``. Structure is as in the mapping:
every key is a child element in key order (``xs:all`` accepts any order), a list of two
or more items is repeated elements, and a list of zero or one item is a container
``<key type="list">`` with ``<item>`` children.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping

from aiostream import pipable_operator, streamcontext

from sporeflow.config.errors import SporeError, SporeflowError
from sporeflow.config.lazy_etree import etree
from sporeflow.config.reasons import reason_of
from sporeflow.config.schemas import SchemaSpec, SchemaViolation
from sporeflow.config.words import message_of
from sporeflow.steps.spore import Spore
from sporeflow.steps.types import Delivery, Reject, SchemaCheck
from sporeflow.steps.xmldocument import DEFAULT_ROOT, WRITTEN_KEY, spore_document

__all__ = ["DEFAULT_ROOT", "check_schemas", "knowledge_element", "schema_check",
           "schema_refusal"]


def knowledge_element(spore: Spore) -> etree._Element:
    """The XML form of ``spore``'s knowledge, as an XSD sees it (see the module docstring).

    Raises ``ValueError``/``TypeError`` for knowledge that XML cannot hold.
    """
    metadata = spore.metadata or {}
    return spore_document(metadata.get("kind"), spore.knowledge, metadata.get(WRITTEN_KEY))


def schema_check(agent: str, schema: SchemaSpec) -> SchemaCheck:
    """The check of spores addressed to ``agent``: raises :class:`SchemaViolation`."""
    where = str(schema.path)

    def check_knowledge(spore: Spore) -> None:
        try:
            schema.check(spore.knowledge)
        except SchemaViolation as exc:
            raise SchemaViolation(exc.field, exc.detail, where, agent=agent) from None

    def check_xml(spore: Spore) -> None:
        try:
            element = knowledge_element(spore)
        except (ValueError, TypeError) as exc:
            raise SchemaViolation(DEFAULT_ROOT, f"has no XML form: {exc}", where,
                                  agent=agent) from None
        try:
            schema.check(element)
        except SchemaViolation as exc:
            raise SchemaViolation(exc.field, exc.detail, where, agent=agent) from None

    return check_xml if schema.wants_xml else check_knowledge


def schema_refusal(check: SchemaCheck, spore: Spore, agent: str) -> SporeflowError | None:
    """Why agent ``agent``'s schema ``check`` refuses ``spore`` (None: it passes): its
    :class:`SchemaViolation`, or a :class:`SporeError` when hostile knowledge broke the
    check itself. The one rule of every place a schema is asked: this gate, an outside
    send (told at the call), the spores a reload finds held for the agent."""
    try:
        check(spore)
    except SporeflowError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - hostile knowledge broke the check: refuse
        error = SporeError(f"the schema of {agent!r} could not check spore {spore.id}: "
                           f"{type(exc).__name__}: {message_of(exc)}")
        error.__cause__ = exc
        return error
    return None


@pipable_operator
async def check_schemas(
    source: AsyncIterable[list[Delivery]],
    *,
    schemas: Callable[[], Mapping[str, SchemaCheck]],
    on_reject: Reject,
) -> AsyncIterator[list[Delivery]]:
    """Refuse each delivery to the recipients whose schema it fails; pass the rest.

    ``schemas`` gives the current agent -> check mapping, read once per batch, so an
    agent added while the chain runs is checked from its first spore on.
    """
    async with streamcontext(source) as batches:
        async for deliveries in batches:
            current = schemas()
            if current:
                deliveries = _admitted(deliveries, current, on_reject)
            if deliveries:
                yield deliveries


def _admitted(deliveries: list[Delivery], schemas: Mapping[str, SchemaCheck],
              on_reject: Reject) -> list[Delivery]:
    admitted: list[Delivery] = []
    for spore, targets in deliveries:
        if len(targets) == 1 and targets[0] not in schemas:
            admitted.append((spore, targets))
            continue
        kept: list[str] = []
        for target in targets:
            check = schemas.get(target)
            refusal = None if check is None else schema_refusal(check, spore, target)
            if refusal is None:
                kept.append(target)
            else:  # one dead letter per refused recipient: a delivery is settled per target
                on_reject(spore, reason_of(refusal), refusal)
        if kept:
            admitted.append((spore, tuple(kept)))
    return admitted
