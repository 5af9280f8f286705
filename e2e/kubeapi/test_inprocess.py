"""The emulator used in-process, where kmock's reaction DSL can override any request."""

from __future__ import annotations

import asyncio

from kubeapi import KubeApiEmulator, make_server


def test_kmock_reactions_take_precedence_over_the_emulated_api():
    async def scenario() -> list:
        emulator = KubeApiEmulator()
        seen = []
        async with emulator, make_server(emulator) as server:
            emulator['get /api/v1/namespaces/default/configmaps/held'] << 503
            for name in ("held", "other"):
                async with server.client.get(f"/api/v1/namespaces/default/configmaps/{name}") as r:
                    seen.append((name, r.status, (await r.json())["reason"] if r.status == 404 else None))
            created = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}}
            async with server.client.post("/api/v1/namespaces/default/configmaps", json=created) as r:
                seen.append(("create", r.status, None))
        return seen

    assert asyncio.run(scenario()) == [("held", 503, None), ("other", 404, "NotFound"), ("create", 201, None)]
