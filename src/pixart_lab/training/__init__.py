"""Training: Lightning modules, callbacks, loggers and checkpoint I/O."""
