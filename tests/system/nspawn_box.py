"""A real systemd 252 as PID 1 in a systemd-nspawn(1) container, for tests/system.

- :func:`debian_sources` reads the host's apt sources (deb822 ``*.sources``, one-line
  ``sources.list``; sources.list(5)) and keeps the Debian entries of the host's release, so the
  container comes from the same mirror and suites as the host's apt. No host name is written
  here.
- :func:`rootfs` builds a minimal Debian root with ``mmdebstrap --variant=minbase`` (mmdebstrap(1))
  once, cached under :data:`CACHE_DIR` in a directory keyed by the package list, the sources and
  the architecture.
- :func:`host_pip` reads how the host's pip reaches its index (``pip config list``: the config
  files and the ``PIP_*`` environment) so pip inside the container reaches it the same way: the
  same settings as ``PIP_*`` variables, local paths bind-mounted read-only at the same place.
- :class:`Container` boots it (``systemd-nspawn --register=no --keep-unit --link-journal=no -D
  ROOT -M NAME --console=pipe -b``) and enters it with ``nsenter -t <its PID 1> -a``. On hosts
  with hybrid cgroups v1 (``/sys/fs/cgroup/systemd`` and ``/sys/fs/cgroup/unified``), nspawn
  is first moved into its own sub-cgroup of both, removed again at teardown.

Every failure raises :class:`BootFailed` naming the command that failed and its output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: What the container holds. systemd-container: machinectl (the user units' login); python3-venv,
#: apparmor: step 1 of docs/operations.md; pipx: the user service; jq: the audit-log pipeline.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "libpam-systemd", "systemd-container", "passwd", "procps",
    "ca-certificates", "python3", "python3-venv", "pipx", "apparmor", "jq",
)
CACHE_DIR = Path(os.environ.get("PARROT_SYSTEMD_CACHE", "/var/cache/parrot-ipc-tests"))
BOOT_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
CGROUP_V1_HYBRID = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


#: Every transcript made in this run, for the terminal summary (tests/system/conftest.py).
TRANSCRIPTS: list[Transcript] = []


class BootFailed(RuntimeError):
    """A step of building or booting the container failed; the message names the command."""


def run_host(cmd: Sequence[str], timeout_s: float = 900.0) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` on the host; raise :class:`BootFailed` with the command and its output on failure."""
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BootFailed(f"command failed: {shlex.join(cmd)}: {exc}") from None
    if res.returncode != 0:
        raise BootFailed(f"command failed (rc {res.returncode}): {shlex.join(cmd)}\n"
                         f"--- stdout ---\n{res.stdout[-4000:]}\n--- stderr ---\n{res.stderr[-4000:]}")
    return res


# --------------------------------------------------------------------------- apt sources
def host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    """``VERSION_CODENAME`` of os-release(5) (e.g. ``bookworm``)."""
    for line in os_release.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"')
    raise BootFailed(f"no VERSION_CODENAME in {os_release}")


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """The stanzas of a deb822 file (sources.list(5)), keys lower-cased; comments dropped."""
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields:
            yield fields


def _wanted(suite: str, codename: str) -> bool:
    return suite == codename or suite.startswith(codename + "-")


def _from_deb822(f: Path, codename: str) -> Iterator[str]:
    """The wanted one-line entries of one deb822 ``.sources`` file."""
    for st in _deb822_stanzas(f.read_text()):
        if "deb" not in st.get("types", "").split() or st.get("enabled", "yes") == "no":
            continue
        opt = f"[signed-by={st['signed-by']}] " if st.get("signed-by", "").startswith("/") else ""
        for uri in st.get("uris", "").split():
            for suite in filter(lambda s: _wanted(s, codename), st.get("suites", "").split()):
                yield f"deb {opt}{uri} {suite} {st.get('components', 'main')}"


def _from_one_line(f: Path, codename: str) -> Iterator[str]:
    """The wanted entries of one one-line ``sources.list`` style file."""
    for line in f.read_text().splitlines():
        m = re.match(r"\s*deb\s+(\[[^]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
        if m and _wanted(m.group(3), codename):
            yield f"deb {m.group(1) or ''}{m.group(2)} {m.group(3)} {m.group(4).strip()}"


def debian_sources(apt_dir: Path = Path("/etc/apt"), codename: str | None = None) -> list[str]:
    """One-line ``deb [signed-by=...] URI SUITE COMPONENTS`` entries for mmdebstrap, taken from
    the enabled apt sources of ``apt_dir`` whose suite is the host's release or one of its
    ``-updates``/``-security`` suites; other repositories are left out."""
    codename = codename or host_codename()
    out = [e for f in sorted((apt_dir / "sources.list.d").glob("*.sources")) for e in _from_deb822(f, codename)]
    for f in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if f.is_file():
            out += _from_one_line(f, codename)
    if not out:
        raise BootFailed(f"no Debian {codename} entry in the apt sources under {apt_dir}")
    return out


def rootfs(log: Transcript, packages: Sequence[str] = PACKAGES) -> Path:
    """The cached minbase root for ``packages`` (built by mmdebstrap if it is not there yet)."""
    codename = host_codename()
    sources = debian_sources(codename=codename)
    key = hashlib.sha256(json.dumps([sorted(packages), sources, codename, platform.machine()]).encode()).hexdigest()[:16]
    root = CACHE_DIR / f"rootfs-{codename}-{key}"
    if (root / ".complete").exists():
        log.note("rootfs", f"cached {root}")
        return root
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="building-", dir=CACHE_DIR))
    cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}", codename, str(tmp / "root"), *sources]
    t0 = time.monotonic()
    try:
        run_host(cmd, timeout_s=1200)
        (tmp / "root" / ".complete").write_text(" ".join(cmd) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        (tmp / "root").rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.note("rootfs", f"built {root} in {time.monotonic() - t0:.0f} s: {shlex.join(cmd[:4])} ...")
    return root


# --------------------------------------------------------------------------- pip
_LOCAL_KEYS = {"cert", "client-cert", "find-links", "constraint", "requirement"}
_INDEX_KEYS = {"index-url", "extra-index-url"}


def host_pip() -> tuple[dict[str, str], list[str]]:
    """``(env, paths)``: the host pip's effective settings as ``PIP_*`` variables, and the local
    paths they name (to bind-mount read-only). ``file://`` indexes bring their root (the parent
    of ``simple/``), since an index links its files relative to itself."""
    res = run_host([sys.executable, "-m", "pip", "config", "list"], timeout_s=60)
    env: dict[str, str] = {}
    paths: list[str] = []
    for line in res.stdout.splitlines():
        m = re.match(r"^[^.]*\.([a-z0-9-]+)='(.*)'$", line)
        if not m:
            continue
        key, value = m.groups()
        env["PIP_" + key.upper().replace("-", "_")] = value
        for item in value.split():
            if key in _LOCAL_KEYS and item.startswith("/"):
                paths.append(item)
            elif key in _INDEX_KEYS | {"find-links"} and item.startswith("file://"):
                local = item[len("file://"):].rstrip("/")
                paths.append(os.path.dirname(local) if local.endswith("/simple") else local)
    return env, [p for p in dict.fromkeys(paths) if os.path.exists(p)]


# --------------------------------------------------------------------------- transcript
@dataclass
class Transcript:
    """Each check and its evidence line, in order; written to ``path`` as it goes."""

    path: Path
    lines: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        TRANSCRIPTS.append(self)

    def note(self, check: str, evidence: str) -> None:
        """Record ``check: evidence`` with the seconds since the start."""
        line = f"[{time.monotonic() - self.t0:6.1f} s] {check}: {evidence.strip()}"
        self.lines.append(line)
        with self.path.open("a") as f:
            f.write(line + "\n")


# --------------------------------------------------------------------------- the container
@dataclass
class Container:
    """A booted container. :meth:`run` runs a command in it (all its namespaces)."""

    name: str
    workdir: Path
    proc: subprocess.Popen[bytes]
    leader: int
    env: dict[str, str]
    cgroups: list[Path]

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    def run(self, cmd: str, *, user: str | None = None, check: bool = True, timeout_s: float = 600.0,
            env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``sh -c cmd`` in the container as root (or ``user``, through runuser(1)), with a clean
        environment (``PATH``, ``LANG``, ``HOME``, the pip settings, ``env``)."""
        e = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", **self.env, **(env or {})}
        inner = ["env", "-i", *(f"{k}={v}" for k, v in e.items()), "sh", "-c", cmd]
        if user is not None:
            inner = ["runuser", "-u", user, "--", *inner]
        full = ["nsenter", "-t", str(self.leader), "-a", *inner]
        res = subprocess.run(full, capture_output=True, text=True, timeout=timeout_s, input=input)
        if check and res.returncode != 0:
            raise AssertionError(f"in the container (rc {res.returncode}): {cmd}\n"
                                 f"--- stdout ---\n{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-3000:]}")
        return res

    def out(self, cmd: str, user: str | None = None, timeout_s: float = 600.0) -> str:
        """The stripped stdout of :meth:`run` (which must succeed)."""
        return self.run(cmd, user=user, timeout_s=timeout_s).stdout.strip()


def _leader(nspawn: subprocess.Popen[bytes], deadline: float) -> int:
    """The host PID of the container's PID 1 (systemd): nspawn's child once it runs systemd."""
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise BootFailed(f"systemd-nspawn exited with {nspawn.returncode} before booting")
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read_text().split():
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
        time.sleep(0.1)
    raise BootFailed("systemd-nspawn: no systemd PID 1 within the boot timeout")


def _remove_cgroup(path: Path) -> None:
    """rmdir ``path`` and every cgroup below it, deepest first."""
    if not path.is_dir():
        return
    for d in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _copy_checkout(repo: Path, dest: Path) -> None:
    """The checkout's files (tracked and untracked-but-not-ignored; no .venv, no .git) to ``dest``."""
    res = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, timeout=60)
    if res.returncode == 0:
        for rel in filter(None, res.stdout.decode().split("\0")):
            src = repo / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
        return
    shutil.copytree(repo, dest, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info"))


@contextlib.contextmanager
def booted(repo: Path, log: Transcript, checkout_at: str = "/usr/local/src/parrot-ipc") -> Iterator[Container]:
    """Boot a fresh copy of the cached root with the checkout at ``checkout_at``; poweroff, kill
    what is left (by PID), remove its cgroups and files on exit, whatever happened."""
    base = rootfs(log)
    name = f"pipc-{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix="parrot-systemd-", dir="/var/tmp"))
    nspawn: subprocess.Popen[bytes] | None = None
    cgroups = [c / name for c in CGROUP_V1_HYBRID if c.is_dir()] if not Path("/sys/fs/cgroup/cgroup.controllers").exists() else []
    try:
        run_host(["cp", "-a", "--reflink=auto", str(base), str(workdir / "root")], timeout_s=600)
        dest = workdir / "root" / checkout_at.lstrip("/")
        dest.mkdir(parents=True)
        _copy_checkout(repo, dest)
        pip_env, pip_paths = host_pip()
        binds = [f"--bind-ro={p}" for p in pip_paths]
        cmd = ["systemd-nspawn", "--register=no", "--keep-unit", "--link-journal=no", "-D", str(workdir / "root"),
               "-M", name, "--console=pipe", *binds, "-b"]
        # Hybrid cgroups v1: nspawn --keep-unit runs the container in nspawn's own cgroup, so
        # give it one of its own in both the name=systemd and the unified hierarchy first.
        moves = "".join(f"mkdir -p {c} && echo $$ > {c}/cgroup.procs && " for c in cgroups)
        log.note("boot", shlex.join(cmd))
        with (workdir / "console.log").open("wb") as console:
            nspawn = subprocess.Popen(["sh", "-c", moves + 'exec "$@"', "sh", *cmd], stdin=subprocess.DEVNULL,
                                      stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        leader = _leader(nspawn, deadline)
        box = Container(name, workdir, nspawn, leader, pip_env, cgroups)
        state = box.run("systemctl is-system-running --wait", check=False, timeout_s=BOOT_TIMEOUT_S)
        # Before D-Bus is up: no answer; before PID 1 has booted its manager: "offline".
        while state.stdout.strip() in ("", "offline") and time.monotonic() < deadline:
            time.sleep(0.5)
            state = box.run("systemctl is-system-running --wait", check=False, timeout_s=BOOT_TIMEOUT_S)
        if state.stdout.strip() not in ("running", "degraded"):
            raise BootFailed(f"nsenter -t {leader} -a systemctl is-system-running --wait: {state.stdout.strip()!r} "
                             f"{state.stderr.strip()}\n--- console ---\n{(workdir / 'console.log').read_text(errors='replace')[-3000:]}")
        log.note("boot", f"PID 1 is {box.out('cat /proc/1/comm')} ({box.out('systemctl --version | head -1')}), "
                 f"host pid {leader}, state {state.stdout.strip()}; pip settings from the host: "
                 f"{', '.join(sorted(pip_env))}; read-only binds: {', '.join(pip_paths) or 'none'}")
        yield box
    finally:
        _teardown(nspawn, cgroups, workdir)


def _teardown(nspawn: subprocess.Popen[bytes] | None, cgroups: list[Path], workdir: Path) -> None:
    """SIGTERM nspawn (it powers the container off), SIGKILL after :data:`STOP_TIMEOUT_S`, then
    kill any process left in its cgroups (by PID), remove the cgroups and the files."""
    if nspawn is not None and nspawn.poll() is None:
        nspawn.send_signal(signal.SIGTERM)
        try:
            nspawn.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait(10)
    for c in cgroups:
        for procs in c.rglob("cgroup.procs") if c.is_dir() else ():
            for pid in procs.read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.2 if cgroups else 0)
    for c in cgroups:
        _remove_cgroup(c)
    shutil.rmtree(workdir, ignore_errors=True)
