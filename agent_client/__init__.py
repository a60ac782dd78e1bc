"""RedFlag agent: a standalone client that never imports Django.

Runs on the system Python 3.9+ and depends only on requests, psutil and
cryptography.
"""

__version__ = "0.1.0"
