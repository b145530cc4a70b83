"""The host under the two-node lab (make lab, make lab-destroy).

access.py    who runs the lab, and what a user who is not root needs
libvirtd.py  the host's libvirtd: does it answer (libvirt's own words if not), start it
objects.py   the lab's domains, networks and volumes on qemu:///system (libvirt-python)
box.py       build the box (lab/box/build-box), prune older boxes and their volumes
accel.py     is KVM usable here: boot a kernel and see
fencing.py   fence_virtd on the management bridge, so the nodes can fence each other
"""
