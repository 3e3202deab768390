"""Images: references, the store (an OCI layout), skopeo, the local registry, layers and safe
unpacking. Notebooks 04 and 07. Data flows from here to `contained.runtime`.
"""
