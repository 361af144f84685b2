"""The parts of the MedSAM module that need neither 3D Slicer nor Qt (numpy and the standard library).

- ``geometry``: RAS boxes to voxel boxes, slicing axis of a view, writing results into a segment's slices.
- ``consent``: remembering per server that the user agreed to send images there.
- ``server_process``: starting and stopping a local ``medsam serve``.
- ``undo``: what each action overwrote, to put it back.
- ``tasks``: running HTTP work in a thread that the GUI polls.
- ``options``: CT window presets and modality.
- ``client``: the HTTP client of ``medsam serve``.
- ``everything``: SAM's automatic-mask ("Segment everything") parameters, segment names, answer checks.
- ``testing``: a stand-in client, the self-test's phantom, and stand-ins for the Slicer application's
  ``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper`` (used by MedSAM.py under slicer-core).
"""
