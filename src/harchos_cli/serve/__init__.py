"""Serving: the carbon-aware router in front of `vllm serve` replicas (`harchos serve`).

`routing` holds the replica table and the pure ranking policy; `router` the HTTP proxy that
applies it (it imports aiohttp and prometheus-client, so nothing imports it at CLI start-up).
"""
