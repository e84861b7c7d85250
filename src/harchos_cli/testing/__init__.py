"""Test doubles for parts harchos drives but that cannot run on a CPU-only machine.

`harchos_cli.testing.vllm_double` is a stand-in for `vllm serve`: an OpenAI-compatible HTTP server
with vLLM's health, metrics and shutdown behaviour and fake, deterministic text. It is a test
double, not vLLM, and is named as such wherever it appears.
"""
