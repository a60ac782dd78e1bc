"""A private Flatpak repository and installation built by the tests (see sandbox.py)."""
