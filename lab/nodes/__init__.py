"""The two-node lab's nodes (make lab, make lab-status).

vagrant.py       python-vagrant's verbs with deadlines and raising errors
vagrant_verb.py  the child program that runs one verb (killed at its deadline)
machines.py      the nodes as vagrant machines: up, states, a Node each, journals
node.py          one node: a testinfra host over paramiko, every command with a deadline
provisioning.py  this tree copied in, node.sh run phase by phase, the provisioned mark
health.py        the health table: testinfra assertions on each node, a smoke migration
"""

NODE_TREE = "/opt/virtdlm"  # where provisioning puts this tree inside each node
# The writer guest's shared boot disk in each node (lab/provision/node.sh puts it there).
WRITER_BOOT_IMAGE = "/var/lib/libvirt/images/virtdlm-writer-boot.img"
