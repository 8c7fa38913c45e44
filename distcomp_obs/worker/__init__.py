"""The worker: a fetch loop fills the prefetch buffer, slots run tasks, reports go back batched."""

from distcomp_obs.worker.lifecycle import Worker

__all__ = ["Worker"]
