"""``/v1/chat/completions``: the router, the request and ``conscience`` models (the pipeline's
own terms, which the other endpoints translate to), and the streams."""
