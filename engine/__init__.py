"""The engine layer: the packaged weights (``weights``), the embedded llama.cpp engine
(``embedded``, run as ``child``), ``connect.open_engine``, the one way every layer above reaches
an OpenAI-compatible engine from settings, and ``publish``, which tells the serving engine (and
the proxy) which adapter to serve. Above the core, below the server, trainer and evals."""
