"""The one check for names that become paths, host names and rule comments.

Taught in notebook 05 (`contained run --name web`). A container's name becomes a directory
(its state, its cgroup), its host name, an /etc/hosts entry on the bridge and a comment in the
firewall rules; a cgroup parent's name becomes a directory in every cgroup tree. So a name is
one safe directory name: a letter or digit, then letters, digits, '_', '.' and '-' — never
"..", never a "/" — as Docker's ``[a-zA-Z0-9][a-zA-Z0-9_.-]`` allows. In the shell::

    echo "$NAME" | grep -Ex '[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}'

The callers raise their own error: each says what the name was for.
"""

import re

__all__ = ["LONGEST_CGROUP_NAME", "LONGEST_CONTAINER_NAME", "is_valid"]

#: a container's name is also its host name, one DNS label: at most 63 characters
LONGEST_CONTAINER_NAME = 63
#: a cgroup parent may be longer (``contained-TAG``, or any $CONTAINED_CGROUP_PARENT a teacher
#: picks); it only has to be one directory name, and 128 keeps paths well short of PATH_MAX
LONGEST_CGROUP_NAME = 128

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_valid(name: str, longest: int = LONGEST_CONTAINER_NAME) -> bool:
    """Whether `name` is one safe directory name of at most `longest` characters."""
    return len(name) <= longest and _SAFE.fullmatch(name) is not None
