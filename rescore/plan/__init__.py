"""Planning: checkpoint matrices (:mod:`.matrix`), what of them the store lacks (:mod:`.backfill`), the executors
that run it (:mod:`.executors`), runs rebuilt from existing results files (:mod:`.from_results`), and the
pass/fail policy a matrix may carry (:mod:`.policy`)."""
