"""The embedded model's trainer: ``python -m embedded_model.training`` (see ``__main__.py`` and the model cards in ``assets/``)."""
