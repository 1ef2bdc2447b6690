"""Active validation (DESIGN §8): the field's own diagnostics (DCGM, nccl/rccl-tests, perftest; RVS later) and a
built-in PyTorch probe, run safely on GPUs no pod holds, parsed into findings `probe.<name>`.

Entry point: agent.probes.validate.validate(settings, names=None, level="quick", force=False, facts=None).
"""
