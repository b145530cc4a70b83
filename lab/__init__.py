"""The lab kit: the Python API the tests use to drive hosts, daemons, libvirt and VMs."""
