"""The callgate command line; the app is assembled in ``main.py``."""
