"""The test suite (a regular package: an installed distribution that ships a top-level
``tests`` package - baycomp 1.0.3 does - must not shadow it)."""
