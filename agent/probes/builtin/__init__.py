"""The built-in compute probe: a child program (`python -m agent.probes.builtin`, child.py) that needs only
PyTorch (`pip install vigil[probe]`), and its adapter in the agent (parent.py)."""
