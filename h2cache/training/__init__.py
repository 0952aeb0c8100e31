"""The embedded model's trainer: ``python -m h2cache.training`` (see ``__main__.py`` and the model cards in ``assets/``)."""
