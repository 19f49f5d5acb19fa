"""Chat formats: render a conversation with the model's own chat template.

template.py compiles a Hugging Face style Jinja2 chat template in the same
sandbox transformers uses; presets.py holds the families rkstream has built in
(templates/*.jinja) and recognises them from a model's file name; format.py is
what engines use: messages, instructions and tools in, the prompt text out.

Neutral like rkstream.core: it imports nothing from engines, server or config.
"""
