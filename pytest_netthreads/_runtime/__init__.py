"""The runtime layer: what every part of the kit stands on, built on the standard library only.

Nothing here imports another package of ``pytest_netthreads`` (``tests/test_layers.py``
checks it): the shared event loop (:mod:`.reactor`), the kit's own threads and the seam through
which the detectors hear about them (:mod:`.threads`), stack capture and formatting
(:mod:`.stacks`), monkeypatching with ownership checks (:mod:`.patching`), listener lists read
without a lock (:mod:`.listeners`), checks of the values users pass in (:mod:`.values`) and
private files (:mod:`.private_files`).
"""
