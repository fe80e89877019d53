"""Sample captures shipped with hopscope, as package data.

``lab/`` holds one run of the namespaces lab: a pcap per capture point, the run's ground-truth
``manifest.json`` and an ``inventory.yaml`` naming its pods, Services and nodes. ``hopscope demo``
analyses them; ``hopscope lab samples`` records them again. Find them with
``hopscope.paths.lab_samples()``.
"""
