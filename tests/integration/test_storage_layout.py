"""Storage layout: created with the right modes; unwritable roots give a readable error."""

from __future__ import annotations

import os
import pwd
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dicomgw.errors import DicomGwError
from dicomgw.storage.layout import prepare_storage
from dicomgw.storage.spool import Spool

UNPRIVILEGED = "nobody"


def test_layout_created_with_modes(state_dir: Path) -> None:
    layout = prepare_storage(state_dir / "storage")
    for path in (layout.root, layout.incoming, layout.objects, layout.quarantine):
        assert path.is_dir()
        assert oct(path.stat().st_mode & 0o777) == "0o750"
    assert list(layout.incoming.iterdir()) == []


def _prepare_as_unprivileged(root: Path) -> tuple[int, str]:
    """As root every directory is writable: a forked child drops to a plain user first."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.close(read_fd)
            if os.geteuid() == 0:
                entry = pwd.getpwnam(UNPRIVILEGED)
                os.setgroups([])
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)
            prepare_storage(root)
            message = "prepared"
        except DicomGwError as exc:
            code, message = 1, str(exc)
        except BaseException as exc:
            code, message = 3, repr(exc)
        os.write(write_fd, message.encode())
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        message = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), message


def test_unwritable_root_names_path_and_user(state_dir: Path) -> None:
    root = state_dir / "ro"
    root.mkdir(mode=0o555)
    code, message = _prepare_as_unprivileged(root / "storage")
    assert code == 1, message
    user = UNPRIVILEGED if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    assert f"storage path '{root}/storage' is not writable by user {user}" in message
    assert "Permission denied" in message


def test_existing_root_without_write_permission(state_dir: Path) -> None:
    root = state_dir / "storage"
    for sub in ("incoming", "objects", "quarantine"):
        (root / sub).mkdir(parents=True)
        (root / sub).chmod(0o777)
    root.chmod(0o777)
    (root / "objects").chmod(0o555)
    code, message = _prepare_as_unprivileged(root)
    assert code == 1, message
    assert f"storage path '{root}/objects' is not writable by user" in message


def test_day_directories_are_made_ahead(state_dir: Path) -> None:
    layout = prepare_storage(state_dir / "storage")
    with ThreadPoolExecutor(1) as executor:
        spool = Spool(layout, fsync=True, executor=executor)
        spool.prepare_days()
        relative = spool.object_path("ab" + "0" * 30)
    today = time.strftime("%Y/%m/%d", time.gmtime())
    tomorrow = time.strftime("%Y/%m/%d", time.gmtime(time.time() + 86_400))
    assert relative.parent == Path("objects", today, "ab")
    for day in (today, tomorrow):
        shards = sorted(p.name for p in (layout.objects / day).iterdir())
        assert shards == [f"{k:02x}" for k in range(256)]
        assert oct((layout.objects / day / "ab").stat().st_mode & 0o777) == "0o750"
