"""The CPU engine: llama.cpp through llama-cpp-python (the ``cpu`` extra)."""
