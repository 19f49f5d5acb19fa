"""``rkllm.isolation = "process"``: each instance's handle in a worker process.

- :mod:`.wire`: the frames on the token pipe and the control socket;
- :mod:`.child`: what runs in the worker (``python -m rkstream.engines.rkllm.worker``);
- :mod:`.process`: the server's side of one worker process;
- :mod:`.instance`: the instance that runs jobs on it and restarts it.
"""
