"""Scheduler plugins the fault tests use to act at a precise moment of a real job."""

from distributed.diagnostics.plugin import SchedulerPlugin


class MaskTaskStarts(SchedulerPlugin):
    """On the scheduler: an event ``mask-task-started`` naming the worker (``worker``: address, ``name``) each
    time a model (``mask_``) task starts there. Subscribe with ``client.subscribe_topic``."""

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        ts = self.scheduler.tasks.get(key)
        if finish == "processing" and "mask_" in str(key) and ts is not None and ts.processing_on is not None:
            self.scheduler.log_event("mask-task-started", {"worker": ts.processing_on.address,
                                                           "name": ts.processing_on.name})
