"""
A publishing process for the crash test: puts numbered events with the spool
on, prints each number once its put() returned, and runs until killed.

    python child.py SPOOL ACCT_YAML COUNT [hold]

With ``hold``, once every event is put it waits until the lanes have
published them all, prints "published", and waits to be killed.
"""
import asyncio
import json
import os
import sys

import pop.hub


async def main(count: int):
    hub.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    contexts = await hub.evbus.acct.profiles(acct_file=sys.argv[2])
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=30)
    for n in range(count):
        await hub.evbus.broker.put(body=n)
        print(n, flush=True)
    print("all-put", flush=True)
    if sys.argv[4:] == ["hold"]:
        # (the lanes' own counts: stats() would ask the spool, which accounts for what was settled)
        async with asyncio.timeout(120):  # (the test reads "published" or the end)
            while sum(lane.published for lane in hub.evbus.route.all_lanes()) < count:
                await asyncio.sleep(0.01)
        print("published", flush=True)
        await asyncio.sleep(3600)
    await hub.evbus.init.stop(timeout=120)
    await listener
    print("stopped", json.dumps(hub.evbus.broker.stats()["redelivered"]), flush=True)


if __name__ == "__main__":
    os.environ["EVBUS_SPOOL"] = sys.argv[1]
    sys.argv, args = [sys.argv[0]], sys.argv
    hub = pop.hub.Hub()
    hub.pop.sub.add(dyne_name="evbus")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    sys.argv = args
    asyncio.run(main(int(args[3])))
