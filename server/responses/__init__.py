"""``/v1/responses``: the router, the request and its translation to a chat completion
(``request``), the reviewed completion back to a Response (``response``), and the stream of
events (``streaming``)."""
