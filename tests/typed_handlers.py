"""Handlers of tests/test_typed.py: typed payloads (dataclasses and pydantic models)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel


@dataclass
class Item:
    sku: str
    count: int


@dataclass
class Order:
    customer: str
    items: list[Item]
    note: str | None = None


class Refund(BaseModel):
    order_id: int
    amount: float
    reason: str


class Receipt(BaseModel):
    customer: str
    total: int


@dataclass
class Untyped:  # a dataclass that no handler takes
    tags: list[str] = field(default_factory=list)


SEEN: list[Any] = []


async def take_order(order: Order, ctx: Any) -> Receipt:
    SEEN.append(order)
    return Receipt(customer=order.customer, total=sum(item.count for item in order.items))


async def on_refund(refund: Refund, ctx: Any) -> dict[str, Any]:
    SEEN.append(refund)
    return {"refunded": refund.amount, "spore": ctx.spore.id is not None}


def count_items(order: Order, ctx: Any) -> list[Item]:  # sync: runs on the agent's threads
    SEEN.append(order)
    return order.items


async def stream_items(order: Order, ctx: Any) -> Any:
    for item in order.items:
        yield item


class Clerk:
    """A class agent with a typed handle method."""

    def __init__(self) -> None:
        self.orders = 0

    async def handle(self, order: Order, ctx: Any) -> Receipt:
        self.orders += 1
        SEEN.append(order)
        return Receipt(customer=order.customer, total=self.orders)


async def plain(spore: Any, ctx: Any) -> None:  # untyped: gets the spore, as ever
    SEEN.append(spore)
