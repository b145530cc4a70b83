"""The lab kit: the Python API the tests use to drive hosts, daemons, libvirt and VMs.

Its parts, named after what they touch (and the make target that uses them):

    settings.py, command.py, wait.py   shared basics: lab settings, host commands with
                                       deadlines (one Result record), polling and bounded
                                       calls, LabError
    host/      the host under the two-node lab (make lab): who may run it, its libvirtd,
               the lab's domains/networks/volumes (libvirt-python), the box, the
               accelerator probe, fence_virtd (fencing)
    nodes/     the lab's nodes (make lab, make lab-status): vagrant (python-vagrant), the
               machines, a node over SSH (testinfra), provisioning, health checks
    box/, provision/   shell recipes: the offline box build, and what turns it into a node
    virt/      libvirt with deadlines (both tiers): domain XML, Hypervisor, refusal layers
    suite/     the two-node suite's machinery (make lab-test): the thesis matrix, steps,
               audits (libvirt state, node journals), partitions (nftables), reports,
               the program run on a node
    guest/     the writer guest's host side: its boot disk, and reading what it wrote
    cluster.py the CLI of make lab / lab-status / lab-destroy
    local.py   the single-host lab of make check / make local-lab
"""
