"""The ``pretrain`` command: a thin layer over functions that work from Python."""
