"""The owner's tools: the ``nanoclaw`` command and what it runs (doctor, status, image
builds, the spool admin, run-all), and the one root piece, ``timer_sync``."""
