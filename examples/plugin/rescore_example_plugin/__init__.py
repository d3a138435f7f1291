"""A worked rescore plugin, one component per module, each one decorated object plus an entry point
(see ``pyproject.toml``):

- ``family.py``: the task family ``arithmetic`` (``a + b`` questions made from its params, no data files);
- ``backend.py``: the backend ``calculator`` (answers those questions without a model);
- ``loader.py``: the checkpoint loader ``random_llama`` (a random Llama for the ``hf`` backend);
- ``metrics.py``: the metric ``shows_work``.

Nothing is imported here: rescore imports each module when a config names its component.
"""
