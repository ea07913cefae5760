import asyncio, sys
from sporeflow.pipeline import Organism
W, N = sys.argv[1], int(sys.argv[2])
async def main():
    if W == "W1":
        async def count(spore, ctx): pass
        org = Organism.from_dict({"agents": {"a": {"handler": count}}})
        async with org.running():
            for i in range(N):
                await org.send("a", {"i": i})
            await org.idle()
    elif W == "W5":  # a reply chain: a -> b -> c -> ... emit
        async def hop(spore, ctx):
            return {"n": spore.knowledge["n"]}
        async def end(spore, ctx): pass
        agents = {f"h{i}": {"handler": hop, "emit": {"to": f"h{i+1}"}} for i in range(9)}
        agents["h9"] = {"handler": end}
        org = Organism.from_dict({"agents": agents})
        async with org.running():
            for i in range(N // 10):
                await org.send("h0", {"n": i})
            await org.idle()
    elif W == "W3":
        async def echo(spore, ctx): return {"ok": 1}
        org = Organism.from_dict({"agents": {"e": {"handler": echo}}})
        async with org.running():
            for i in range(N):
                await org.request("e", {"i": i}, timeout=5)
    elif W == "W2":
        async def count(spore, ctx): pass
        org = Organism.from_dict({"channels": {"news": {}}, "agents": {f"s{i}": {"handler": count, "subscribe": ["news"]} for i in range(50)}})
        async with org.running():
            for i in range(N // 50):
                await org.broadcast({"i": i}, channel="news")
            await org.idle()
async def w4():
    async def count(spore, ctx): pass
    org = Organism.from_dict({"agents": {f"a{i}": {"handler": count} for i in range(1000)}})
    async with org.running():
        for i in range(N):
            await org.send(f"a{i % 1000}", {"i": i})
        await org.idle()
asyncio.run(w4() if W == "W4" else main())
