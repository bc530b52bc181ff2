"""Test support, shipped so that the benchmarks run from the wheel: never on a serving path.

``scripted``: an OpenAI-compatible engine on a real loopback port whose answers a test sets (the
verdict, the generation, faults, latency, a context limit), so that the proxy is tested against
a real server; ``models``: a tokenizer and random Llama-shaped models built from a config, and
random preference pairs, so that the trainer is tested without a download.
"""
