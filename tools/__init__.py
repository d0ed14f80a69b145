"""The ``irtool`` command line and benchmark scripts."""
