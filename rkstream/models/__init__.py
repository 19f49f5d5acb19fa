"""Several models by name: the table from the configuration, the pool that
loads and unloads them.

Below the server, above the engines, the scheduler and vision.
"""
