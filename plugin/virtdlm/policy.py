"""Which locks a request needs: the lease policy and the mapping of disks to resources.

A readonly disk needs no lock, a shareable one PR, any other EX; a lease is always EX.
A disk's resource name is a digest of its identity (virtdlm.identity), so the same image
reached through another path maps to the same lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from .backends.base import Mode
from .config import Config
from .deadline import Deadline
from .errors import PolicyError
from .identity import disk_identities, disk_resource_name, lease_resource_name
from .locker import Want
from .owners import HeldLock
from .protocol import DiskSpec, LeaseSpec, ResourceSpec

IDENTITY_TIMEOUT_S = 5.0  # a part of the request's deadline (virtdlm.deadline)


def lease_label(lease: LeaseSpec) -> str:
    """How a lease is named to people: lockspace/key, or the key alone."""
    return f"{lease.lockspace}/{lease.key}" if lease.lockspace else lease.key


def check_policy(config: Config, resources: tuple[ResourceSpec, ...]) -> None:
    """Refuse read/write exclusive disks without a <lease> when the config demands one."""
    has_lease = any(isinstance(r, LeaseSpec) for r in resources)
    rw_disks = [r for r in resources if isinstance(r, DiskSpec) and not r.readonly and not r.shared]
    if rw_disks and not has_lease and not config.auto_disk_leases and config.lease_required:
        raise PolicyError(
            f"disk {rw_disks[0].path} is read/write and exclusive but the domain has no "
            "<lease>, and require_lease_for_disks = 1 (qemu-dlm.conf)"
        )


async def wants(
    config: Config, resources: tuple[ResourceSpec, ...], deadline: Deadline
) -> list[Want]:
    """Map resources to the locks they need (readonly disks need none)."""
    found: list[Want] = []
    disks = [
        r
        for r in resources
        if isinstance(r, DiskSpec) and not r.readonly and config.auto_disk_leases
    ]
    idents: list[str] = []
    if disks:
        loop = asyncio.get_running_loop()
        paths = [d.path for d in disks]
        limit_s = min(IDENTITY_TIMEOUT_S, deadline.left())
        try:
            async with asyncio.timeout(limit_s):
                idents = await loop.run_in_executor(None, disk_identities, paths)
        except TimeoutError as err:
            raise deadline.expired(
                f"resolving the identity of disks {', '.join(paths)} did not finish in "
                f"{limit_s:.3g} s (hung storage?)"
            ) from err
    for d, ident in zip(disks, idents, strict=True):
        mode = Mode.PR if d.shared else Mode.EX
        found.append(Want(disk_resource_name(ident), "disk", d.path, mode))
    for r in resources:
        if isinstance(r, LeaseSpec):
            name = lease_resource_name(r.lockspace, r.key)
            found.append(Want(name, "lease", lease_label(r), Mode.EX))
    return found


async def release_names(
    config: Config,
    held: Mapping[str, HeldLock],
    resources: tuple[ResourceSpec, ...],
    deadline: Deadline,
) -> list[str] | None:
    """The held resources a release names: by the path libvirt gave at acquire, else by
    identity (another path to the same image). None = everything."""
    if not resources:
        return None
    by_label = {lock.label: name for name, lock in held.items()}
    names, unknown = set(), []
    for r in resources:
        label = r.path if isinstance(r, DiskSpec) else lease_label(r)
        if label in by_label:
            names.add(by_label[label])
        else:
            unknown.append(r)
    names.update(w.resource for w in await wants(config, tuple(unknown), deadline))
    return sorted(names)
