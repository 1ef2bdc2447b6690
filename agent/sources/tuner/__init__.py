"""The node tuner: a declared profile of sysctls and host-daemon file limits, enforced or reported.

  values.py   parse and format sysctl values (single, multi-field like tcp_rmem, non-numeric)   pure
  policy.py   profile entries and the per-policy decision (minimum | exact | report)            pure
  profile.py  the config's profile section (and the shipped default) -> entries                 pure
  procfs.py   sysctl read/write under an injected procfs root                                   I/O
  prlimit.py  file limits of running processes through psutil (prlimit)                        I/O
  apply.py    one tuning pass: read, decide, write per mode, read back, count                   I/O
The collector (agent/sources/tuner/collector.py) runs apply.Tuner in read() and maps its reading to metrics and
findings (agent/sources/tuner/rules.py) in evaluate().
"""
