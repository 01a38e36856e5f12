"""Render four galaxies of different kinds: the tutorial's "Galaxies" example.

An exponential galaxy (GalaxyShape), a deV + exp CompositeGalaxy (two EllipseE
shapes), a Sersic galaxy of index 3 (EllipseESoft shape) and a
FixedCompositeGalaxy (fracDev 0.8) in a 40 x 40 image with a 1-pixel Gaussian
PSF, rendered with ``Tractor.getModelImage`` (pixel work: NullWCS, so radii in
arcsec equal pixels).  Shapes of different parameterisations mix freely.

Figure (in ``--out``): ``7.png``, log(model + noise sigma).

Run: ``python examples/04_galaxies.py --out example-out/04_galaxies``
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tractor_prob import *  # noqa: E402,F403
from tractor_prob.galaxy import *  # noqa: E402,F403
from tractor_prob.sersic import *  # noqa: E402,F403

NAME = os.path.splitext(os.path.basename(__file__))[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("example-out", NAME))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    W, H = 40, 40
    psfsigma = 1.0
    noisesigma = 0.01
    tim = Image(data=np.zeros((H, W)), invvar=np.ones((H, W)) / (noisesigma**2),
                psf=NCircularGaussianPSF([psfsigma], [1.0]))
    sources = [ExpGalaxy(PixPos(10, 10), Flux(10.0), GalaxyShape(3.0, 0.5, 45.0)),
               CompositeGalaxy(PixPos(10, 30),
                               Flux(10.0), EllipseE(3.0, 0.5, 0.0),
                               Flux(10.0), EllipseE(3.0, 0.0, -0.5)),
               SersicGalaxy(PixPos(30, 10), Flux(10.0),
                            EllipseESoft(1.0, 0.5, 0.5), SersicIndex(3.0)),
               FixedCompositeGalaxy(PixPos(30, 30), Flux(10.0), 0.8,
                                    EllipseE(2.0, 0.0, 0.0), EllipseE(1.0, 0.0, 0.0))]
    tractor = Tractor([tim], sources)
    mod = tractor.getModelImage(0)
    for src in sources:
        print(src)
    per_source = [float(tractor.getModelImage(0, srcs=[s]).sum()) for s in sources]
    print("counts in the image per source:", ", ".join("%.3f" % c for c in per_source))

    plt.clf()
    plt.imshow(np.log(mod + noisesigma), interpolation="nearest", origin="lower", cmap="gray")
    plt.title("Galaxies")
    plt.savefig(os.path.join(args.out, "7.png"))
    return dict(model=mod, counts=per_source, sources=sources)


if __name__ == "__main__":
    main()
