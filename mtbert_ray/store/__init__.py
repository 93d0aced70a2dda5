"""Files on disk: the results root, atomic writes, manifests, locks, and the publish-or-reuse primitive of every content-keyed artefact."""
