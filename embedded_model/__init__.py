"""What builds the embedded model in ``assets/tiny-flux-scenes``: the scene grammar, renderer and parser
(:mod:`embedded_model.scenes`) and the resumable trainer (``python -m embedded_model.training``).

It lives beside ``assets/``, outside the ``h2cache`` library: a user of H2-Cache needs neither to apply the
cache, and ``pip install .`` installs only the library. Run it from a checkout.
"""
