"""The conscience of the online run: the frozen base model, reached the way the proxy reaches it.

Reviews go through the project's one review path (``Conscience.review_and_rewrite`` over an
``EngineClient``) to an OpenAI-compatible endpoint serving the BASE model: a given URL (vLLM's
base model name, say) or, without one, the embedded llama.cpp engine on a GGUF of the same
weights. Every judgement is written to the store like the proxy's, so ``conscience pairs export``
and the admin API read them; the pairs this run learns from are marked consumed by it, so the
nightly job never trains the served model on the experiment's samples.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

from conscience.errors import ConfigError, EngineError, VerdictError
from conscience.judgement import Judgement

if TYPE_CHECKING:
    from conscience.review import Conscience
    from conscience.settings import Settings
    from conscience.store import JudgementStore

__all__ = ["JUDGE_FAILURES", "OnlineJudge", "StepReview"]

# What counts as the judge failing (transport, status, timeout, a reply that is not a label):
# the step goes on without that sample. Anything else (a store error, a bug) stops the run.
JUDGE_FAILURES: tuple[type[Exception], ...] = (EngineError, VerdictError)


@dataclass
class StepReview:
    """One step's reviews: the judgements that came back, and the reviews that failed."""

    judgements: list[Judgement] = field(default_factory=list)
    failures: int = 0
    errors: list[str] = field(default_factory=list)  # each failure's message, for the log


class OnlineJudge:
    """Open with :meth:`open` inside the run's event loop; close with :meth:`close`."""

    def __init__(
        self,
        conscience: Conscience,
        store: JudgementStore,
        *,
        framework: str | None,
        model_name: str,
        endpoint: str,
        resources: AsyncExitStack | None = None,
    ) -> None:
        self.conscience = conscience
        self.store = store
        self.framework = framework
        self.model_name = model_name  # the judgements' ``model``: "online:<run_id>"
        self.endpoint = endpoint  # where the judge answers, for the report
        self._resources = resources or AsyncExitStack()  # the store, then the engine

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        gguf: str | Path | None,
        framework: str | None,
        model_name: str,
        slots: int = 1,
    ) -> Self:
        """Start (or reach) the judge, build the conscience, open the store.

        ``settings.upstream_url`` is the judge's endpoint and ``settings.judge`` its model name;
        with no URL, llama.cpp serves ``gguf`` on loopback under that name, with ``slots``
        parallel sequences: a step's reviews and rewrites are sent together, and on one slot
        the last would wait behind every other rewrite (minutes on CPU) and time out.
        """
        from conscience.engine.connect import open_engine
        from conscience.review import conscience_from_settings
        from conscience.store import open_store

        if settings.upstream_url is None and gguf is None:
            raise ConfigError("the online run needs a judge: --judge-url or --judge-gguf")
        stack = AsyncExitStack()
        try:
            engine = await stack.enter_async_context(
                open_engine(settings, gguf=gguf, alias=settings.judge, parallel=slots)
            )
            conscience = conscience_from_settings(settings, engine.client, engine.facts)
            conscience.framework(framework)  # an unknown framework fails now, not at step 1
            store = open_store(settings.store_url)
            await store.open()
            stack.push_async_callback(store.close)
        except BaseException:
            await stack.aclose()
            raise
        return cls(
            conscience,
            store,
            framework=framework,
            model_name=model_name,
            endpoint=engine.endpoint,
            resources=stack,
        )

    async def close(self) -> None:
        """Close the store, then the engine client, then stop the engine this run started."""
        await self._resources.aclose()

    async def review(
        self, prompts: list[list[dict[str, str]]], answers: list[str], step: int
    ) -> StepReview:
        """Review (and rewrite when unethical) each answer; store every judgement that came back.

        The reviews run concurrently: an engine that batches (vLLM) serves them together.
        """
        results = await asyncio.gather(
            *(
                self.conscience.review_and_rewrite(
                    messages,
                    answer,
                    self.framework,
                    model=self.model_name,
                    request_id=f"step-{step}",
                )
                for messages, answer in zip(prompts, answers, strict=True)
            ),
            return_exceptions=True,
        )
        review = StepReview()
        for result in results:
            if isinstance(result, JUDGE_FAILURES):
                review.failures += 1
                review.errors.append(f"{type(result).__name__}: {result}")
            elif isinstance(result, BaseException):
                raise result
            else:
                review.judgements.append(result)
        # One transaction per step: committed before the step trains on the pairs.
        await self.store.add_many(review.judgements)
        return review

    async def consumed(self, judgement_ids: list[str], run_id: str) -> int:
        """Mark the pairs this run trained on as consumed by it: the nightly job skips them."""
        return await self.store.mark_consumed(judgement_ids, run_id) if judgement_ids else 0
