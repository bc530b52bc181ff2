"""``/v1/completions``: the router, the request model and its rules (``protocol``), the
translation of text choices to and from the pipeline's chat shape, and the stream."""
