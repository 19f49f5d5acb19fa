"""Inference engines: the native runtimes rkstream can drive, one subpackage each."""
