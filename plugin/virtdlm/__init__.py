"""virtdlm: a libvirt lock manager on the Linux Distributed Lock Manager.

The daemon ``virtdlmd`` holds every DLM lock of its host on behalf of QEMU processes;
libvirt reaches it through the C driver ``dlm.so``. See docs/protocol.md for the wire
protocol and README.md for configuration.
"""

__version__ = "0.1.0"
