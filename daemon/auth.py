"""Peer credentials (SO_PEERCRED) and roles from config."""

from __future__ import annotations

import enum
import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Any

from daemon.config import Section


class Role(enum.IntEnum):
    """Ordered: a role may do everything the roles below it may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Peer:
    uid: int
    gid: int
    pid: int
    user: str
    groups: tuple[str, ...]
    role: Role

    def actor(self) -> dict[str, Any]:
        """Who did it, as the audit log records it."""
        return {"uid": self.uid, "user": self.user, "pid": self.pid}


class PeerRefused(Exception):
    """The peer has no role (config `auth.unknown = "refuse"`)."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def group_names(user: str, gid: int) -> tuple[str, ...]:
    names: set[str] = set()
    try:
        names.add(grp.getgrgid(gid).gr_name)
    except KeyError:
        pass
    try:
        names.update(g.gr_name for g in grp.getgrall() if user in g.gr_mem)
    except OSError:
        pass
    return tuple(sorted(names))


def resolve_role(user: str, uid: int, groups: tuple[str, ...], auth: Section,
                 daemon_uid: int | None = None) -> Role | None:
    """User rules first, then the daemon's own uid (admin), then group rules, then `auth.unknown`."""
    daemon_uid = os.getuid() if daemon_uid is None else daemon_uid
    for role in (Role.ADMIN, Role.OPERATOR, Role.VIEWER):
        if user in auth[f"{role.label}_users"]:
            return role
    if uid == daemon_uid:
        return Role.ADMIN
    for role in (Role.ADMIN, Role.OPERATOR, Role.VIEWER):
        if set(groups) & set(auth[f"{role.label}_groups"]):
            return role
    return Role.VIEWER if auth.unknown == "viewer" else None


def identify(sock: socket.socket, auth: Section) -> Peer:
    pid, uid, gid = peer_credentials(sock)
    user = user_name(uid)
    groups = group_names(user, gid)
    role = resolve_role(user, uid, groups, auth)
    if role is None:
        raise PeerRefused(f"user {user} (uid {uid}) has no role on this daemon")
    return Peer(uid=uid, gid=gid, pid=pid, user=user, groups=groups, role=role)


def in_process_peer(role: Role = Role.ADMIN) -> Peer:
    """The embedded console's identity: the daemon's own process and user."""
    uid, gid = os.getuid(), os.getgid()
    user = user_name(uid)
    return Peer(uid=uid, gid=gid, pid=os.getpid(), user=user, groups=group_names(user, gid), role=role)
