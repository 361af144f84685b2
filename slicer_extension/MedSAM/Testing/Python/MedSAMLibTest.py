"""Build-time test of MedSAMLib in 3D Slicer's own Python (its numpy and Python version).

The full tests run with pytest outside Slicer (tests/test_slicer_*.py in the repository); this one
checks that the Slicer-free library behaves the same inside Slicer.
"""

import itertools
import sys
import time
import unittest

import numpy as np
from MedSAMLib import consent, geometry, options, server_process, tasks, undo


def _brute_force_box(low, high, ijk_to_ras, shape):
    ijk = np.array(list(itertools.product(*(range(n) for n in shape))))
    ras = ijk @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    inside = np.all((ras >= np.minimum(low, high) - 1e-6) & (ras <= np.maximum(low, high) + 1e-6), axis=1)
    if not inside.any():
        return None
    return (*ijk[inside].min(axis=0).tolist(), *ijk[inside].max(axis=0).tolist())


class MedSAMLibTest(unittest.TestCase):
    def test_ras_box_to_ijk_on_lps_and_oblique_volumes(self):
        shape = (6, 5, 4)
        angle = np.radians(20)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        for linear in (np.diag([-0.7, -0.7, 2.0]), rotation @ np.diag([1.0, 1.5, 2.0])):
            ijk_to_ras = np.eye(4)
            ijk_to_ras[:3, :3] = linear
            ijk_to_ras[:3, 3] = (5.0, -3.0, 1.0)
            rng = np.random.default_rng(0)
            for _ in range(50):
                low, high = rng.uniform(-10, 15, 3), rng.uniform(-10, 15, 3)
                self.assertEqual(
                    geometry.ras_box_to_ijk(low, high, ijk_to_ras, shape), _brute_force_box(low, high, ijk_to_ras, shape)
                )

    def test_view_axis_and_slicing_axis(self):
        coronal = np.array([[-1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
        self.assertEqual(geometry.view_axis(coronal)[0], "coronal")
        permuted = np.eye(4)[:, [2, 0, 1, 3]]  # i along S, j along R, k along A
        self.assertEqual(geometry.slicing_voxel_axis(permuted, "coronal"), 2)

    def test_merge_and_undo_entry(self):
        current = np.zeros((4, 3, 2), np.uint8)
        current[0] = 1
        result = np.ones((4, 3, 2), np.uint8)
        merged = geometry.merge_mask(current, result, 2, (1, 2), "replace")
        self.assertEqual(int(merged.sum()), 6 + 12)
        entry = undo.UndoEntry.capture("x", "seg", "s", False, 2, 1, 2, current[1:3])
        np.testing.assert_array_equal(entry.slab_before(), current[1:3])

    def test_consent_options_and_server_command(self):
        store = consent.ConsentStore.in_memory()
        store.grant("http://LOCALHOST:8123/")
        self.assertTrue(store.is_granted("http://localhost:8123"))
        self.assertEqual(options.normalize_window("ct", "bone"), "bone")
        command = server_process.serve_command(server_process.ServerSettings(python=sys.executable, port=8200))
        self.assertEqual(command[1:4], ["-m", "medsam_monai.cli", "serve"])

    def test_task_poll_and_consent_revocations(self):
        # In Slicer the main thread keeps the GIL between timer ticks: poll() must wait with it released.
        task = tasks.BackgroundTask(lambda progress, cancelled: time.sleep(0.005) or "done").start()
        self.assertTrue(task.poll(worker_time=5.0))
        self.assertEqual(task.result(), "done")
        store = consent.ConsentStore.in_memory()
        store.grant("http://127.0.0.1:8123")
        before = store.revocation_count("http://127.0.0.1:8123")
        store.revoke("http://127.0.0.1:8123/")
        self.assertEqual(store.revocation_count("http://127.0.0.1:8123"), before + 1)


if __name__ == "__main__":
    unittest.main()
