"""Tools the model can call: the per-call tool runner, HTTP and Python tools, the pre-call hook."""
