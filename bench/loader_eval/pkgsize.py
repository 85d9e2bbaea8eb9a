"""Bytes installed by packages (from their RECORD files). usage: python pkgsize.py NAME..."""
import sys, importlib.metadata as md, os
tot = 0
for n in sys.argv[1:]:
    d = md.distribution(n); s = 0
    for f in d.files or []:
        p = d.locate_file(f)
        if os.path.isfile(p): s += os.path.getsize(p)
    tot += s; print(f"{n:28s} {s/1e6:8.1f} MB")
print(f"{'total':28s} {tot/1e6:8.1f} MB")
