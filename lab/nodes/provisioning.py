"""What turns the machines into cluster nodes: this tree copied in, lab/provision/node.sh
run phase by phase (base, storage, plugin), and a mark of what they were provisioned from.

The mark is a digest of every file of the tree and the resolved settings: equal digests
mean provisioning again would change nothing, so make lab skips it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tarfile
from collections.abc import Iterable

from ..command import check
from ..host import fencing
from ..settings import LAB_DIR, REPO, VAGRANT_SETTINGS
from . import NODE_TREE
from .node import Node

PROVISION_TIMEOUT_S = 600.0
GIT_TIMEOUT_S = 30.0
MARK_TIMEOUT_S = 30.0
AUTHKEY_BYTES = 256
SHOWN_LINES = 3  # of each node's provisioning output
# node.sh says so when a node must be power-cycled for a change to take (dlm.conf)
RESTART_NEEDED = "virtdlm-lab: restart-needed:"
PROVISIONED_MARK = "/opt/virtdlm-provisioned"  # on each node: the digest it was built from
NODE_SH = f"{NODE_TREE}/lab/provision/node.sh"
SECRETS_DIR = os.path.join(LAB_DIR, "secrets")
TARBALL = os.path.join(LAB_DIR, "tree.tar.gz")
SETTINGS_IN_TREE = ".lab/vagrant-settings.json"
INSTALL_TREE = (
    f"rm -rf {NODE_TREE}.new && mkdir -p {NODE_TREE}.new {NODE_TREE}-secrets "
    f"&& tar -xzf /tmp/virtdlm-tree.tar.gz -C {NODE_TREE}.new "
    f"&& install -m 0400 /tmp/virtdlm-authkey {NODE_TREE}-secrets/authkey "
    f"&& install -m 0400 /tmp/virtdlm-fence-key {NODE_TREE}-secrets/fence_xvm.key "
    f"&& rm -rf {NODE_TREE} && mv {NODE_TREE}.new {NODE_TREE} "
    "&& rm -f /tmp/virtdlm-tree.tar.gz /tmp/virtdlm-authkey /tmp/virtdlm-fence-key"
)


def tree_files(repo: str = REPO) -> list[str]:
    """The tree as it is now: tracked and new files, not ignored ones."""
    out = check(["git", "-C", repo, "ls-files", "-co", "--exclude-standard"], GIT_TIMEOUT_S)
    return sorted(f for f in out.stdout.split("\n") if f and os.path.isfile(os.path.join(repo, f)))


def tree_digest(repo: str = REPO) -> str:
    """Every file's path and content, and the resolved settings."""
    h = hashlib.sha256()
    for rel in [*tree_files(repo), os.path.relpath(VAGRANT_SETTINGS, repo)]:
        h.update(rel.encode() + b"\0")
        with open(os.path.join(repo, rel), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def tarball(repo: str = REPO, path: str = TARBALL) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for rel in tree_files(repo):
            tar.add(os.path.join(repo, rel), arcname=rel)
        tar.add(VAGRANT_SETTINGS, arcname=SETTINGS_IN_TREE)
    return path


def authkey(secrets_dir: str = SECRETS_DIR) -> str:
    """The cluster's corosync authkey, made once per checkout."""
    path = os.path.join(secrets_dir, "authkey")
    if not os.path.exists(path):
        os.makedirs(secrets_dir, mode=0o700, exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o400), "wb") as f:
            f.write(secrets.token_bytes(AUTHKEY_BYTES))
    return path


def upload(nodes: Iterable[Node]) -> None:
    """Copy this tree into /opt/virtdlm on each node, and the secrets (corosync's authkey,
    the fence key) into /opt/virtdlm-secrets."""
    tree, key, fence = tarball(), authkey(), fencing.key_file()
    for node in nodes:
        node.put(tree, "/tmp/virtdlm-tree.tar.gz")
        node.put(key, "/tmp/virtdlm-authkey")
        node.put(fence, "/tmp/virtdlm-fence-key")
        node.check(INSTALL_TREE)


def provision(nodes: Iterable[Node], phase: str, suffix: str = "") -> list[str]:
    """Run one phase of node.sh on each node, in turn; the last lines each printed, and
    every restart-needed line (restart_needed() reads them)."""
    shown = []
    for node in nodes:
        out = node.check(
            f"{NODE_SH} {phase} {node.name} {suffix}".rstrip(), timeout_s=PROVISION_TIMEOUT_S
        )
        lines = out.stdout.strip().splitlines()
        shown += [f"{node.name}: {x}" for x in lines if RESTART_NEEDED in x]
        shown += [x for x in lines[-SHOWN_LINES:] if RESTART_NEEDED not in x]
    return shown


def restart_needed(shown: Iterable[str]) -> list[str]:
    """The nodes whose provisioning asked for a power cycle."""
    return sorted({x.split(":", 1)[0] for x in shown if RESTART_NEEDED in x and ": " in x})


def provisioned_from(node: Node) -> str:
    """The digest the node was provisioned from ("" if never)."""
    return node.run(f"cat {PROVISIONED_MARK} 2>/dev/null", MARK_TIMEOUT_S).stdout.strip()


def mark(node: Node, digest: str) -> None:
    node.check(f"echo {digest} > {PROVISIONED_MARK}", MARK_TIMEOUT_S)
