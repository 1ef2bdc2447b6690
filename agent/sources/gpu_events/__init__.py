"""GPU events: NVIDIA XIDs and GPU resets, AMD RAS kernel messages and CPER records.

Pure parts only (no I/O beyond what a caller hands in): kernel-log parsing (kmsg.py), the XID catalogue
(xid.py), `amd-smi ras --cper` parsing (cper.py), the persisted cursor and sticky state (state.py) and the
rules that turn events into sticky or one-shot findings (rules.py). The NVML event thread lives in
nvml_events.py; the collector that ties the sources together is agent/sources/gpu_events/collector.py.
"""
