"""dl-server's guest: Darknet's networks, formats and commands in Python over `_dlk` kernels."""
