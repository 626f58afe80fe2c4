"""The training container: ``train.py`` is its entry point (the image's ``train`` command)."""
