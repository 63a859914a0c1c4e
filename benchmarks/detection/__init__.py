"""The detection benchmark: planted shortcuts the audit must find, clean twins it must pass."""
