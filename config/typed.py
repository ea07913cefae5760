"""Typed payloads: a handler whose spore parameter is annotated with a dataclass or a
pydantic model gets that type, checked and converted from the knowledge.

``async def take(order: Order, ctx)``: the first parameter's annotation (a class
agent's ``handle(self, order: Order, ctx)`` too) names the payload type. Any other
annotation (none, ``Spore``, ``dict``) leaves the handler plain, unchanged. An agent may
list several handlers (``handlers: [shop:on_order, shop:on_refund]``), each typed: a
spore goes to the first whose type it fits (see :meth:`PayloadRoutes.select`).

One rule decides: :meth:`PayloadRoutes.select`. The chain's schema stage calls it
through the agent's generated :class:`SchemaSpec` (language ``"type"``), so a payload
that fits no type is a dead letter with reason ``schema`` naming the field, and the
handler's invoker calls it again to get the value it passes. pydantic's ``TypeAdapter``
does the checking, converting and dumping for dataclasses and models alike (the
``typed`` extra).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from sporeflow.config.errors import Problem
from sporeflow.config.extras import has_modules, missing_extra
from sporeflow.config.handlers import HandlerImportError, agent_method
from sporeflow.config.positions import Located
from sporeflow.config.references import mapping
from sporeflow.config.resolve import qualname
from sporeflow.config.schemas import SchemaSpec, SchemaViolation, field_path
from sporeflow.config.xsdgen import xsd_from_json_schema

__all__ = ["TYPE_LANGUAGE", "PayloadRoute", "PayloadRoutes", "is_record", "payload_type",
           "read_payloads", "routes_for", "to_knowledge"]

TYPE_LANGUAGE: Final = "type"
"""The ``SchemaSpec.language`` of a schema generated from handlers' payload types."""

_PYDANTIC_MODEL: Final = "pydantic.main.BaseModel"
_SPORE: Final = "sporeflow.steps.spore.Spore"  # a dataclass too: the plain handler's spore
_DETAIL_CHARS: Final = 200


def is_record(annotation: Any) -> bool:
    """True for a dataclass or a pydantic model class (a payload type); not the Spore."""
    if not isinstance(annotation, type):
        return False
    bases = {f"{klass.__module__}.{klass.__qualname__}" for klass in annotation.__mro__}
    return _SPORE not in bases and (dataclasses.is_dataclass(annotation)
                                    or _PYDANTIC_MODEL in bases)


def payload_type(handler: Callable[..., Any]) -> type | None:
    """The payload type ``handler`` declares on its first parameter, or None (plain).

    An annotation that does not resolve (a name imported only under TYPE_CHECKING) is
    taken as plain: a handler that worked before keeps working.
    """
    function: Any = handler
    if inspect.isclass(handler):
        try:
            function = getattr(handler, agent_method(handler))
        except HandlerImportError:
            return None  # reported by the loader's kind check
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # no signature to read: plain
        return None
    if inspect.isclass(handler) and parameters:
        parameters = parameters[1:]  # self
    if not parameters:
        return None
    try:
        annotation = typing.get_type_hints(function).get(parameters[0].name)
    except Exception:  # noqa: BLE001  # another annotation may not resolve: the first alone
        annotation = _resolved(function, parameters[0].annotation)
    return annotation if is_record(annotation) else None


def _resolved(function: Any, annotation: Any) -> Any:
    """``annotation`` (text, under ``from __future__ import annotations``) resolved in the
    handler's module, or None. Found by a new user: ``ctx: Context`` imported only under
    TYPE_CHECKING made every annotation unresolvable, and the typed handler plain."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, dict(getattr(function, "__globals__", {})))  # noqa: S307
    except Exception:  # noqa: BLE001  # a name imported only under TYPE_CHECKING: plain
        return None


@functools.cache  # once found: it is asked on every typed spore
def _pydantic() -> Any:
    if not has_modules("pydantic"):
        raise missing_extra("a typed handler (a dataclass or model payload)", "pydantic",
                            "typed")
    import pydantic

    return pydantic


@functools.lru_cache(maxsize=256)
def _adapter(kind: Any) -> Any:
    return _pydantic().TypeAdapter(kind)


def to_knowledge(value: Any) -> Any:
    """A returned dataclass or model as knowledge (a JSON dict); a list of them, each;
    anything else as it is."""
    if value.__class__ is dict:  # the common reply: nothing to look at
        return value
    if is_record(type(value)):
        return _adapter(cast(Any, type(value))).dump_python(value, mode="json")
    if isinstance(value, list | tuple) and any(is_record(type(item)) for item in value):
        return [to_knowledge(item) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class PayloadRoute:
    """One typed handler of an agent: the type it takes, and the handler."""

    kind: type
    ref: str
    handler: Callable[..., Any]  # compared by identity: a reimported module's differs

    @property
    def name(self) -> str:
        return self.kind.__name__


_CHECKED_MAX = 4096  # selections kept between the schema stage and the invoker


@dataclass(frozen=True, slots=True)
class PayloadRoutes:
    """An agent's typed handlers, in the order declared."""

    routes: tuple[PayloadRoute, ...]
    # What the schema stage selected, for the invoker to take rather than validate the
    # same knowledge again: id -> (the knowledge, kept so that its id stays its own; the
    # route; the value). Bounded: a spore checked and then never run is forgotten.
    _checked: dict[int, tuple[Any, PayloadRoute, Any]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False)

    def select(self, knowledge: Any) -> tuple[PayloadRoute, Any]:
        """The first route (in the order declared) whose type accepts ``knowledge``, and
        the value made of it; raise :class:`SchemaViolation` (located: the field and what
        is wrong) when none does.

        pydantic ignores fields a type does not name, so a payload of a type with more
        fields fits one with fewer: list the larger first, or forbid extra fields
        (``model_config = ConfigDict(extra="forbid")``).
        """
        failures: list[tuple[int, PayloadRoute, SchemaViolation]] = []
        for route in self.routes:
            value, misfit = _validate(route.kind, knowledge, self.label)
            if misfit is None:
                return route, value
            failures.append((misfit[0], route, misfit[1]))
        if len(failures) == 1:
            raise failures[0][2]
        # Located at the type it fits best (fewest errors; the first of equals).
        _, route, best = min(failures, key=lambda failure: failure[0])
        raise SchemaViolation(best.field, f"{best.detail} (as {route.name}; it fits none of "
                                          f"{self.names()})", self.label)

    def refs(self) -> str:
        """The handlers' references, as ``handler_ref`` shows them."""
        return ", ".join(route.ref for route in self.routes)

    def names(self) -> str:
        return ", ".join(route.name for route in self.routes)

    @property
    def label(self) -> str:
        """How a schema violation names the schema: the types' qualified names."""
        return " | ".join(f"{r.kind.__module__}.{r.kind.__qualname__}" for r in self.routes)

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of what the agent accepts (``anyOf`` its types when several)."""
        kinds = tuple(route.kind for route in self.routes)
        union: Any = kinds[0] if len(kinds) == 1 else typing.Union[kinds]  # noqa: UP007
        schema: dict[str, Any] = _adapter(union).json_schema()
        return schema

    def xsd(self) -> str:
        """An XML Schema of the same types, for XML senders (see ``config.xsdgen``)."""
        return xsd_from_json_schema(self.json_schema())

    def schema_spec(self) -> SchemaSpec:
        """The schema the chain's schema stage applies: this :meth:`select`."""
        text = json.dumps(self.json_schema(), sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()
        return SchemaSpec(Path(self.label), TYPE_LANGUAGE, digest, self._check_dict)

    def _check_dict(self, knowledge: Any) -> None:
        route, value = self.select(knowledge)
        checked = self._checked
        if len(checked) >= _CHECKED_MAX:
            del checked[next(iter(checked))]  # the oldest
        checked[id(knowledge)] = (knowledge, route, value)

    def selected(self, knowledge: Any) -> tuple[PayloadRoute, Any]:
        """For the invoker: what the schema stage selected for ``knowledge`` (validated
        once), else :meth:`select` now."""
        found = self._checked.pop(id(knowledge), None)
        if found is not None and found[0] is knowledge:
            return found[1], found[2]
        return self.select(knowledge)


def _validate(kind: type, knowledge: Any, label: str,
              ) -> tuple[Any, tuple[int, SchemaViolation] | None]:
    """The value of ``kind`` made of ``knowledge``, or how many errors it has and the
    first, located (the others often follow from it)."""
    pydantic = _pydantic()
    try:
        return _adapter(kind).validate_python(knowledge), None
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False)
        error = errors[0]
        detail = str(error.get("msg", "is invalid"))
        if error.get("type") != "missing" and "input" in error:
            detail += f", got {_short(error['input'])}"
        return None, (len(errors), SchemaViolation(field_path(error.get("loc", ())), detail,
                                                   label))
    except RecursionError:
        return None, (1, SchemaViolation("knowledge", "is nested too deeply to check", label))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + "..."


def routes_for(refs: Sequence[str], handlers: Sequence[Callable[..., Any]], *,
               listed: bool = False) -> PayloadRoutes | str | None:
    """The routes of an agent's handlers (``listed``: declared as ``handlers:``), None
    when its one ``handler`` is plain, or why the declaration cannot work (a message for
    the loader)."""
    kinds = [payload_type(handler) for handler in handlers]
    if not listed and kinds[0] is None:
        return None
    classes = [ref for ref, handler in zip(refs, handlers, strict=True)
               if inspect.isclass(handler)]
    if listed and classes:
        return (f"{classes[0]!r} is a class; handlers: lists functions (a class agent is "
                f"one handler: with a typed handle method)")
    untyped = [ref for ref, kind in zip(refs, kinds, strict=True) if kind is None]
    if untyped:
        return (f"{', '.join(repr(r) for r in untyped)} takes no typed payload; each of "
                f"several handlers annotates its first parameter with a dataclass or a "
                f"pydantic model (def on_order(order: Order, ctx)), which picks it")
    repeated = [kind.__name__ for i, kind in enumerate(kinds)
                if kind is not None and kind in kinds[:i]]
    if repeated:
        return (f"two handlers take {repeated[0]}; a payload type picks one handler, so "
                f"give each its own type")
    if not has_modules("pydantic"):
        return str(missing_extra("a typed handler (a dataclass or model payload)",
                                 "pydantic", "typed"))
    return PayloadRoutes(tuple(
        PayloadRoute(kind, ref, handler)
        for ref, kind, handler in zip(refs, kinds, handlers, strict=True) if kind is not None))


def read_payloads(located: Located, handlers: Mapping[str, Callable[..., Any]],
                  listed: Mapping[str, Sequence[Callable[..., Any]]],
                  problems: list[Problem]) -> dict[str, PayloadRoutes]:
    """The loader's pass: each agent's typed handlers (its ``handlers`` list, or its one
    typed ``handler``); what cannot work is added to ``problems``."""
    found: dict[str, PayloadRoutes] = {}
    for name, agent in mapping(located.data.get("agents")).items():
        conf = mapping(agent)
        if name in listed:
            functions, key = list(listed[name]), "handlers"
            refs = [ref if isinstance(ref, str) and ":" in ref and ref != "python:callable"
                    else qualname(function)
                    for ref, function in zip(conf["handlers"], functions, strict=True)]
        elif name in handlers and "handler" in conf:
            functions, key = [handlers[name]], "handler"
            ref = conf["handler"]
            refs = [ref if isinstance(ref, str) and ref != "python:callable"
                    else qualname(handlers[name])]
        else:
            continue
        routes = routes_for(refs, functions, listed=key == "handlers")
        if routes is None:
            continue
        if isinstance(routes, str):
            problems.append(located.problem(("agents", name, key), routes))
            continue
        if "schema" in conf:
            problems.append(located.problem(("agents", name, "schema"), (
                f"the schema of what agent {name!r} accepts is generated from its payload "
                f"type ({routes.names()}); remove schema:")))
        if conf.get("cpu_bound") is True:
            problems.append(located.problem(("agents", name, "cpu_bound"), (
                "a typed handler cannot be cpu_bound (its worker process gets plain JSON); "
                "remove cpu_bound, or the payload annotation")))
        if "key" in conf:  # the keyed invoker makes per-key holders, not typed values
            problems.append(located.problem(("agents", name, "key"), (
                "a typed handler cannot be keyed (yet); remove key, or the payload "
                "annotation and read the payload with the type yourself")))
        found[name] = routes
    return found
