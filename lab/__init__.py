"""The lab kit: the Python API the tests use to drive hosts, daemons, libvirt and VMs.

Its parts, named after what they touch (and the make target that uses them):

    settings.py, command.py, wait.py   shared basics: lab settings, host commands with
                                       deadlines (one Result record), polling, LabError
    host/      the host under the two-node lab (make lab): its libvirtd, networks and
               volumes, the accelerator probe, the box
    nodes/     the lab's nodes (make lab, make lab-status): vagrant, ssh to a node,
               health checks
    box/, provision/   shell recipes: the offline box build, and what turns it into a node
    virt/      libvirt with deadlines (both tiers): domain XML, Hypervisor, refusal layers
    suite/     the two-node suite's machinery (make lab-test): steps, audits, reports
    cluster.py the CLI of make lab / lab-status / lab-destroy
    local.py   the single-host lab of make check / make local-lab
"""
