"""Scheduler plugins the fault tests use to act at a precise moment of a real job."""

from distributed.diagnostics.plugin import SchedulerPlugin


def mask_task_starts() -> SchedulerPlugin:
    """A plugin that logs an event ``mask-task-started`` on the scheduler, naming the worker (``worker``: address,
    ``name``) each time a model (``mask_``) task starts there; subscribe with ``client.subscribe_topic``.

    The class is made here, not at module level: a local class is pickled by value, so a scheduler started
    elsewhere (``dask scheduler``, a SLURM cluster's) can load it without this test module on its path."""

    class MaskTaskStarts(SchedulerPlugin):
        async def start(self, scheduler):
            self.scheduler = scheduler

        def transition(self, key, start, finish, *args, **kwargs):
            ts = self.scheduler.tasks.get(key)
            if finish == "processing" and "mask_" in str(key) and ts is not None and ts.processing_on is not None:
                self.scheduler.log_event(
                    "mask-task-started", {"worker": ts.processing_on.address, "name": ts.processing_on.name}
                )

    return MaskTaskStarts()
