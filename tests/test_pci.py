"""The one PCI address normaliser every source joins on (GPU readings, GPU events, pod attribution)."""
import pytest

from agent.base import pci


@pytest.mark.parametrize("spelling", [
    "0000:3b:00.0",        # amdgpu, amd-smi
    "00000000:3B:00.0",    # NVML, nvidia-smi
    "PCI:0000:3b:00",      # NVRM Xid lines (no function)
    "0000:3b:00",          # old NVIDIA drivers
    "3b:00.0",             # no domain
    " 0000:3B:00.0\n",     # as read from a file
])
def test_every_vendor_spelling_is_one_address(spelling):
    assert pci.normalize(spelling) == "0000:3b:00.0"


@pytest.mark.parametrize("junk", ["", None, "N/A", "xx:0c:00.0", "0000:3b:00.9", "1" * 400 + ":3b:00.0",
                                  "0000:٣b:00.0", "0000:3b:00.0.0", "²: ACTIVE"])
def test_what_is_not_an_address_joins_with_nothing(junk):
    assert pci.normalize(junk) is None


def test_a_label_keeps_a_malformed_address_as_printed_and_bounded():
    """A GPU whose SMI prints an odd address keeps its reading (and a label a person can search for); the
    address then matches no event and no pod, rather than matching by accident."""
    assert pci.label("N/A") == "n/a"
    assert pci.normalize(pci.label("N/A")) is None
    assert len(pci.label("z" * 5000)) == pci.LABEL_MAX
    assert pci.label("00000000:0C:00.0") == pci.normalize("PCI:0000:0c:00") == "0000:0c:00.0"
