"""The feedback loop (optional extra): logged experience -> daily retraining -> promotion on evidence.

One concept per module, each imported only where it is used (this package imports nothing):

It builds on :mod:`rl_lib.serving` (the decision log it learns from, the model registry it promotes
into), never the other way round.

- :mod:`~rl_lib.feedback.cli`: ``rl-lib registry list | show | register | promote | rollback`` and
  ``rl-lib feedback run | demo``;
- :mod:`~rl_lib.feedback.transitions`, :mod:`~rl_lib.feedback.store`, :mod:`~rl_lib.feedback.collect`:
  experience collection from the service's Redis streams into a Parquet store;
- :mod:`~rl_lib.feedback.retrain`, :mod:`~rl_lib.feedback.gate`: daily retraining and the promotion gate;
- :mod:`~rl_lib.feedback.settings`, :mod:`~rl_lib.feedback.tasks`: the loop's settings and the Celery app
  that runs it (``collect`` hourly, ``retrain`` daily); :mod:`~rl_lib.feedback.processes`: its worker and
  beat on one machine; :mod:`~rl_lib.feedback.status`: its figures on the service's dashboard;
  :mod:`~rl_lib.feedback.demo`: the loop end to end on a compressed clock.
"""
