"""distcomp-obs: a Redis-backed distributed task platform, measured from the first line."""

from distcomp_obs.task import Task, TaskType

__version__ = "0.1.0"

__all__ = ["Task", "TaskType", "__version__"]
