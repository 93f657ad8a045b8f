"""Training: one loop (:mod:`cals.train.loop`) that runs a *task* (sync critic, A2L, CALS), with
shared config, atomic checkpoints and resume (:mod:`cals.train.checkpoint`)."""
