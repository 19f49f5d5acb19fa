"""The RKLLM engine: ctypes bindings of librkllmrt.so and the code that loads it.

- ``abi_1_3``: the runtime 1.3.x header, mirrored one to one.
- ``abi_1_2``: the runtime 1.2.1-1.2.3 header, mirrored one to one.
- ``loader``: finds librkllmrt.so, detects its version and binds the
  matching ABI module.

Nothing is imported here, so importing the package never loads a library.
"""
