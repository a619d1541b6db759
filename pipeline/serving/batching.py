"""Dynamic batching: requests that arrive while the runtime is busy (or within a short delay of one
another) are merged into one runtime call and the result split back, as Triton's dynamic batcher
does. One runtime call at a time, on one thread: onnxruntime already spreads a call over every core,
and LiteRT's interpreter must not be called from two threads at once.

The queue is bounded in rows (examples): past it a request is refused (503) at once rather than
waiting behind work the server cannot finish in time."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.serving.inputs import BadRequest


@dataclass
class Pending:
    inputs: np.ndarray
    future: asyncio.Future


class Batcher:
    """`await batcher.infer(x)` gives `run(x)`; concurrent calls share runtime calls of at most
    `max_batch_size` rows (a larger request runs alone). `max_batch_size=1` turns merging off:
    every request is its own call, in arrival order."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_delay: float,
        max_queue_rows: int,
        observe: Callable[[int, int, float], None] = lambda rows, requests, seconds: None,
    ):
        self.run, self.max_batch_size, self.max_delay = run, max_batch_size, max_delay
        self.max_queue_rows = max_queue_rows
        self.observe = observe
        self.pending: deque[Pending] = deque()
        self.queued_rows = 0
        self.arrived = asyncio.Event()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.loop())

    async def stop(self) -> None:
        """After the server has answered every request in flight (uvicorn drains them first)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for item in self.pending:
            if not item.future.done():
                item.future.set_exception(BadRequest("the server is shutting down", 503))
        self.executor.shutdown(wait=True)

    async def infer(self, inputs: np.ndarray) -> np.ndarray:
        rows = len(inputs)
        if self.queued_rows + rows > self.max_queue_rows and self.queued_rows:
            raise BadRequest(f"the server's queue is full ({self.queued_rows} examples waiting); retry later", 503)
        future = asyncio.get_running_loop().create_future()
        self.pending.append(Pending(inputs, future))
        self.queued_rows += rows
        self.arrived.set()
        return await future

    def take(self) -> list[Pending]:
        """The next batch: the oldest request, then the following ones while they fit."""
        batch = [self.pending.popleft()]
        rows = len(batch[0].inputs)
        while self.pending and rows + len(self.pending[0].inputs) <= self.max_batch_size:
            rows += len(self.pending[0].inputs)
            batch.append(self.pending.popleft())
        self.queued_rows -= rows
        return batch

    async def loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self.arrived.clear()
                await self.arrived.wait()
            # Wait a little for company only when merging is on and the batch is not full already;
            # under load the queue fills while the runtime is busy and no wait is needed.
            if self.max_batch_size > 1 and self.max_delay > 0 and self.queued_rows < self.max_batch_size:
                deadline = loop.time() + self.max_delay
                while self.queued_rows < self.max_batch_size and (left := deadline - loop.time()) > 0:
                    self.arrived.clear()
                    try:
                        await asyncio.wait_for(self.arrived.wait(), left)
                    except TimeoutError:
                        break
            batch = [item for item in self.take() if not item.future.cancelled()]
            if not batch:
                continue
            x = batch[0].inputs if len(batch) == 1 else np.concatenate([item.inputs for item in batch])
            started = time.perf_counter()
            try:
                probabilities = await loop.run_in_executor(self.executor, self.run, x)
            except Exception as exc:  # the runtime's own error: every request of the batch gets it
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.observe(len(x), len(batch), time.perf_counter() - started)
            offset = 0
            for item in batch:
                rows = len(item.inputs)
                if not item.future.done():
                    item.future.set_result(probabilities[offset : offset + rows])
                offset += rows
