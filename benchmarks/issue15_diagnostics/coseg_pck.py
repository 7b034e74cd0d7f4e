"""SpaceJAM's shipped quick config with co-segmentation settings changed (a monkeypatch of features.cosegment),
through benchmarks/issue15_sweep.py: python coseg_pck.py "dict(vote_fraction=0.5)" --classes 1,2,3 --seeds 0"""
import functools, sys
sys.path.insert(0, "benchmarks")
from congealing import features
from congealing.spacejam import training
import issue15_sweep
settings = eval(sys.argv[1])
training.features.cosegment = functools.partial(features.cosegment, **settings)  # where prepare_keys looks it up
sys.exit(issue15_sweep.main(["--method", "spacejam", "--tag", f"coseg {settings}", *sys.argv[2:]]))
