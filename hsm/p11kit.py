"""p11-kit's registry of PKCS#11 modules: what `module-name=NAME` in a pkcs11 URI means.

Distributions register each installed PKCS#11 module with p11-kit by a file
NAME.module holding `module: FILE` (Debian's softhsm2 package ships
/usr/share/p11-kit/modules/softhsm2.module). p11-kit, and p11tool through it,
resolve a module name the same way this module does, following p11-kit's
conf.c:

- module files are read from the user's directory (~/.config/pkcs11/modules),
  then /etc/pkcs11/modules, then /usr/share/p11-kit/modules; for one name the
  first file that sets a key wins (the later ones only fill in what it lacks);
- `user-config` in /etc/pkcs11/pkcs11.conf (or the user's pkcs11.conf) says
  whether the user's files count: `merge` (default), `none`, or `only`;
- a relative `module:` is a file in p11-kit's module directory
  (/usr/lib/<multiarch>/pkcs11 on Debian).

`p11-kit list-modules` prints the same name -> module pairs.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .errors import KeyUriError

MODULE_SUFFIX = ".module"


@dataclass(frozen=True)
class P11KitPaths:
    """Where p11-kit looks; the defaults are p11-kit's own (tests pass other directories)."""

    system_config: str = "/etc/pkcs11/pkcs11.conf"
    user_config: str = "~/.config/pkcs11/pkcs11.conf"
    user_modules: str = "~/.config/pkcs11/modules"
    system_modules: str = "/etc/pkcs11/modules"
    package_modules: str = "/usr/share/p11-kit/modules"
    #: p11-kit's compiled-in module directory differs per distribution; the first that exists holds
    module_dirs: tuple[str, ...] = (
        f"/usr/lib/{sysconfig.get_config_var('MULTIARCH') or 'x86_64-linux-gnu'}/pkcs11",
        "/usr/lib64/pkcs11", "/usr/lib/pkcs11")


@dataclass(frozen=True)
class RegisteredModule:
    name: str
    #: the `module:` value as written (what `p11-kit list-modules` prints)
    module: str
    #: the module file it names
    path: str
    config_file: str


def read_config(path: str | os.PathLike) -> dict[str, str]:
    """`name: value` lines of a p11-kit configuration file; `#` starts a comment."""
    values: dict[str, str] = {}
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        name, value = line.split(":", 1)
        values[name.strip()] = value.strip()
    return values


def _user_mode(paths: P11KitPaths) -> str:
    mode = read_config(paths.system_config).get("user-config", "merge")
    if mode != "none":
        mode = read_config(paths.user_config).get("user-config", mode)
    return "only" if mode == "override" else mode


def _module_files(directory: str) -> list[Path]:
    try:
        entries = sorted(Path(directory).expanduser().iterdir())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    return [e for e in entries if e.name.endswith(MODULE_SUFFIX) and e.name[:1].isalnum()
            and len(e.name) > len(MODULE_SUFFIX) and not e.is_dir()]


def _resolve(module: str, paths: P11KitPaths) -> str:
    if os.path.isabs(module):
        return module
    candidates = [os.path.join(d, module) for d in paths.module_dirs]
    return next((c for c in candidates if os.path.exists(c)), candidates[0])


def registered_modules(paths: P11KitPaths = P11KitPaths()) -> dict[str, RegisteredModule]:
    """Every module p11-kit knows, by name."""
    mode = _user_mode(paths)
    directories = []
    if mode != "none":
        directories.append(paths.user_modules)
    if mode != "only":
        directories += [paths.system_modules, paths.package_modules]
    merged: dict[str, tuple[dict[str, str], str]] = {}
    for directory in directories:
        for file in _module_files(directory):
            name = file.name[:-len(MODULE_SUFFIX)]
            config = read_config(file)
            if name in merged:
                first, source = merged[name]
                merged[name] = ({**config, **first}, source)
            else:
                merged[name] = (config, str(file))
    return {name: RegisteredModule(name, config["module"], _resolve(config["module"], paths), source)
            for name, (config, source) in merged.items() if config.get("module")}


def module_path(name: str, paths: P11KitPaths = P11KitPaths()) -> str:
    """The module file registered as `name`; a KeyUriError naming the registered ones otherwise."""
    modules = registered_modules(paths)
    if name not in modules:
        known = ", ".join(sorted(modules)) or "none"
        raise KeyUriError(f"no PKCS#11 module named {name!r} is registered with p11-kit "
                          f"(registered: {known}; see `p11-kit list-modules`), or give module-path=FILE")
    return modules[name].path
