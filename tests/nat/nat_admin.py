"""Run in the lab's "internet" namespace: ``python nat_admin.py URL ADMIN_TOKEN N``. Sets an allow-all policy,
creates N one-off setup keys and prints ``{"keys": [...], "signing_key": B64}`` as one JSON line.
``python nat_admin.py URL ADMIN_TOKEN peers`` prints the API's peer listing as one JSON line."""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

POLICY = b"acls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n"


async def main(url: str, token: str, count: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.put(
            url + "/api/v1/policy", data=POLICY, headers={**headers, "Content-Type": "application/yaml"}
        ) as answer:
            assert answer.status == 200, await answer.text()
        keys = []
        for index in range(count):
            async with http.post(url + "/api/v1/setup-keys", json={"name": f"k{index}"}, headers=headers) as answer:
                assert answer.status == 201, await answer.text()
                keys.append((await answer.json())["key"])
        async with http.get(url + "/api/v1/info") as answer:
            info = await answer.json()
    sys.stdout.write(json.dumps({"keys": keys, "signing_key": info["signing_key"]}) + "\n")


async def peers(url: str, token: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/api/v1/peers", headers={"Authorization": f"Bearer {token}"}) as answer:
            assert answer.status == 200, await answer.text()
            sys.stdout.write(json.dumps(await answer.json()) + "\n")


if __name__ == "__main__":
    if sys.argv[3] == "peers":
        asyncio.run(peers(sys.argv[1], sys.argv[2]))
    else:
        asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
