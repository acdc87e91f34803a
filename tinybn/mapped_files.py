"""The shared libraries mapped into this process, read from Linux's /proc/self/maps.

    mapped_libraries(*names)    the paths of the mapped files whose file name holds one of
                                `names`, or None where the map cannot be read (not Linux)

Two places must know which native libraries are already loaded: the package root, before
numpy loads (an OpenMP runtime mapped before tinybn is imported has fixed its wait policy,
so setting OMP_WAIT_POLICY can no longer take effect), and kernels/numba_threads.py (the
OpenBLAS that numpy loaded, whose thread count it sets through ctypes). A line of the map
is "address perms offset dev inode [path]"; the path, where there is one, is the sixth
field and may hold spaces.

Floor: backend (tests/test_layering.py); the standard library only, so the package root can
import it before numpy, and the kernels may import it.
"""


def mapped_libraries(*names):
    """{path} of the files mapped into this process whose file name holds one of `names`;
    None where /proc/self/maps cannot be read."""
    try:
        with open("/proc/self/maps") as maps:
            fields = [line.rstrip("\n").split(maxsplit=5) for line in maps]
    except OSError:
        return None
    paths = {f[5] for f in fields if len(f) == 6}
    return {p for p in paths if any(name in p.rsplit("/", 1)[-1] for name in names)}
