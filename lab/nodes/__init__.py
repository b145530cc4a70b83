"""The lab's nodes (two by default, `nodes:` in lab/settings.yaml) (make lab, make lab-status).

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

# The lab's node names, in order: a lab of N nodes is the first N (lab/settings.yaml `nodes`).
NODE_NAMES = ("node-a", "node-b", "node-c", "node-d", "node-e")


def node_id(name: str) -> int:
    """A node's corosync node id (node-a is 1)."""
    return NODE_NAMES.index(name) + 1
