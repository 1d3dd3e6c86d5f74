"""One shared pipeline, several threads, each asking for something else: every image must be the image the same
call gives when made alone.

The calls differ in what a pipeline could wrongly keep between calls (guidance, rescale, clip skip, step count,
size, negative prompt, strength, SDXL's denoising cut-offs) and in their noise (seeds, with a scheduler that draws
noise at every step). A callback yields the thread after each step so that the calls interleave step by step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

TOLERANCE = 1e-6


def yield_each_step(pipe, step: int, timestep, tensors: dict) -> dict:
    time.sleep(0.001)  # hand the core to another thread mid-call, between two UNet runs
    return {}


def run_alone(pipe, job: dict[str, Any]) -> np.ndarray:
    return np.asarray(pipe(**job, output_type="np", callback_on_step_end=yield_each_step).images)


def assert_concurrent_calls_match_calls_alone(pipe, jobs: Sequence[dict[str, Any]], rounds: int = 3) -> None:
    """Run every job alone, then all of them at once (one thread each, ``rounds`` times, started together) on the
    same pipeline; each result must equal its job's result alone within 1e-6."""
    assert len(jobs) >= 3 and len({repr(sorted(job.items())) for job in jobs}) == len(jobs), "jobs must differ"
    alone = [run_alone(pipe, job) for job in jobs]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def work(index: int) -> None:
        try:
            for round_ in range(rounds):
                start.wait()
                results[index, round_] = run_alone(pipe, jobs[index])
        except BaseException as error:  # reported by the main thread: a failing thread must fail the test
            errors.append(error)
            start.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, f"a concurrent call raised: {errors[0]!r}"
    for (index, round_), image in sorted(results.items()):
        expected = alone[index]
        assert image.shape == expected.shape, f"job {index}, round {round_}: shape {image.shape} != {expected.shape}"
        diff = float(np.abs(image - expected).max())
        assert diff <= TOLERANCE, f"job {index}, round {round_}: max |diff| {diff:.3g} from the same call made alone"
    assert len(results) == len(jobs) * rounds
