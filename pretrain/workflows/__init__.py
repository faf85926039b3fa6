"""Use cases, one module each: what a user runs (``pretrain run``, ``bench``, ``export``,
``finetune``) and the data preparation a run starts with. They compose the lower packages
(config, data, train, tracking, models, cluster) and nothing below imports them."""
