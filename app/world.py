"""The explorer's optional link to the dataset a bundle was built from (the demo world's, usually).

A results bundle stores the 3-trial averages and the reconstructions; three panels need more:

* the **brain view** reads each voxel's area, pRF (centre, size) and noise ceiling from the demo world's
  voxel table (``demo_extra.h5``, :func:`mindeye_core.data.demo.load_voxel_table`);
* the **single-trial toggle** reads the test trials' single betas (``<subject>.h5``);
* the **decoding lab** lets the simulated cortex respond to a new scene
  (:class:`mindeye_core.data.demo.lab.SubjectForwardModel`, rebuilt once per subject, seconds each).

:class:`WorldData` opens that dataset read-only; it is shared by every session (the forward models are
built under a lock, once). Where it comes from: the store's ``data=`` argument, else ``$MINDEYE_DEMO_WORLD``,
else ``$MINDEYE_DATA/demo`` (``mindeye demo`` writes it there). A dataset whose manifest differs from the
one the bundle records (``provenance.dataset_manifest_sha256``, :func:`mindeye_core.data.format.dataset_fingerprint`)
is refused, naming both.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mindeye_core.errors import DataFormatError

__all__ = ["ENV_DEMO_WORLD", "WorldData", "default_world_root", "open_world"]

ENV_DEMO_WORLD = "MINDEYE_DEMO_WORLD"
"""Environment variable: folder of the demo world dataset (default ``$MINDEYE_DATA/demo``)."""


def default_world_root() -> Path:
    """``$MINDEYE_DEMO_WORLD`` if set, else where ``mindeye demo`` writes the world (``$MINDEYE_DATA/demo``)."""
    from mindeye_core.data.demo_cli import default_world_dir

    env = os.environ.get(ENV_DEMO_WORLD)
    return Path(env).expanduser() if env else default_world_dir()


@dataclass
class WorldData:
    """Read-only access to a canonical dataset beside a bundle. Build with :meth:`open`.

    Attributes:
        root: the dataset folder.
        world: its world (``"demo"`` or ``"nsd"``).
        voxel_tables: subject -> the demo world's voxel table (``area`` (V,) indices into AREAS, ``prf_x``,
            ``prf_y``, ``prf_sigma`` (deg), ``noise_ceiling`` (V,) % for the 3-trial average, ...); empty
            for a world without one (NSD).
        areas: the area names the table's ``area`` indexes.
    """

    root: Path
    world: str
    voxel_tables: dict[str, dict[str, np.ndarray]]
    areas: tuple[str, ...]
    _dataset: Any = None
    _forward: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _trials: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    _reliability: dict[str, np.ndarray | None] = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path, *, subjects: Mapping[str, int | None], fingerprint: str | None = None) -> WorldData:
        """Open the dataset at ``root`` for the bundle's ``subjects`` (name -> voxel count, ``None``: unchecked).

        Raises:
            FileNotFoundError: no dataset there.
            DataFormatError: not a canonical dataset, another dataset than the bundle's (``fingerprint`` =
                the sha256 of the manifest the bundle was built from), or a subject missing / of another size.
        """
        from mindeye_core.data.format import dataset_fingerprint, open_dataset

        root = Path(root)
        manifest = root / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"no dataset at {root} (missing {manifest.name})")
        if fingerprint:
            mine = dataset_fingerprint(root)
            # bundles written before the fingerprint left the timings out recorded the manifest file's sha256
            if mine != fingerprint and hashlib.sha256(manifest.read_bytes()).hexdigest() != fingerprint:
                raise DataFormatError(f"the dataset at {root} is not the one the bundle was built from "
                                      f"(fingerprint {mine[:12]}..., the bundle records {fingerprint[:12]}...)")
        ds = open_dataset(root)
        for name, n_voxels in subjects.items():
            if name not in ds.subjects:
                raise DataFormatError(f"the dataset at {root} has no subject {name} ({', '.join(ds.subjects)})")
            if n_voxels is not None and ds.subject(name).n_voxels != int(n_voxels):
                raise DataFormatError(f"{name}: the dataset at {root} has {ds.subject(name).n_voxels} voxels, "
                                      f"the bundle {n_voxels}")
        tables: dict[str, dict[str, np.ndarray]] = {}
        areas: tuple[str, ...] = ()
        if ds.world == "demo":
            from mindeye_core.data.demo import AREAS, load_voxel_table

            tables = {name: load_voxel_table(root, name) for name in subjects}
            areas = tuple(AREAS)
        return cls(root=root, world=str(ds.world), voxel_tables=tables, areas=areas, _dataset=ds)

    # ---------------------------------------------------------------- single trials
    def single_trials(self, subject: str, image_row: int) -> np.ndarray:
        """The test betas of ``subject`` for dataset image ``image_row``, one row per presentation in
        chronological order: ``(R, V)`` float32 (R = 3 in the demo world and NSD's test set)."""
        with self._lock:
            index = self._trials.get(subject)
            if index is None:
                sub = self._dataset.subject(subject)
                test = sub.trials("test")
                rows = sub.image_index[test]
                order = np.argsort(rows, kind="stable")  # file order = chronological within an image
                uniq, start = np.unique(rows[order], return_index=True)
                ends = list(start[1:]) + [order.size]
                index = {int(u): test[order[a:b]] for u, a, b in zip(uniq, start, ends)}
                self._trials[subject] = index
            trials = index.get(int(image_row))
            if trials is None:
                raise KeyError(f"{subject} has no test trials of image {image_row} in {self.root}")
            return self._dataset.subject(subject).betas(np.sort(trials))

    def reliability(self, subject: str) -> np.ndarray | None:
        """``(V,)`` ncsnr of each voxel from the repeated test trials (NSD's definition,
        :func:`mindeye_core.data.noise_ceiling.ncsnr`), or ``None`` without repetitions; computed once."""
        from mindeye_core.data.noise_ceiling import ncsnr

        with self._lock:
            if subject not in self._reliability:
                sub = self._dataset.subject(subject)
                test = sub.trials("test")
                rows = sub.image_index[test]
                repeated = test.size and np.bincount(rows).max() >= 2
                self._reliability[subject] = ncsnr(sub.betas(test), rows) if repeated else None
            return self._reliability[subject]

    # ---------------------------------------------------------------- the forward model
    @property
    def can_simulate(self) -> bool:
        """``True`` on the demo world (its cortex can respond to new scenes)."""
        return self.world == "demo"

    def forward(self, subject: str) -> Any:
        """``subject``'s :class:`~mindeye_core.data.demo.lab.SubjectForwardModel`, built on first use (seconds)
        and checked against the saved voxel table.

        Raises:
            RuntimeError: not a demo world.
        """
        if not self.can_simulate:
            raise RuntimeError(f"the dataset at {self.root} is the {self.world!r} world: only the demo world's "
                               "simulated cortex can respond to a new scene")
        from mindeye_core.data.demo.lab import SubjectForwardModel

        with self._lock:
            model = self._forward.get(subject)
            if model is None:
                model = SubjectForwardModel.from_dataset(self.root, subject)
                model.check_against(self.root)
                self._forward[subject] = model
            return model

    @property
    def config(self) -> Any:
        """The demo world's :class:`~mindeye_core.data.demo.DemoWorldConfig`."""
        from mindeye_core.data.demo import demo_config_of

        return demo_config_of(self.root)

    def test_images(self, rows: np.ndarray) -> np.ndarray:
        """Images of dataset rows ``rows``: ``(k, S, S, 3)`` uint8."""
        with self._lock:
            return np.asarray(self._dataset.images(np.asarray(rows)))


def open_world(root: str | Path, subjects: Mapping[str, int | None], fingerprint: str | None) -> tuple[WorldData | None, str | None]:
    """:meth:`WorldData.open`, or ``(None, why)`` (a missing dataset is not an error: the panels say so)."""
    try:
        return WorldData.open(root, subjects=subjects, fingerprint=fingerprint), None
    except FileNotFoundError as exc:
        return None, (f"{exc}: the brain view, single trials and the decoding lab need the dataset the bundle "
                      f"was built from (`mindeye demo` writes the demo world to $MINDEYE_DATA/demo; or set "
                      f"${ENV_DEMO_WORLD})")
    except (DataFormatError, KeyError, OSError, ValueError) as exc:
        return None, f"the dataset at {root} cannot be used: {exc}"
