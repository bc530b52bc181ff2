"""The engine layer: the packaged weights (``weights``), the embedded llama.cpp engine
(``embedded``, run as ``child``) and ``open_engine``, the one way every layer above reaches an
OpenAI-compatible engine from settings. Above the core, below the server, trainer and evals."""
